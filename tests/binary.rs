//! The `meshbroker` binary as an operator runs it: flags, config errors, signals.

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use common::process::{run_node, signal, stderr_of, temp_dir, wait_exit, write_config};
use common::{meshbroker_binary, Raw};

#[test]
fn version_and_help() {
    let out = Command::new(meshbroker_binary())
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("meshbroker "));
    let out = Command::new(meshbroker_binary())
        .arg("--help")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("--conf"));
}

/// `meshbroker --conf PATH --check`.
fn check(path: &std::path::Path) -> std::process::Output {
    Command::new(meshbroker_binary())
        .arg("--conf")
        .arg(path)
        .arg("--check")
        .output()
        .unwrap()
}

#[test]
fn the_default_config_is_valid() {
    let conf = concat!(env!("CARGO_MANIFEST_DIR"), "/conf/node.toml");
    let out = Command::new(meshbroker_binary())
        .args(["--conf", conf, "--check"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn check_names_the_file_the_key_and_the_problem() {
    let dir = temp_dir("check");
    let cases = [
        (
            "unknown.toml",
            "listen = \"127.0.0.1:4222\"\nmax_paylaod = \"1MiB\"\n",
            "max_paylaod",
        ),
        ("size.toml", "max_payload = \"lots\"\n", "key `max_payload`"),
        (
            "duration.toml",
            "ping_interval = \"often\"\n",
            "key `ping_interval`",
        ),
        ("addr.toml", "listen = \"nowhere\"\n", "key `listen`"),
        ("syntax.toml", "listen = \n", "syntax.toml"),
        (
            "section.toml",
            "[jetstream]\nstoredir = \"x\"\n",
            "storedir",
        ),
    ];
    for (name, text, expect) in cases {
        let path = write_config(&dir, name, text);
        let out = check(&path);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{name}: {stderr}");
        assert!(stderr.contains(name), "{name}: file not named: {stderr}");
        assert!(
            stderr.contains(expect),
            "{name}: {expect:?} not in: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{name}: {stderr}");
    }
    let out = Command::new(meshbroker_binary())
        .args([
            "--conf",
            dir.join("missing.toml").to_str().unwrap(),
            "--check",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.toml"));
    std::fs::remove_dir_all(dir).ok();
}

/// Every file a start reads is read by `--check` too, and a start with a bad one fails
/// before it binds a port or makes an interface (a failed start once left wireguard-go's
/// control socket behind).
#[test]
fn check_reads_every_file_a_start_reads() {
    let dir = temp_dir("check-files");
    let d = dir.display();
    std::fs::write(dir.join("garbage.pem"), "not a certificate\n").unwrap();
    std::fs::write(dir.join("short.secret"), "short\n").unwrap();
    std::fs::write(dir.join("garbage.key"), "not a key\n").unwrap();
    let out = Command::new(meshbroker_binary())
        .args(["mesh", "keygen", "--out"])
        .arg(dir.join("good.key"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mesh = |key: &str, endpoint: &str| {
        format!(
            "[cluster]\nname = \"chk\"\nsecret = \"a-cluster-secret-for-check-tests\"\n[mesh]\ninterface = \"mbchk0\"\nbackend = \"userspace\"\nprivate_key_file = \"{d}/{key}\"\nendpoint = \"{endpoint}\"\n"
        )
    };
    let cases = [
        (
            "tls-missing.toml",
            format!("[tls]\ncert_file = \"{d}/missing.pem\"\nkey_file = \"{d}/garbage.pem\"\n"),
            "key `tls.cert_file`",
            "missing.pem",
        ),
        (
            "tls-garbage.toml",
            format!("[tls]\ncert_file = \"{d}/garbage.pem\"\nkey_file = \"{d}/garbage.pem\"\n"),
            "key `tls.cert_file`",
            "garbage.pem",
        ),
        (
            "ws.toml",
            format!("[websocket]\nlisten = \"127.0.0.1:0\"\ncert_file = \"{d}/missing.pem\"\nkey_file = \"{d}/missing.pem\"\n"),
            "key `websocket.cert_file`",
            "missing.pem",
        ),
        (
            "monitor.toml",
            format!("[monitor]\nlisten = \"127.0.0.1:0\"\ncert_file = \"{d}/garbage.pem\"\nkey_file = \"{d}/garbage.pem\"\n"),
            "key `monitor.cert_file`",
            "garbage.pem",
        ),
        (
            "route-tls.toml",
            format!("[cluster]\nname = \"chk\"\nlisten = \"127.0.0.1:0\"\ncert_file = \"{d}/garbage.pem\"\nkey_file = \"{d}/garbage.pem\"\nca_file = \"{d}/garbage.pem\"\n"),
            "key `cluster.cert_file`",
            "garbage.pem",
        ),
        (
            "secret-missing.toml",
            format!("[cluster]\nname = \"chk\"\nlisten = \"127.0.0.1:0\"\nsecret_file = \"{d}/missing.secret\"\n"),
            "key `cluster.secret_file`",
            "missing.secret",
        ),
        (
            "secret-short.toml",
            format!("[cluster]\nname = \"chk\"\nlisten = \"127.0.0.1:0\"\nsecret_file = \"{d}/short.secret\"\n"),
            "key `cluster.secret_file`",
            "too short",
        ),
        (
            "key-missing.toml",
            mesh("missing.key", "127.0.0.1:51820"),
            "key `mesh.private_key_file`",
            "missing.key",
        ),
        (
            "key-garbage.toml",
            mesh("garbage.key", "127.0.0.1:51820"),
            "key `mesh.private_key_file`",
            "not a base64 WireGuard private key",
        ),
        (
            "endpoint.toml",
            mesh("good.key", "0.0.0.0:51820"),
            "key `mesh.endpoint`",
            "not an address other nodes can reach",
        ),
    ];
    for (name, text, key, why) in &cases {
        let path = write_config(&dir, name, &format!("listen = \"127.0.0.1:0\"\n{text}"));
        let out = check(&path);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{name}: --check passed: {stderr}"
        );
        for expect in [*name, *key, *why] {
            assert!(
                stderr.contains(expect),
                "{name}: {expect:?} not in: {stderr}"
            );
        }
        // The start fails the same way, at once.
        let mut start = Command::new(meshbroker_binary())
            .args(["--conf", path.to_str().unwrap()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(status) = start.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = start.kill();
                panic!("{name}: the node started with a bad file");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let out = start.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(status.code(), Some(1), "{name}: {stderr}");
        assert!(stderr.contains(*key), "{name}: {key:?} not in: {stderr}");
        assert!(
            !std::path::Path::new("/var/run/wireguard/mbchk0.sock").exists(),
            "{name}: a failed start left wireguard-go's control socket"
        );
    }
    // And a mesh section whose files are good passes.
    let path = write_config(
        &dir,
        "good.toml",
        &format!(
            "listen = \"127.0.0.1:0\"\n{}",
            mesh("good.key", "127.0.0.1:51820")
        ),
    );
    let out = check(&path);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::remove_dir_all(dir).ok();
}

/// A node process; its stderr is read as it comes (a full pipe would stall the node)
/// and kept for the test.
#[test]
fn sigint_stops_at_once_and_cleanly() {
    let (mut child, addr, dir) = run_node("sigint", "");
    let mut raw = Raw::connect(addr);
    raw.send(b"CONNECT {\"verbose\":false}\r\nPING\r\n");
    assert!(raw.read_until(b"PONG\r\n", Duration::from_secs(5)));
    let started = Instant::now();
    signal(&child, "-INT");
    let status = wait_exit(&mut child, Duration::from_secs(5)).expect("exits");
    assert!(status.success(), "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(
        raw.read_to_close(Duration::from_secs(2)),
        "client connection closed"
    );
    let stderr = stderr_of(&mut child);
    assert!(stderr.contains("SIGINT"), "{stderr}");
    assert!(
        stderr.contains("connected from"),
        "connections logged at debug: {stderr}"
    );
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn sigterm_enters_lame_duck_mode() {
    let (mut child, addr, dir) = run_node(
        "sigterm",
        "lame_duck_grace_period = \"300ms\"\nlame_duck_duration = \"500ms\"\n",
    );
    let mut raw = Raw::connect(addr);
    raw.send(b"CONNECT {\"verbose\":false,\"protocol\":1}\r\nPING\r\n");
    assert!(raw.read_until(b"PONG\r\n", Duration::from_secs(5)));
    raw.received.clear();
    signal(&child, "-TERM");
    assert!(
        raw.read_until(b"\"ldm\":true", Duration::from_secs(5)),
        "{}",
        raw.text()
    );
    // Payloads are never logged: publish a recognisable one while still connected.
    raw.send(b"PUB secret 14\r\nsecret-payload\r\n");
    assert!(
        raw.read_to_close(Duration::from_secs(5)),
        "closed after the grace period"
    );
    let status = wait_exit(&mut child, Duration::from_secs(10)).expect("exits");
    assert!(status.success(), "{status:?}");
    let stderr = stderr_of(&mut child);
    assert!(stderr.contains("lame duck"), "{stderr}");
    assert!(
        !stderr.contains("secret-payload"),
        "payload logged: {stderr}"
    );
    std::fs::remove_dir_all(dir).ok();
}

/// A new connection and the INFO line it got.
fn first_info(addr: SocketAddr) -> (Raw, String) {
    let mut raw = Raw {
        stream: std::net::TcpStream::connect(addr).unwrap(),
        received: Vec::new(),
    };
    assert!(raw.read_until(b"\r\n", Duration::from_secs(5)));
    let text = raw.text();
    raw.received.clear();
    (raw, text)
}

/// SIGHUP re-reads the file: a new log level and new limits apply (limits to new
/// connections; a connection that is still allowed stays up), an invalid file or a
/// change that needs a restart leaves the node running on the config it had.
#[test]
fn sighup_reloads_the_config_or_keeps_the_old_one() {
    let (mut child, addr, dir) = run_node("sighup", "max_payload = \"1MiB\"\n");
    let path = dir.join("node.toml");
    let original = std::fs::read_to_string(&path).unwrap();
    let (mut old, info) = first_info(addr);
    assert!(info.contains("\"max_payload\":1048576"), "{info}");
    old.send(b"CONNECT {\"verbose\":false}\r\nPING\r\n");
    assert!(old.read_until(b"PONG\r\n", Duration::from_secs(5)));

    // Every SIGHUP ends in one of two log lines: wait for the next one.
    let outcomes = |log: String| {
        log.matches("config reloaded").count() + log.matches("reload refused").count()
    };
    let reload = |text: &str| {
        let before = outcomes(child.log_so_far());
        std::fs::write(&path, text).unwrap();
        signal(&child, "-HUP");
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while outcomes(child.log_so_far()) == before {
            assert!(
                std::time::Instant::now() < deadline,
                "SIGHUP not answered: {}",
                child.log_so_far()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    // Smaller payloads and a quieter log.
    reload(
        &original
            .replace("max_payload = \"1MiB\"", "max_payload = \"1KiB\"")
            .replace("log_level = \"debug\"", "log_level = \"warn\""),
    );
    let (_new, info) = first_info(addr);
    assert!(
        info.contains("\"max_payload\":1024"),
        "new connections: {info}"
    );
    old.received.clear();
    old.send(b"PING\r\n");
    assert!(
        old.read_until(b"PONG\r\n", Duration::from_secs(5)),
        "the old connection stays up"
    );

    // Not TOML: refused, the node keeps the reloaded config and keeps serving.
    reload("max_payload = \n");
    // A key that needs a restart: refused too.
    reload(&original.replace("127.0.0.1:", "127.0.0.2:"));
    let (_again, info) = first_info(addr);
    assert!(
        info.contains("\"max_payload\":1024"),
        "still the last good config: {info}"
    );

    signal(&child, "-INT");
    wait_exit(&mut child, Duration::from_secs(5)).expect("exits");
    let stderr = stderr_of(&mut child);
    assert!(
        stderr.contains("config reloaded (log level Debug -> Warn)"),
        "{stderr}"
    );
    assert!(stderr.contains("reload refused"), "{stderr}");
    assert!(stderr.contains("`listen` cannot change"), "{stderr}");
    // After the switch to warn, connections are no longer logged at debug.
    let after = stderr.split("config reloaded").nth(1).unwrap_or_default();
    assert!(
        !after.contains("connected from"),
        "debug lines after warn: {after}"
    );
    assert!(stderr.contains("connected from"), "debug before: {stderr}");
    std::fs::remove_dir_all(dir).ok();
}

/// SIGHUP with changed users: a live connection whose password changed is closed, one
/// whose permissions shrank has them enforced at once, new connections need the new
/// password, the log level changes, and no password reaches the log.
#[test]
fn sighup_applies_users_permissions_and_log_level() {
    let users = |alice_pass: &str, bob_perms: &str| {
        format!(
            "[[authorization.users]]\nuser = \"alice\"\npassword = \"{alice_pass}\"\n\
             [[authorization.users]]\nuser = \"bob\"\npassword = \"bob-pw\"\n{bob_perms}"
        )
    };
    let (mut child, addr, dir) = run_node("sighup-users", &users("old-secret-1", ""));
    let path = dir.join("node.toml");
    let original = std::fs::read_to_string(&path).unwrap();
    let wait = Duration::from_secs(5);
    let login = |user: &str, pass: &str| common::raw_login(addr, user, pass);
    let mut alice = login("alice", "old-secret-1");
    assert!(alice.read_until(b"PONG\r\n", wait));
    alice.received.clear();
    let mut bob = login("bob", "bob-pw");
    bob.send(b"SUB secret 1\r\nSUB allowed 2\r\nPING\r\n");
    assert!(bob.read_until(b"PONG\r\nPONG\r\n", wait), "{}", bob.text());
    bob.received.clear();

    let shrunk =
        "[authorization.users.permissions]\npublish = [\"allowed\"]\nsubscribe = [\"allowed\"]\n";
    let changed = original
        .replace(&users("old-secret-1", ""), &users("new-secret-2", shrunk))
        .replace("log_level = \"debug\"", "log_level = \"info\"");
    assert_ne!(changed, original);
    std::fs::write(&path, changed).unwrap();
    signal(&child, "-HUP");

    assert!(
        alice.read_to_close(wait),
        "alice's password changed: closed"
    );
    assert_eq!(alice.text(), "-ERR 'Authorization Violation'\r\n");
    assert!(bob.read_until(b"(sid \"1\")'\r\n", wait), "{}", bob.text());
    bob.received.clear();
    bob.send(b"PUB secret 1\r\nx\r\nPUB allowed 1\r\ny\r\nPING\r\n");
    assert!(bob.read_until(b"PONG\r\n", wait));
    assert_eq!(
        bob.text(),
        "-ERR 'Permissions Violation for Publish to \"secret\"'\r\nMSG allowed 2 1\r\ny\r\nPONG\r\n"
    );
    let mut old = login("alice", "old-secret-1");
    assert!(old.read_to_close(wait));
    assert_eq!(old.text(), "-ERR 'Authorization Violation'\r\n");
    let mut new = login("alice", "new-secret-2");
    assert!(new.read_until(b"PONG\r\n", wait));

    signal(&child, "-INT");
    wait_exit(&mut child, wait).expect("exits");
    let stderr = stderr_of(&mut child);
    assert!(
        stderr.contains("config reloaded (log level Debug -> Info)"),
        "{stderr}"
    );
    assert!(stderr.contains("authentication error"), "{stderr}");
    for secret in ["old-secret-1", "new-secret-2", "bob-pw"] {
        assert!(!stderr.contains(secret), "{secret} in the log:\n{stderr}");
    }
    let after = stderr.split("config reloaded").nth(1).unwrap_or_default();
    assert!(
        !after.contains("connected from"),
        "debug lines after info: {after}"
    );
    std::fs::remove_dir_all(dir).ok();
}
