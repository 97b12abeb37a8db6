//! The official Python client (nats-py) against a node: tests/python/nats_py_smoke.py.
//! Skipped with a message when python3 or nats-py is missing, unless `MESHBROKER_CI=1`.

mod common;

use std::process::Command;

use common::{start, test_config};

fn nats_py_available() -> bool {
    Command::new("python3")
        .args(["-c", "import nats"])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn nats_py_pub_sub_queue_request_headers_no_responders() {
    if !nats_py_available() {
        assert!(
            std::env::var("MESHBROKER_CI").as_deref() != Ok("1"),
            "nats-py is required: pip install nats-py"
        );
        eprintln!("SKIPPED: python3 with nats-py not found (pip install nats-py)");
        return;
    }
    let node = start(test_config());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/nats_py_smoke.py");
    let out = Command::new("python3")
        .args([script, &node.client_url()])
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "nats-py failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("all checks passed"));
}
