//! Differential tests: the same byte scripts sent to meshbroker and to the reference
//! server (nats-server 2.15.1), compared byte for byte (INFO lines, which carry ids,
//! are left out) together with whether each side closed the connection.
//!
//! The reference comes from `scripts/install-reference.sh` (or `$NATS_SERVER_BIN`).
//! Without it the tests say so and pass, unless `MESHBROKER_CI=1`
//! (which `.ci/run` sets) makes its absence a failure.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::scripts;
use common::{start, start_reference, test_config, Child, Raw};

fn reference() -> Option<(Child, SocketAddr)> {
    start_reference(&[])
}

#[test]
fn byte_scripts_get_the_same_answers() {
    let Some((_reference, reference_addr)) = reference() else {
        return;
    };
    let ours = scripts::run_all_on_fresh_nodes();
    // The reference runs the scripts one after another (one server, no cross-talk).
    let failures: Vec<String> = ours
        .into_iter()
        .filter_map(|(script, (our_bytes, our_closed))| {
            let (ref_bytes, ref_closed) = scripts::run(reference_addr, script);
            (our_bytes != ref_bytes || our_closed != ref_closed).then(|| {
                format!(
                    "{}:\n  reference: {:?} closed={}\n  meshbroker: {:?} closed={}",
                    script.name,
                    String::from_utf8_lossy(&ref_bytes),
                    ref_closed,
                    String::from_utf8_lossy(&our_bytes),
                    our_closed
                )
            })
        })
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The INFO a client sees: same keys (values such as ids and ports differ).
#[test]
fn info_has_the_reference_keys() {
    let Some((_reference, reference_addr)) = reference() else {
        return;
    };
    let node = start(test_config());
    let keys = |addr: SocketAddr| -> Vec<String> {
        let stream = std::net::TcpStream::connect(addr).unwrap();
        let mut raw = Raw {
            stream,
            received: Vec::new(),
        };
        assert!(raw.read_until(b"\r\n", Duration::from_secs(5)));
        let text = raw.text();
        let json = text
            .strip_prefix("INFO ")
            .and_then(|t| t.split("\r\n").next())
            .unwrap()
            .trim();
        let value: serde_json::Value = serde_json::from_str(json).unwrap();
        let mut keys: Vec<String> = value.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        keys
    };
    let ours = keys(node.client_addr());
    let theirs = keys(reference_addr);
    // Fields that only describe the Go build, or the reference's xkey encryption
    // (not part of the client protocol), are not ours to copy.
    // `api_lvl` is the JetStream API level: announced once JetStream is served.
    let reference_only = ["git_commit", "go", "xkey", "api_lvl"];
    let expected: Vec<&String> = theirs
        .iter()
        .filter(|k| !reference_only.contains(&k.as_str()))
        .collect();
    let ours_ref: Vec<&String> = ours.iter().collect();
    assert_eq!(ours_ref, expected);
}
