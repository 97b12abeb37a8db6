//! The official JavaScript client (nats.ws) in headless Chromium, over WebSocket:
//! it connects from an allowed origin, publishes, receives, makes requests and uses
//! JetStream and KV; from another origin its connection is refused. The browser side
//! is `tests/browser/` (page.html, run.mjs with playwright-core; nats-jwt and nkeys.js
//! for the operator-mode backend), installed by `.ci/run`
//! (Debian's chromium, `npm ci`).

mod common;

use std::path::PathBuf;
use std::time::Duration;

use futures::StreamExt;
use serde_json::Value;

use common::{free_port, jetstream_config, start, TempDir};

fn browser_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

/// What the browser test needs, or why it cannot run here.
fn missing_tools() -> Option<String> {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if !std::path::Path::new(&chromium).exists() {
        return Some(format!(
            "no Chromium at {chromium} (apt-get install chromium)"
        ));
    }
    if std::process::Command::new("node")
        .arg("--version")
        .output()
        .is_err()
    {
        return Some("no node (apt-get install nodejs npm)".into());
    }
    if !browser_dir()
        .join("node_modules/nats.ws/esm/nats.js")
        .exists()
    {
        return Some("no nats.ws (npm ci in tests/browser)".into());
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_javascript_client_in_chromium() {
    if let Some(why) = missing_tools() {
        if std::env::var("MESHBROKER_CI").as_deref() == Ok("1") {
            panic!("the browser test must run in CI: {why}");
        }
        eprintln!("SKIPPED: {why}");
        return;
    }
    let dir = TempDir::new("browser");
    let page_port = free_port();
    let mut config = jetstream_config(&dir);
    config.websocket.listen = Some("127.0.0.1:0".into());
    config.websocket.no_tls = true;
    config.websocket.allowed_origins = vec![format!("http://127.0.0.1:{page_port}")];
    let node = start(config);
    let ws_url = format!(
        "ws://{}",
        node.websocket_addr().expect("websocket listener")
    );

    let watcher = async_nats::connect(node.client_url()).await.unwrap();
    let mut hello = watcher.subscribe("browser.hello").await.unwrap();
    common::settle(&watcher).await;

    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new("node")
            .arg("run.mjs")
            .arg(&ws_url)
            .arg(page_port.to_string())
            .current_dir(browser_dir())
            .output()
            .expect("run node")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "run.mjs failed: {}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_str(stdout.trim()).expect("run.mjs prints JSON");
    let allowed = &report["allowed"];
    assert_eq!(allowed["ok"], true, "{allowed:#}");
    assert_eq!(allowed["jetstream"], true, "INFO announces JetStream");
    assert_eq!(allowed["reply"], "ping");
    let expected: Vec<String> = (0..20).map(|i| i.to_string()).collect();
    assert_eq!(allowed["count"], serde_json::json!(expected));
    assert_eq!(allowed["seqs"], serde_json::json!([1, 2, 3]));
    assert_eq!(allowed["stored"], "two");
    assert_eq!(
        allowed["fetched"],
        serde_json::json!(["one", "two", "three"])
    );
    assert_eq!(allowed["kv"], "teal");

    let from_browser = tokio::time::timeout(Duration::from_secs(10), hello.next())
        .await
        .expect("the browser's message reached a TCP client")
        .unwrap();
    assert_eq!(&from_browser.payload[..], b"from chromium");

    let refused = &report["refused"];
    assert_eq!(
        refused["origin"],
        format!("http://localhost:{page_port}"),
        "{refused:#}"
    );
    assert_eq!(refused["connected"], false, "{refused:#}");
    assert!(
        refused["console"].to_string().contains("403"),
        "Chromium saw the handshake refused with 403: {refused:#}"
    );
}

/// Operator mode's browser recipe: `meshbroker auth` makes the operator and accounts,
/// the node trusts them, a backend (run.mjs, with `nats-jwt` and `nkeys.js`) mints a
/// WebSocket-only user signed with the account key, and nats.ws in Chromium logs in
/// with `credsAuthenticator`, stays inside its permissions (refused outside them) and
/// uses JetStream in its account; without creds it is refused.
#[test]
fn a_browser_logs_in_with_creds_minted_by_a_backend() {
    if let Some(why) = missing_tools() {
        if std::env::var("MESHBROKER_CI").as_deref() == Ok("1") {
            panic!("the browser test must run in CI: {why}");
        }
        eprintln!("SKIPPED: {why}");
        return;
    }
    let dir = TempDir::new("browser-creds");
    let keys = dir.0.join("auth");
    let out = std::process::Command::new(common::meshbroker_binary())
        .args([
            "auth",
            "init",
            "--dir",
            keys.to_str().expect("utf-8"),
            "--account",
            "APP",
        ])
        .output()
        .expect("meshbroker auth init");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let block = std::fs::read_to_string(keys.join("auth.toml")).expect("auth.toml");
    let (page_port, ws_port) = (free_port(), free_port());
    let (_node, _addr, _) = common::process::run_node(
        "browser-creds",
        &format!(
            "{block}\n[websocket]\nlisten = \"127.0.0.1:{ws_port}\"\nno_tls = true\nallowed_origins = [\"http://127.0.0.1:{page_port}\"]\n"
        ),
    );
    assert!(common::wait_for_port(
        format!("127.0.0.1:{ws_port}").parse().expect("addr"),
        Duration::from_secs(10)
    ));
    let seed = keys.join("accounts").join("APP.nk");
    let output = std::process::Command::new("node")
        .arg("run.mjs")
        .arg(format!("ws://127.0.0.1:{ws_port}"))
        .arg(page_port.to_string())
        .arg(&seed)
        .current_dir(browser_dir())
        .output()
        .expect("run node");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "run.mjs failed: {}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_str(stdout.trim()).expect("run.mjs prints JSON");
    let creds = &report["creds"];
    assert_eq!(creds["ok"], true, "{creds:#}");
    assert_eq!(creds["chat"], "hi from the browser");
    assert!(
        // nats.ws names the server's `Permissions Violation for Publish to …` so.
        creds["errors"]
            .to_string()
            .contains("PERMISSIONS_VIOLATION"),
        "{creds:#}"
    );
    assert_eq!(
        (creds["seq"].as_u64(), creds["stored"].as_str()),
        (Some(1), Some("kept"))
    );
    let nocreds = &report["nocreds"];
    assert_eq!(nocreds["connected"], false, "{nocreds:#}");
    assert!(
        nocreds["error"]
            .to_string()
            .to_lowercase()
            .contains("authorization violation"),
        "{nocreds:#}"
    );
}
