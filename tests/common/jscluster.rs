//! A cluster of three meshbroker processes on loopback with `jetstream.peers`, as the
//! replicated-JetStream tests run it: fixed ports (a restarted node keeps its
//! addresses), kill -9, signals, a clean stop, and waits for the meta and stream
//! leaders.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream;

use super::{http_get_json, meshbroker_binary, wait_for_port, Child};

pub const NAMES: [&str; 3] = ["n1", "n2", "n3"];

pub struct Peer {
    pub name: &'static str,
    pub client: SocketAddr,
    pub cluster: SocketAddr,
    pub monitor: SocketAddr,
    pub dir: std::path::PathBuf,
    pub process: Option<Child>,
    pub log: std::path::PathBuf,
}

pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A port for a listener that must keep its number across restarts (see
/// [`super::free_port`]: below the kernel's ephemeral range, so no outgoing connection
/// takes it between runs of the node).
pub fn fixed_port() -> u16 {
    super::free_port()
}

impl Peer {
    pub fn config(&self, all: &[Peer]) -> String {
        let routes: Vec<String> = all
            .iter()
            .filter(|p| p.name != self.name)
            .map(|p| format!("\"nats-route://{}\"", p.cluster))
            .collect();
        let peers: Vec<String> = NAMES.iter().map(|n| format!("\"{n}\"")).collect();
        format!(
            "listen = \"{}\"\nserver_name = \"{}\"\nlog_level = \"debug\"\n\
             [monitor]\nlisten = \"{}\"\n\
             [cluster]\nname = \"js\"\nlisten = \"{}\"\nroutes = [{}]\nsecret = \"a-cluster-secret-for-tests\"\n\
             [jetstream]\nstore_dir = \"{}\"\npeers = [{}]\n",
            self.client,
            self.name,
            self.monitor,
            self.cluster,
            routes.join(", "),
            self.dir.join("js").display(),
            peers.join(", ")
        ) + if std::env::var("MESHBROKER_TEST_JS_ACK").as_deref() == Ok("write") {
            "ack = \"write\"\n"
        } else {
            ""
        }
    }

    pub fn start(&mut self, config: &str) {
        let path = self.dir.join("node.toml");
        std::fs::write(&path, config).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(meshbroker_binary())
            .args(["--conf", path.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        self.process = Some(Child(child));
        for addr in [self.client, self.monitor] {
            assert!(
                wait_for_port(addr, Duration::from_secs(10)),
                "{} listens on {addr}",
                self.name
            );
        }
    }

    pub fn kill9(&mut self) {
        if let Some(mut child) = self.process.take() {
            let _ = child.0.kill();
            let _ = child.0.wait();
        }
    }

    pub fn jsz(&self) -> serde_json::Value {
        http_get_json(self.monitor, "/jsz")
    }

    pub fn meta_leader(&self) -> Option<String> {
        self.jsz()["meta_cluster"]["leader"]
            .as_str()
            .map(str::to_string)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        // The process first (its Child kills it), then its store and log.
        self.kill9();
        // MESHBROKER_TEST_KEEP=1 keeps the stores and logs, to read after a failure.
        if std::env::var_os("MESHBROKER_TEST_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

pub fn peers(tag: &str) -> Vec<Peer> {
    NAMES
        .iter()
        .map(|name| {
            let dir = std::env::temp_dir().join(format!(
                "meshbroker-test-jscluster-{tag}-{name}-{}",
                std::process::id()
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Peer {
                name,
                client: loopback(fixed_port()),
                cluster: loopback(fixed_port()),
                monitor: loopback(fixed_port()),
                log: dir.join("node.log"),
                dir,
                process: None,
            }
        })
        .collect()
}

/// The three nodes of [`peers`], started and agreed on a meta leader.
pub fn started(tag: &str) -> Vec<Peer> {
    let mut all = peers(tag);
    let configs: Vec<String> = all.iter().map(|p| p.config(&all)).collect();
    for (p, c) in all.iter_mut().zip(&configs) {
        p.start(c);
    }
    wait_leader(&all, Duration::from_secs(20));
    all
}

/// Waits until every running peer names the same meta leader; returns it.
pub fn wait_leader(all: &[Peer], limit: Duration) -> String {
    let started = Instant::now();
    loop {
        let seen: Vec<Option<String>> = all
            .iter()
            .filter(|p| p.process.is_some())
            .map(Peer::meta_leader)
            .collect();
        if let Some(Some(first)) = seen.first() {
            let alive = all
                .iter()
                .any(|p| p.process.is_some() && p.name == first.as_str());
            if alive && seen.iter().all(|s| s.as_deref() == Some(first.as_str())) {
                return first.clone();
            }
        }
        assert!(
            started.elapsed() < limit,
            "no agreed meta leader after {limit:?}: {seen:?}\n{}",
            all.iter()
                .map(|p| format!("--- {}\n{}", p.name, p.log_text()))
                .collect::<String>()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub async fn js_on(peer: &Peer) -> jetstream::Context {
    let client = async_nats::connect(peer.client.to_string()).await.unwrap();
    let mut js = jetstream::new(client);
    js.set_timeout(Duration::from_secs(5));
    js
}

impl Peer {
    /// SIGSTOP or SIGCONT.
    pub fn signal(&self, signal: i32) {
        let pid = self.process.as_ref().unwrap().0.id() as i32;
        // SAFETY: kill(2) on a process this test started and still holds.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
    }

    /// Stops the node as an operator would (SIGTERM) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.process.take() {
            let pid = child.0.id() as i32;
            // SAFETY: as in `signal`.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            let _ = child.0.wait();
        }
    }
}

/// The leader STREAM.INFO names, once there is one.
pub async fn stream_leader(js: &jetstream::Context, name: &str, limit: Duration) -> String {
    let mut leader = String::new();
    eventually("an R3 stream leader", limit, async || {
        match js.get_stream(name).await {
            Ok(mut s) => match s.info().await {
                Ok(info) => {
                    leader = info
                        .cluster
                        .clone()
                        .unwrap_or_default()
                        .leader
                        .unwrap_or_default();
                    !leader.is_empty()
                }
                Err(_) => false,
            },
            Err(_) => false,
        }
    })
    .await;
    leader
}

/// Waits until `f` holds, or fails naming `what`.
pub async fn eventually(what: &str, limit: Duration, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f().await {
        assert!(Instant::now() < deadline, "{what} after {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A node of a three-node nats-server JetStream cluster (the reference), named
/// `r1`..`r3`, cluster `js` as ours.
pub struct ReferenceNode {
    pub client: SocketAddr,
    pub monitor: SocketAddr,
    _process: Child,
}

/// Starts the reference as a three-node JetStream cluster on loopback with its store
/// under `dir`, and waits until every node knows the meta leader. `None` (after
/// saying why) without the reference binary, unless `MESHBROKER_CI=1`.
pub fn reference_cluster(dir: &std::path::Path) -> Option<Vec<ReferenceNode>> {
    let Some(bin) = super::reference_binary() else {
        if std::env::var("MESHBROKER_CI").as_deref() == Ok("1") {
            panic!("the reference nats-server is required: run scripts/install-reference.sh");
        }
        eprintln!("SKIPPED: no reference nats-server (run scripts/install-reference.sh)");
        return None;
    };
    let ports: Vec<(u16, u16, u16)> = (0..3)
        .map(|_| (fixed_port(), fixed_port(), fixed_port()))
        .collect();
    let routes: Vec<String> = ports
        .iter()
        .map(|(_, route, _)| format!("nats://127.0.0.1:{route}"))
        .collect();
    let mut nodes = Vec::new();
    for (i, (client, route, monitor)) in ports.iter().enumerate() {
        let name = format!("r{}", i + 1);
        let config = dir.join(format!("{name}.conf"));
        std::fs::write(
            &config,
            format!(
                "server_name: {name}\nlisten: 127.0.0.1:{client}\nhttp: 127.0.0.1:{monitor}\n\
                 jetstream {{ store_dir: \"{}\" }}\n\
                 cluster {{ name: js, listen: 127.0.0.1:{route}, routes: [{}] }}\n",
                dir.join(&name).display(),
                routes.join(", ")
            ),
        )
        .unwrap();
        let child = Command::new(&bin)
            .args(["-c", config.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server");
        nodes.push(ReferenceNode {
            client: loopback(*client),
            monitor: loopback(*monitor),
            _process: Child(child),
        });
    }
    for node in &nodes {
        assert!(wait_for_port(node.client, Duration::from_secs(10)));
        assert!(wait_for_port(node.monitor, Duration::from_secs(10)));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while !nodes
        .iter()
        .all(|n| http_get_json(n.monitor, "/jsz")["meta_cluster"]["leader"].is_string())
    {
        assert!(
            Instant::now() < deadline,
            "the reference cluster elects no meta leader"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Some(nodes)
}
