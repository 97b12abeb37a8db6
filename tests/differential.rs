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

/// The keys of the INFO a client sees first at `addr`, sorted, with the values of the
/// JetStream ones.
fn info_keys(addr: SocketAddr) -> (Vec<String>, serde_json::Value) {
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
    let js = serde_json::json!([value["jetstream"], value["api_lvl"]]);
    (keys, js)
}

/// Fields that only describe the Go build, or the reference's xkey encryption (not
/// part of the client protocol), are not ours to copy.
const REFERENCE_ONLY_INFO: [&str; 3] = ["git_commit", "go", "xkey"];

/// With JetStream on, INFO says so (`jetstream`, `api_lvl`) as the reference's does:
/// nats.ws and nats.js read it before they offer JetStream.
#[test]
fn info_announces_jetstream_as_the_reference_does() {
    let dir = common::TempDir::new("info-js");
    let Some((_reference, reference_addr)) =
        common::start_reference(&["-js", "-sd", &dir.0.join("ref").to_string_lossy()])
    else {
        return;
    };
    let node = start(common::jetstream_config(&dir));
    let (ours, our_js) = info_keys(node.client_addr());
    let (theirs, their_js) = info_keys(reference_addr);
    let expected: Vec<&String> = theirs
        .iter()
        .filter(|k| !REFERENCE_ONLY_INFO.contains(&k.as_str()))
        .collect();
    assert_eq!(ours.iter().collect::<Vec<_>>(), expected);
    assert_eq!(their_js[0], serde_json::json!(true));
    // `api_lvl` is the JetStream API level each side implements (ADR-44): ours is
    // lower than 2.15's, and clients gate newer features on it.
    assert_eq!(
        our_js,
        serde_json::json!([true, meshbroker::jetstream::api::API_LEVEL])
    );
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
    let expected: Vec<&String> = theirs
        .iter()
        .filter(|k| !REFERENCE_ONLY_INFO.contains(&k.as_str()))
        .collect();
    let ours_ref: Vec<&String> = ours.iter().collect();
    assert_eq!(ours_ref, expected);
}
