//! The `meshbroker` binary run as an operator runs it: a config file, its log on
//! stderr (kept for the test to read), signals.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{meshbroker_binary, wait_for_port, Child};

pub fn write_config(dir: &std::path::Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

pub fn temp_dir(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("meshbroker-test-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub struct RunningNode {
    pub child: Child,
    log: std::sync::Arc<std::sync::Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

/// Starts the binary on a config listening on a port it picks itself (port 0; the
/// address is read from its log, so parallel tests never race for a port).
pub fn run_node(tag: &str, extra: &str) -> (RunningNode, SocketAddr, std::path::PathBuf) {
    let dir = temp_dir(tag);
    // `extra` may set its own log level; debug otherwise.
    let level = if extra.contains("log_level") {
        ""
    } else {
        "log_level = \"debug\"\n"
    };
    let text = format!(
        "listen = \"127.0.0.1:0\"\n{level}{extra}[jetstream]\nstore_dir = \"{}\"\n",
        dir.join("js").display()
    );
    let path = write_config(&dir, "node.toml", &text);
    let (node, addr) = run_config(&path);
    (node, addr, dir)
}

/// Starts the meshbroker binary on the config file at `path` (again, after a stop:
/// the same store and files).
#[allow(dead_code)]
pub fn run_config(path: &std::path::Path) -> (RunningNode, SocketAddr) {
    use std::io::BufRead;
    let mut child = Command::new(meshbroker_binary())
        .args(["--conf", path.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pipe = child.stderr.take().expect("stderr piped");
    let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let (found, listening) = std::sync::mpsc::channel::<SocketAddr>();
    let sink = log.clone();
    let reader = std::thread::spawn(move || {
        for line in std::io::BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            if let Some(addr) = line
                .split("listening for clients on ")
                .nth(1)
                .and_then(|a| a.trim().parse().ok())
            {
                let _ = found.send(addr);
            }
            let mut log = sink.lock().unwrap();
            log.push_str(&line);
            log.push('\n');
        }
    });
    let addr = listening
        .recv_timeout(Duration::from_secs(10))
        .expect("the node logs its client address");
    assert!(wait_for_port(addr, Duration::from_secs(10)), "node listens");
    let node = RunningNode {
        child: Child(child),
        log,
        reader: Some(reader),
    };
    (node, addr)
}

pub fn signal(node: &RunningNode, sig: &str) {
    let status = Command::new("kill")
        .args([sig, &node.child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Everything an exited node wrote to its stderr.
pub fn stderr_of(node: &mut RunningNode) -> String {
    if let Some(reader) = node.reader.take() {
        let _ = reader.join();
    }
    node.log.lock().unwrap().clone()
}

pub fn wait_exit(node: &mut RunningNode, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = node.child.0.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

impl RunningNode {
    /// What the node has logged so far.
    pub fn log_so_far(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits until the node's log holds `needle`.
    pub fn wait_for_log(&self, needle: &str, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if self.log_so_far().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}
