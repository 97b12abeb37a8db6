//! Raw-socket tests: exact bytes, exact errors, and when the connection is closed.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use meshbroker::config::{Dur, Size};

use common::scripts;
use common::{contains, start, test_config, Raw};

#[test]
fn every_script_gets_the_reference_answer() {
    let failures: Vec<String> = scripts::run_all_on_fresh_nodes()
        .into_iter()
        .filter(|(script, (got, closed))| *got != script.expect || *closed != script.closed)
        .map(|(script, (got, closed))| {
            format!(
                "{}: expected {:?} closed={}, got {:?} closed={}",
                script.name,
                String::from_utf8_lossy(script.expect),
                script.closed,
                String::from_utf8_lossy(&got),
                closed
            )
        })
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A deliberate difference (README, "Where meshbroker differs on the wire"): the
/// reference's subscriptions made before a second CONNECT stop receiving; ours keep
/// receiving, and their sid stays taken.
#[test]
fn subscriptions_survive_a_second_connect() {
    let node = start(test_config());
    let mut raw = Raw::connect(node.client_addr());
    raw.send(b"CONNECT {\"verbose\":false}\r\nSUB a 1\r\nCONNECT {\"verbose\":false}\r\n");
    raw.send(b"SUB a 1\r\nPUB a 1\r\nx\r\nPING\r\n");
    assert!(raw.read_until(b"PONG\r\n", Duration::from_secs(5)));
    assert!(
        raw.text().ends_with("MSG a 1 1\r\nx\r\nPONG\r\n"),
        "{:?}",
        raw.text()
    );
    assert_eq!(raw.text().matches("MSG a 1").count(), 1);
}

#[test]
fn control_line_over_the_limit_closes_in_one_piece_or_split() {
    let node = start(test_config());
    let long = format!("SUB {} 1\r\n", "a".repeat(5000));
    // In one write.
    let mut raw = Raw::connect(node.client_addr());
    raw.send(long.as_bytes());
    assert!(raw.read_to_close(Duration::from_secs(5)));
    assert_eq!(raw.text(), "-ERR 'maximum control line exceeded'\r\n");
    // Trickled, never terminated: the limit applies before the line ends.
    let mut raw = Raw::connect(node.client_addr());
    raw.send(&long.as_bytes()[..3000]);
    std::thread::sleep(Duration::from_millis(50));
    raw.send(&long.as_bytes()[3000..4500]);
    assert!(raw.read_to_close(Duration::from_secs(5)));
    assert_eq!(raw.text(), "-ERR 'maximum control line exceeded'\r\n");
    // A line just under the limit is fine.
    let mut raw = Raw::connect(node.client_addr());
    raw.send(format!("SUB {} 1\r\nPING\r\n", "b".repeat(4000)).as_bytes());
    assert!(raw.read_until(b"PONG\r\n", Duration::from_secs(5)));
}

#[test]
fn headers_are_stripped_for_subscribers_without_header_support() {
    let node = start(test_config());
    let mut plain = Raw::connect(node.client_addr());
    plain.send(b"CONNECT {\"verbose\":false,\"headers\":false}\r\nSUB foo q 1\r\nPING\r\n");
    assert!(plain.read_until(b"PONG\r\n", Duration::from_secs(5)));
    plain.received.clear();
    let mut publisher = Raw::connect(node.client_addr());
    publisher.send(
        b"CONNECT {\"verbose\":false,\"headers\":true}\r\nHPUB foo 18 20\r\nNATS/1.0\r\nA: b\r\n\r\nhi\r\nPING\r\n",
    );
    assert!(publisher.read_until(b"PONG\r\n", Duration::from_secs(5)));
    assert!(plain.read_until(b"hi\r\n", Duration::from_secs(5)));
    assert_eq!(plain.text(), "MSG foo 1 2\r\nhi\r\n");
}

#[test]
fn stale_connection_after_unanswered_pings() {
    let mut config = test_config();
    config.ping_interval = Dur(Duration::from_millis(300));
    config.max_pings_out = 2;
    let node = start(config);
    let mut raw = Raw::connect(node.client_addr());
    raw.send(b"CONNECT {\"verbose\":false}\r\n");
    let started = Instant::now();
    assert!(
        raw.read_to_close(Duration::from_secs(10)),
        "closed as stale"
    );
    assert_eq!(raw.text(), "PING\r\nPING\r\n-ERR 'Stale Connection'\r\n");
    assert!(started.elapsed() >= Duration::from_millis(600));

    // A client that answers PINGs stays.
    let mut alive = Raw::connect(node.client_addr());
    alive.send(b"CONNECT {\"verbose\":false}\r\n");
    for _ in 0..4 {
        assert!(alive.read_until(b"PING\r\n", Duration::from_secs(5)));
        alive.received.clear();
        alive.send(b"PONG\r\n");
    }
    alive.send(b"PING\r\n");
    assert!(alive.read_until(b"PONG\r\n", Duration::from_secs(5)));
}

#[test]
fn max_connections_refuses_with_the_reference_error() {
    let mut config = test_config();
    config.max_connections = 2;
    let node = start(config);
    let _a = Raw::connect(node.client_addr());
    let _b = Raw::connect(node.client_addr());
    std::thread::sleep(Duration::from_millis(100));
    let mut c = Raw::connect(node.client_addr());
    assert!(c.read_to_close(Duration::from_secs(5)));
    assert_eq!(c.text(), "-ERR 'maximum connections exceeded'\r\n");
    drop(_a);
    std::thread::sleep(Duration::from_millis(200));
    let mut d = Raw::connect(node.client_addr());
    d.send(b"PING\r\n");
    assert!(d.read_until(b"PONG\r\n", Duration::from_secs(5)));
}

#[test]
fn max_subscriptions_is_an_error_that_keeps_the_connection() {
    let mut config = test_config();
    config.max_subscriptions = 2;
    let node = start(config);
    let mut raw = Raw::connect(node.client_addr());
    raw.send(b"CONNECT {\"verbose\":false}\r\nSUB a 1\r\nSUB b 2\r\nSUB c 3\r\nPING\r\n");
    assert!(raw.read_until(b"PONG\r\n", Duration::from_secs(5)));
    assert_eq!(
        raw.text(),
        "-ERR 'maximum subscriptions exceeded'\r\nPONG\r\n"
    );
}

/// A subscriber that never reads is cut off; a fast one on the same subject gets every
/// message; the publisher is never held back.
#[test]
fn slow_consumer_is_cut_off_while_a_fast_one_keeps_receiving() {
    let mut config = test_config();
    config.max_pending = Size(256 * 1024);
    config.max_payload = Size(64 * 1024);
    let node = start(config);

    let slow = TcpStream::connect(node.client_addr()).unwrap();
    let mut slow_raw = Raw {
        stream: slow,
        received: Vec::new(),
    };
    slow_raw.send(b"CONNECT {\"verbose\":false}\r\nSUB feed 1\r\nPING\r\n");
    assert!(slow_raw.read_until(b"PONG\r\n", Duration::from_secs(5)));

    let mut fast = Raw::connect(node.client_addr());
    fast.send(b"CONNECT {\"verbose\":false}\r\nSUB feed 1\r\nPING\r\n");
    assert!(fast.read_until(b"PONG\r\n", Duration::from_secs(5)));
    fast.received.clear();
    let progress = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let fast_progress = progress.clone();
    let fast_reader = std::thread::spawn(move || {
        // 20,000 messages of 1 KiB (more than socket buffers hold): count them all.
        use std::io::Read;
        const NEEDLE: &[u8] = b"MSG feed ";
        let mut count = 0;
        let mut carry: Vec<u8> = Vec::new();
        let mut buf = vec![0u8; 256 * 1024];
        let deadline = Instant::now() + Duration::from_secs(60);
        fast.stream
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        while count < 20_000 && Instant::now() < deadline {
            let n = match fast.stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(_) => continue,
            };
            carry.extend_from_slice(&buf[..n]);
            count += carry.windows(NEEDLE.len()).filter(|w| *w == NEEDLE).count();
            fast_progress.store(count, std::sync::atomic::Ordering::Relaxed);
            let keep = carry.len().saturating_sub(NEEDLE.len() - 1);
            carry.drain(..keep);
        }
        count
    });

    let mut publisher = Raw::connect(node.client_addr());
    publisher.send(b"CONNECT {\"verbose\":false}\r\n");
    let payload = vec![b'x'; 1024];
    let mut frame = b"PUB feed 1024\r\n".to_vec();
    frame.extend_from_slice(&payload);
    frame.extend_from_slice(b"\r\n");
    let started = Instant::now();
    // The publisher stays within 100 messages of the fast subscriber (so only the
    // slow one falls behind), and is never held back by the slow one.
    for i in 0..20_000 {
        publisher.stream.write_all(&frame).unwrap();
        while i - progress.load(std::sync::atomic::Ordering::Relaxed).min(i) > 100 {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the fast subscriber stalled after {i} messages"
            );
            std::thread::sleep(Duration::from_micros(100));
        }
    }
    publisher.send(b"PING\r\n");
    assert!(publisher.read_until(b"PONG\r\n", Duration::from_secs(10)));
    let publish_time = started.elapsed();

    assert_eq!(
        fast_reader.join().unwrap(),
        20_000,
        "the fast subscriber got everything"
    );
    // The slow one was closed: reading now drains what was sent, then EOF.
    assert!(
        slow_raw.read_to_close(Duration::from_secs(15)),
        "slow consumer closed"
    );
    assert!(
        node.stats()
            .slow_consumers
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    );
    assert!(publish_time < Duration::from_secs(60));
}

#[test]
fn bare_cr_and_garbage_never_take_the_node_down() {
    let node = start(test_config());
    let inputs: [&[u8]; 6] = [
        b"PUB\rfoo 1\r\nx\r\n",
        b"\r\n\r\n",
        b"\x00\x01\x02\xff\r\n",
        b"SUB foo\r1\r\nPING\r\n",
        b"PUB foo 99999999999999999999999\r\n",
        b"HPUB foo 18446744073709551615 18446744073709551615\r\n",
    ];
    for input in inputs {
        let mut raw = Raw::connect(node.client_addr());
        raw.send(input);
        raw.read_to_close(Duration::from_millis(500));
    }
    let mut ok = Raw::connect(node.client_addr());
    ok.send(b"CONNECT {\"verbose\":false}\r\nSUB x 1\r\nPUB x 2\r\nok\r\nPING\r\n");
    assert!(ok.read_until(b"PONG\r\n", Duration::from_secs(5)));
    assert!(contains(&ok.received, b"MSG x 1 2\r\nok\r\n"));
}

#[test]
fn lame_duck_tells_clients_and_stops_accepting() {
    let mut config = test_config();
    config.lame_duck_grace_period = Dur(Duration::from_millis(300));
    config.lame_duck_duration = Dur(Duration::from_millis(300));
    let node = start(config);
    let addr = node.client_addr();
    let mut raw = TcpStream::connect(addr)
        .map(|stream| Raw {
            stream,
            received: Vec::new(),
        })
        .unwrap();
    raw.send(b"CONNECT {\"verbose\":false,\"protocol\":1}\r\nPING\r\n");
    assert!(raw.read_until(b"PONG\r\n", Duration::from_secs(5)));
    raw.received.clear();

    let started = Instant::now();
    let stopper = std::thread::spawn(move || node.lame_duck());
    assert!(
        raw.read_until(b"\"ldm\":true", Duration::from_secs(5)),
        "INFO with ldm"
    );
    assert!(
        raw.read_to_close(Duration::from_secs(5)),
        "closed after the grace period"
    );
    assert!(started.elapsed() >= Duration::from_millis(250));
    stopper.join().unwrap();
    assert!(TcpStream::connect(addr).is_err(), "no longer accepting");
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

/// A stopped node releases its sockets and tasks (embedders start and stop nodes).
#[test]
fn stopped_nodes_release_their_sockets() {
    // Warm up whatever the process allocates once.
    start(test_config()).shutdown();
    let before = open_fds();
    for _ in 0..20 {
        let node = start(test_config());
        let mut raw = Raw::connect(node.client_addr());
        raw.send(b"CONNECT {\"verbose\":false}\r\nSUB x 1\r\nPING\r\n");
        assert!(raw.read_until(b"PONG\r\n", Duration::from_secs(5)));
        node.shutdown();
        assert!(raw.read_to_close(Duration::from_secs(5)));
    }
    let after = open_fds();
    assert!(after <= before + 2, "fds before {before}, after {after}");
}

/// Clients such as nats-py read the first line after CONNECT+PING as the PONG; the
/// INFO with `connect_info` must follow it, however the two arrive.
#[test]
fn pong_comes_before_the_connect_info() {
    let node = start(test_config());
    let mut raw = Raw::connect(node.client_addr());
    raw.send(b"CONNECT {\"verbose\":false,\"protocol\":1}\r\n");
    std::thread::sleep(Duration::from_millis(100));
    raw.send(b"PING\r\n");
    assert!(raw.read_until(b"\"connect_info\":true", Duration::from_secs(5)));
    assert!(raw.text().starts_with("PONG\r\nINFO {"), "{}", raw.text());
    // Only once.
    raw.received.clear();
    raw.send(b"PING\r\n");
    assert!(raw.read_until(b"PONG\r\n", Duration::from_secs(5)));
    std::thread::sleep(Duration::from_millis(100));
    raw.read_until(b"INFO", Duration::from_millis(100));
    assert_eq!(raw.text(), "PONG\r\n");
}
