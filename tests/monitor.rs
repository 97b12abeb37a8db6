//! The monitoring endpoint as an operator's tools see it: read over HTTP from a
//! running node while real clients (`async-nats`) use it, numbers checked against what
//! the test did, `/varz` keys compared with nats-server's for the same situation.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::{
    free_port, http_get as get, http_get_json as get_json, jetstream_config, start,
    start_reference, test_config, wait_for_port, TempDir,
};
use futures::StreamExt;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(10);

/// Polls `/varz` until `done` holds (counters are folded in as connections read).
fn varz_until(addr: SocketAddr, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let v = get_json(addr, "/varz");
        if done(&v) || Instant::now() > deadline {
            return v;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn monitored(mut config: meshbroker::Config) -> meshbroker::Node {
    config.monitor.listen = Some("127.0.0.1:0".into());
    start(config)
}

#[test]
fn the_endpoint_is_off_unless_configured() {
    let node = start(test_config());
    assert_eq!(node.monitor_addr(), None);
    let node = monitored(test_config());
    let addr = node.monitor_addr().expect("configured: on");
    assert!(addr.ip().is_loopback());
    let (status, _, body) = get(addr, "/nope");
    assert_eq!((status, &body[..]), (404, &b"404 page not found\n"[..]));
    let (status, _, body) = get(addr, "/healthz");
    assert_eq!((status, &body[..]), (200, &br#"{"status":"ok"}"#[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn varz_and_metrics_count_what_clients_did() {
    let node = monitored(test_config());
    let addr = node.monitor_addr().unwrap();
    let before = get_json(addr, "/varz");
    assert_eq!(before["connections"], 0);
    assert_eq!(before["in_msgs"], 0);

    let publisher = async_nats::connect(node.client_url()).await.unwrap();
    let listener = async_nats::connect(node.client_url()).await.unwrap();
    let idle = async_nats::connect(node.client_url()).await.unwrap();
    let mut sub = listener.subscribe("orders.new").await.unwrap();
    let _other = idle.subscribe("other.>").await.unwrap();
    listener.flush().await.unwrap();
    idle.flush().await.unwrap();
    // `flush` only empties the clients' buffers: publish once the node counts both
    // subscriptions (the count is read from the index publishers match against).
    let v = tokio::task::spawn_blocking(move || varz_until(addr, |v| v["subscriptions"] == 2))
        .await
        .unwrap();
    assert_eq!(v["subscriptions"], 2);
    let payload = bytes::Bytes::from(vec![b'x'; 100]);
    for _ in 0..500 {
        publisher
            .publish("orders.new", payload.clone())
            .await
            .unwrap();
    }
    publisher.flush().await.unwrap();
    for _ in 0..500 {
        tokio::time::timeout(WAIT, sub.next())
            .await
            .unwrap()
            .unwrap();
    }

    let v = tokio::task::spawn_blocking(move || {
        varz_until(addr, |v| v["out_msgs"] == 500 && v["in_msgs"] == 500)
    })
    .await
    .unwrap();
    assert_eq!(v["connections"], 3);
    assert_eq!(v["total_connections"], 3);
    assert_eq!(v["subscriptions"], 2);
    assert_eq!(v["in_msgs"], 500);
    assert_eq!(v["in_bytes"], 500 * 100);
    assert_eq!(v["out_msgs"], 500);
    assert_eq!(v["out_bytes"], 500 * 100);
    assert_eq!(v["port"], node.client_addr().port());
    assert_eq!(v["http_port"], addr.port());
    assert!(v["mem"].as_u64().unwrap() > 0);
    assert_eq!(
        v["http_req_stats"]["/varz"].as_u64().map(|n| n >= 2),
        Some(true)
    );

    let (status, content_type, body) = get(addr, "/metrics");
    assert_eq!(status, 200);
    assert!(content_type.starts_with("text/plain; version=0.0.4"));
    let text = String::from_utf8(body).unwrap();
    for expected in [
        "meshbroker_connections 3\n",
        "meshbroker_in_messages_total 500\n",
        "meshbroker_out_bytes_total 50000\n",
        "meshbroker_subscriptions 2\n",
    ] {
        assert!(text.contains(expected), "{expected:?} in\n{text}");
    }

    let (connz, by_sender) = tokio::task::spawn_blocking(move || {
        (
            get_json(addr, "/connz?subs=1"),
            get_json(addr, "/connz?sort=msgs_from&limit=1"),
        )
    })
    .await
    .unwrap();
    assert_eq!(connz["num_connections"], 3);
    assert_eq!(connz["total"], 3);
    let conns = connz["connections"].as_array().unwrap();
    let cids: Vec<u64> = conns.iter().map(|c| c["cid"].as_u64().unwrap()).collect();
    assert!(
        cids.windows(2).all(|w| w[0] < w[1]),
        "sorted by cid: {cids:?}"
    );
    let receiver = conns
        .iter()
        .find(|c| c["subscriptions_list"] == serde_json::json!(["orders.new"]))
        .expect("the subscriber's connection lists its subscription");
    assert_eq!(receiver["out_msgs"], 500);
    assert_eq!(receiver["out_bytes"], 500 * 100);
    assert_eq!(receiver["lang"], "rust");
    let sender = &by_sender["connections"][0];
    assert_eq!(by_sender["num_connections"], 1);
    assert_eq!(sender["in_msgs"], 500);
    assert_eq!(sender["in_bytes"], 500 * 100);
    assert_eq!(sender["subscriptions"], 0);
    let subsz = tokio::task::spawn_blocking(move || get_json(addr, "/subsz?subs=1"))
        .await
        .unwrap();
    assert_eq!(subsz["num_subscriptions"], 2);
    let mut subjects: Vec<&str> = subsz["subscriptions_list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["subject"].as_str().unwrap())
        .collect();
    subjects.sort();
    assert_eq!(subjects, ["orders.new", "other.>"]);
    assert_eq!(get_json(addr, "/routez")["num_routes"], 0);
    // As the reference without accounts configured: the global and the system account.
    let accountz = get_json(addr, "/accountz");
    assert_eq!(accountz["accounts"], serde_json::json!(["$G", "$SYS"]));
    assert_eq!(accountz["system_account"], "$SYS");
    let (status, _, body) = get(addr, "/connz?sort=bogus");
    assert_eq!(
        (status, &body[..]),
        (400, &b"invalid sorting option: bogus"[..])
    );

    // A subscriber keeps its client's connection: all of them go.
    drop((publisher, listener, idle, sub, _other));
    let v = tokio::task::spawn_blocking(move || varz_until(addr, |v| v["connections"] == 0))
        .await
        .unwrap();
    assert_eq!(v["connections"], 0, "closed connections leave the count");
    assert_eq!(v["total_connections"], 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jsz_and_metrics_follow_streams() {
    let dir = TempDir::new("monitor-js");
    let node = monitored(jetstream_config(&dir));
    let addr = node.monitor_addr().unwrap();
    let client = async_nats::connect(node.client_url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let stream = js
        .create_stream(async_nats::jetstream::stream::Config {
            name: "ORDERS".into(),
            subjects: vec!["orders.>".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    for i in 0..10 {
        js.publish(format!("orders.{i}"), "hello".into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            durable_name: Some("C".into()),
            ..Default::default()
        })
        .await
        .unwrap();

    let jsz = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + WAIT;
        loop {
            let v = get_json(addr, "/jsz");
            if v["consumers"] == 1 || Instant::now() > deadline {
                return v;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    })
    .await
    .unwrap();
    assert_eq!(jsz["streams"], 1);
    assert_eq!(jsz["consumers"], 1);
    assert_eq!(jsz["messages"], 10);
    // File-store accounting: 30 + subject (8) + payload (5) per message.
    assert_eq!(jsz["bytes"], 10 * 43);
    assert_eq!(jsz["storage"], 10 * 43);
    assert!(jsz["api"]["total"].as_u64().unwrap() >= 2);
    let (_, _, body) = get(addr, "/metrics");
    let text = String::from_utf8(body).unwrap();
    assert!(
        text.contains("meshbroker_jetstream_stream_messages{stream=\"ORDERS\"} 10\n"),
        "{text}"
    );
    let varz = get_json(addr, "/varz");
    assert_eq!(varz["jetstream"]["stats"]["storage"], 10 * 43);

    js.delete_stream("ORDERS").await.unwrap();
    let jsz = get_json(addr, "/jsz");
    assert_eq!(jsz["streams"], 0);
}

/// `/varz` has the reference's keys, but for what only describes the Go build or
/// features meshbroker does not have (and would have to invent values for); so has a
/// `/connz` connection.
#[test]
fn varz_and_connz_keys_match_the_reference() {
    let http_port = free_port();
    let Some((_reference, reference_client)) = start_reference(&["-m", &http_port.to_string()])
    else {
        return;
    };
    let reference: SocketAddr = format!("127.0.0.1:{http_port}").parse().unwrap();
    assert!(wait_for_port(reference, WAIT));
    let node = monitored(test_config());
    let keys = |v: Value| -> Vec<String> {
        let mut keys: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        keys
    };
    let reference_only = [
        "git_commit",
        "go",
        "gomaxprocs",
        "feature_flags",
        "system_account",
        "disk_io_wait_stats",
    ];
    let theirs: Vec<String> = keys(get_json(reference, "/varz"))
        .into_iter()
        .filter(|k| !reference_only.contains(&k.as_str()))
        .collect();
    let ours = node.monitor_addr().unwrap();
    assert_eq!(keys(get_json(ours, "/varz")), theirs);

    // A connection in /connz, the same client on both: the same keys but the round
    // trip time, which meshbroker does not measure.
    let connect = |client: SocketAddr| {
        let mut raw = common::Raw::connect(client);
        raw.send(
            b"CONNECT {\"verbose\":false,\"name\":\"k\",\"lang\":\"rust\",\"version\":\"1\"}\r\nSUB a.b 1\r\nPING\r\n",
        );
        assert!(raw.read_until(b"PONG\r\n", WAIT));
        raw
    };
    let _their_client = connect(reference_client);
    let _our_client = connect(node.client_addr());
    let conn_keys = |addr: SocketAddr| -> Vec<String> {
        let v = get_json(addr, "/connz?subs=1");
        keys(v["connections"][0].clone())
    };
    let theirs: Vec<String> = conn_keys(reference)
        .into_iter()
        .filter(|k| k != "rtt")
        .collect();
    assert_eq!(conn_keys(ours), theirs);
}

/// With a certificate the endpoint speaks HTTPS only.
#[test]
fn https_when_given_a_certificate() {
    let dir = TempDir::new("monitor-https");
    let ca = common::certs::TestCa::new("monitor CA");
    let cert = ca.leaf(&dir.0, "monitor", &["localhost"]);
    let mut config = test_config();
    config.monitor.cert_file = Some(cert.cert.clone());
    config.monitor.key_file = Some(cert.key.clone());
    let node = monitored(config);
    let addr = node.monitor_addr().unwrap();

    let session =
        rustls::ClientConnection::new(ca.client_config(), "localhost".try_into().unwrap()).unwrap();
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(WAIT)).unwrap();
    let mut tls = rustls::StreamOwned::new(session, tcp);
    write!(
        tls,
        "GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = Vec::new();
    let _ = tls.read_to_end(&mut response);
    let text = String::from_utf8_lossy(&response);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.ends_with(r#"{"status":"ok"}"#), "{text}");

    // Plain HTTP gets no page.
    let mut plain = TcpStream::connect(addr).unwrap();
    plain.set_read_timeout(Some(WAIT)).unwrap();
    write!(plain, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut raw = Vec::new();
    let _ = plain.read_to_end(&mut raw);
    assert!(!String::from_utf8_lossy(&raw).contains("status"));
}

/// In lame duck mode the node keeps counting: a client that leaves during the grace
/// period leaves the connections gauge at once.
#[test]
fn lame_duck_departures_leave_the_gauge() {
    let mut config = test_config();
    config.lame_duck_grace_period = meshbroker::config::Dur(Duration::from_secs(3));
    config.lame_duck_duration = meshbroker::config::Dur(Duration::from_millis(200));
    let node = monitored(config);
    let addr = node.monitor_addr().unwrap();
    let mut leaving = common::Raw::connect(node.client_addr());
    let mut staying = common::Raw::connect(node.client_addr());
    for raw in [&mut leaving, &mut staying] {
        raw.send(b"CONNECT {\"verbose\":false,\"protocol\":1}\r\nPING\r\n");
        assert!(raw.read_until(b"PONG\r\n", WAIT));
    }
    assert_eq!(
        varz_until(addr, |v| v["connections"] == 2)["connections"],
        2
    );

    let stopping = std::thread::spawn(move || node.lame_duck());
    assert!(leaving.read_until(b"\"ldm\":true", WAIT), "told to leave");
    leaving.stream.shutdown(std::net::Shutdown::Both).unwrap();
    let v = varz_until(addr, |v| v["connections"] == 1);
    assert_eq!(v["connections"], 1, "the departed client is not counted");
    stopping.join().unwrap();
    assert!(
        staying.read_to_close(WAIT),
        "the rest are closed after the grace period"
    );
}
