//! The official Python client (nats-py) against a node: the scripts in tests/python/.
//! Skipped with a message when python3 or nats-py is missing, unless `MESHBROKER_CI=1`.

mod common;

use std::process::Command;

use common::{jetstream_config, start, test_config, TempDir};

fn nats_py_available() -> bool {
    let found = Command::new("python3")
        .args(["-c", "import nats"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var("MESHBROKER_CI").as_deref() != Ok("1"),
            "nats-py is required: pip install nats-py"
        );
        eprintln!("SKIPPED: python3 with nats-py not found (pip install nats-py)");
    }
    found
}

/// Runs `tests/python/<script>` with `args` (the first: the URL or URLs); it must end
/// with "all checks passed".
fn run_script(script: &str, args: &[&str]) {
    let path = format!("{}/tests/python/{script}", env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("python3")
        .arg(&path)
        .args(args)
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "{script} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("all checks passed"));
}

#[test]
fn nats_py_pub_sub_queue_request_headers_no_responders() {
    if !nats_py_available() {
        return;
    }
    let node = start(test_config());
    run_script("nats_py_smoke.py", &[&node.client_url()]);
}

/// Streams, acks, dedupe, message get, purge, pull and push consumers, NAK
/// redelivery, key/value and object store through nats-py's JetStream API.
#[test]
fn nats_py_jetstream_kv_and_object_store() {
    if !nats_py_available() {
        return;
    }
    let dir = TempDir::new("py-js");
    let node = start(jetstream_config(&dir));
    run_script("nats_py_jetstream.py", &[&node.client_url()]);
}

/// The same through three meshbroker processes, one JetStream, everything R3: the
/// client writes through node 1 and reads back from node 3.
#[test]
fn nats_py_jetstream_kv_and_object_store_r3() {
    if !nats_py_available() {
        return;
    }
    let peers = common::jscluster::started("py-r3");
    let urls: Vec<String> = peers
        .iter()
        .map(|p| format!("nats://{}", p.client))
        .collect();
    run_script("nats_py_jetstream.py", &[&urls.join(","), "3"]);
}
