//! Helpers shared by the integration tests: start nodes, talk raw protocol.
#![allow(dead_code)]

pub mod certs;
pub mod jscluster;
pub mod process;
pub mod scripts;
pub mod wirefuzz;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use meshbroker::{Config, Node};

/// A config for a test node: loopback, a free port, JetStream off (each JetStream
/// test gives its node a store of its own, see [`jetstream_config`]).
pub fn test_config() -> Config {
    let mut config = Config {
        listen: "127.0.0.1:0".into(),
        ..Config::default()
    };
    config.jetstream.enabled = false;
    config
}

/// A fresh, empty directory for one test (removed when the value is dropped).
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("meshbroker-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A test config with JetStream storing in `dir`. `MESHBROKER_TEST_JS_ACK=write`
/// runs the tests with acks after the journal write (`scripts/test.sh` does both).
pub fn jetstream_config(dir: &TempDir) -> Config {
    let mut config = test_config();
    config.jetstream.enabled = true;
    config.jetstream.store_dir = dir.0.join("js");
    if std::env::var("MESHBROKER_TEST_JS_ACK").as_deref() == Ok("write") {
        config.jetstream.ack = meshbroker::config::AckAfter::Write;
    }
    config
}

/// Starts an in-process node.
pub fn start(config: Config) -> Node {
    let _ = env_logger::builder().is_test(true).try_init();
    Node::start(config).expect("node starts")
}

/// A raw protocol connection for exact byte-level checks.
pub struct Raw {
    pub stream: TcpStream,
    pub received: Vec<u8>,
}

impl Raw {
    pub fn connect(addr: SocketAddr) -> Raw {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_nodelay(true).ok();
        let mut raw = Raw {
            stream,
            received: Vec::new(),
        };
        raw.read_until(b"\r\n", Duration::from_secs(5));
        assert!(
            raw.received.starts_with(b"INFO {"),
            "no INFO: {:?}",
            raw.text()
        );
        // Keep whatever followed the INFO line in the same read.
        let end = raw
            .received
            .windows(2)
            .position(|w| w == b"\r\n")
            .unwrap_or(0)
            + 2;
        raw.received.drain(..end);
        raw
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send");
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.received).into_owned()
    }

    /// Reads until `needle` has been seen, the peer closes, or `limit` passes.
    /// Returns whether the needle was seen.
    pub fn read_until(&mut self, needle: &[u8], limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let mut buf = [0u8; 65536];
        loop {
            if contains(&self.received, needle) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            self.stream.set_read_timeout(Some(left)).ok();
            match self.stream.read(&mut buf) {
                Ok(0) => return contains(&self.received, needle),
                Ok(n) => self.received.extend_from_slice(&buf[..n]),
                Err(_) => return contains(&self.received, needle),
            }
        }
    }

    /// Reads until the peer closes (true) or `limit` passes (false).
    pub fn read_to_close(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let mut buf = [0u8; 65536];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            self.stream.set_read_timeout(Some(left)).ok();
            match self.stream.read(&mut buf) {
                Ok(0) => return true,
                Ok(n) => self.received.extend_from_slice(&buf[..n]),
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut =>
                {
                    return false
                }
                Err(_) => return true,
            }
        }
    }
}

/// A raw connection that logs in as `user` with `pass` and sends PING: the answer is
/// PONG, or an error and a close.
pub fn raw_login(addr: SocketAddr, user: &str, pass: &str) -> Raw {
    let mut raw = Raw::connect(addr);
    raw.send(
        format!(
            "CONNECT {{\"verbose\":false,\"user\":\"{user}\",\"pass\":\"{pass}\"}}\r\nPING\r\n"
        )
        .as_bytes(),
    );
    raw
}

pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

/// The reference server binary: `$NATS_SERVER_BIN`, or `.bench/nats-server` as
/// `scripts/install-reference.sh` leaves it.
pub fn reference_binary() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("NATS_SERVER_BIN") {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Some(p);
        }
    }
    let local = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".bench/nats-server");
    local.is_file().then_some(local)
}

/// Starts the reference nats-server on a free loopback port with `args` added, and
/// returns it with its client address. Without the binary: `None` after saying the
/// test is skipped, or a panic when `MESHBROKER_CI=1` (CI must compare).
pub fn start_reference(args: &[&str]) -> Option<(Child, SocketAddr)> {
    let Some(bin) = reference_binary() else {
        if std::env::var("MESHBROKER_CI").as_deref() == Ok("1") {
            panic!("the reference nats-server is required: run scripts/install-reference.sh");
        }
        eprintln!("SKIPPED: no reference nats-server (run scripts/install-reference.sh)");
        return None;
    };
    let port = free_port();
    // Its log, for when it is not there when a test expects it (see
    // [`explain_reference`]).
    let log = std::fs::File::create(reference_log_path(port)).expect("reference log");
    let child = std::process::Command::new(bin)
        .args(["-a", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start nats-server");
    let child = Child(child);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("address");
    assert!(
        wait_for_port(addr, Duration::from_secs(10)),
        "nats-server listens: {}",
        explain_reference(addr.port())
    );
    Some((child, addr))
}

fn reference_log_path(port: u16) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("meshbroker-reference-{port}.log"))
}

/// The last lines of the log of the reference started on `port`.
pub fn explain_reference(port: u16) -> String {
    let text = std::fs::read_to_string(reference_log_path(port)).unwrap_or_default();
    let tail: Vec<&str> = text.lines().rev().take(30).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    format!("the reference on port {port} logged:\n{}", tail.join("\n"))
}

/// The meshbroker binary cargo built for these tests.
pub fn meshbroker_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_meshbroker"))
}

/// A free loopback port for a child process to listen on. Taken below the kernel's
/// ephemeral range (32768 and up), so neither an in-process node bound to port 0 nor an
/// outgoing connection can take it before the child binds it; and never handed out
/// twice by one test process, so tests running in parallel cannot race for it. (A
/// port from `bind(0)` could be given to the next `bind(0)` as soon as it was
/// released: a reference server once lost its port that way and exited.)
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    // Test binaries run one after another; a start that depends on the process keeps
    // one from reusing the ports of the last one's children while they close.
    let start = std::process::id().wrapping_mul(613) % SPAN;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        assert!(
            n < SPAN,
            "no free loopback port left below the ephemeral range"
        );
        let port = (LOW + (start + n) % SPAN) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Waits until something accepts TCP connections on `addr`.
pub fn wait_for_port(addr: SocketAddr, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// A child process killed on drop.
pub struct Child(pub std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Makes sure the server has processed everything `client` sent so far, subscriptions
/// included. (`async_nats::Client::flush` only flushes the socket; a message to
/// ourselves is a full round trip through the server.)
pub async fn settle(client: &async_nats::Client) {
    use futures::StreamExt;
    let inbox = client.new_inbox();
    let mut probe = client.subscribe(inbox.clone()).await.expect("subscribe");
    client
        .publish(inbox, "settle".into())
        .await
        .expect("publish");
    tokio::time::timeout(Duration::from_secs(10), probe.next())
        .await
        .expect("settle round trip")
        .expect("settle message");
}

/// A GET over a fresh connection: (status code, content type, body).
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String, Vec<u8>) {
    let mut s = TcpStream::connect(addr).expect("monitoring endpoint accepts");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete HTTP response");
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let content_type = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-type")
                .then(|| v.trim().to_string())
        })
        .unwrap_or_default();
    (status, content_type, raw[split + 4..].to_vec())
}

/// A GET of a JSON page that must answer 200.
pub fn http_get_json(addr: SocketAddr, path: &str) -> serde_json::Value {
    let (status, content_type, body) = http_get(addr, path);
    assert_eq!(status, 200, "{path}");
    assert_eq!(content_type, "application/json", "{path}");
    serde_json::from_slice(&body).unwrap_or_else(|e| panic!("{path}: {e}"))
}
