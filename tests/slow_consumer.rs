//! A subscriber that falls behind for a moment keeps its connection and every message
//! (the publisher is held back, as by the reference's producer stall); one that is
//! truly stuck is still cut off, logged with the reference's line and counted.
//!
//! The pause test runs the same load against the meshbroker binary and against
//! nats-server 2.15.1 with the same limits.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::process::run_node;
use common::{http_get, start_reference, Raw};

const SUBJECT: &str = "feed";
const PAYLOAD: usize = 128;
/// `MSG feed 1 128\r\n` + payload + `\r\n`.
const MSG_LEN: usize = 16 + PAYLOAD + 2;

/// What a subscriber got from a fast publisher while it stopped reading once.
#[derive(Debug)]
struct Outcome {
    received: usize,
    closed: bool,
}

/// One publisher sends `total` messages as fast as the server takes them; the
/// subscriber reads the first `pause_after`, stops reading for `pause`, then reads on.
fn paused_subscriber(
    addr: SocketAddr,
    total: usize,
    pause_after: usize,
    pause: Duration,
) -> Outcome {
    let mut sub = Raw::connect(addr);
    sub.send(format!("CONNECT {{\"verbose\":false}}\r\nSUB {SUBJECT} 1\r\nPING\r\n").as_bytes());
    assert!(sub.read_until(b"PONG\r\n", Duration::from_secs(10)));
    let pong_at = sub
        .received
        .windows(6)
        .position(|w| w == b"PONG\r\n")
        .expect("pong");
    let early = sub.received.len() - (pong_at + 6);
    let mut stream = sub.stream;

    let publisher = std::thread::spawn(move || {
        let mut publisher = Raw::connect(addr);
        publisher.send(b"CONNECT {\"verbose\":false}\r\n");
        let mut frame = format!("PUB {SUBJECT} {PAYLOAD}\r\n").into_bytes();
        frame.extend(std::iter::repeat_n(b'x', PAYLOAD));
        frame.extend_from_slice(b"\r\n");
        const BATCH: usize = 1000;
        let batch: Vec<u8> = frame.repeat(BATCH);
        let mut sent = 0;
        while sent < total {
            let n = BATCH.min(total - sent);
            if publisher
                .stream
                .write_all(&batch[..n * frame.len()])
                .is_err()
            {
                return sent;
            }
            sent += n;
        }
        publisher.send(b"PING\r\n");
        assert!(publisher.read_until(b"PONG\r\n", Duration::from_secs(60)));
        sent
    });

    let want = total * MSG_LEN;
    let mut got = early;
    let mut paused = false;
    let mut closed = false;
    let mut buf = vec![0u8; 256 * 1024];
    let deadline = Instant::now() + Duration::from_secs(120);
    stream
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    while got < want && Instant::now() < deadline {
        if !paused && got >= pause_after * MSG_LEN {
            paused = true;
            std::thread::sleep(pause);
        }
        match stream.read(&mut buf) {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(n) => got += n,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => {
                closed = true;
                break;
            }
        }
    }
    if !closed {
        // Still open? A PING answered says so.
        closed = stream.write_all(b"PING\r\n").is_err();
    }
    let sent = publisher.join().expect("publisher");
    assert_eq!(sent, total, "the publisher got everything out");
    Outcome {
        received: got / MSG_LEN,
        closed,
    }
}

/// The load, scaled for a debug build: 1,200,000 messages of 128 B, a
/// subscriber that stops reading for two seconds after 50,000 (the issue measured
/// 600,000 and half a second against a release build). Without the producer stall the
/// node queued the publisher's burst until `max_pending` (64 MiB) and cut the
/// subscriber; nats-server keeps it.
#[test]
fn a_subscriber_that_pauses_keeps_its_connection_and_every_message() {
    let total = 1_200_000;
    let pause = Duration::from_secs(2);
    let (node, addr, _dir) = run_node("pause", "log_level = \"info\"\n");
    let ours = paused_subscriber(addr, total, 50_000, pause);
    let log = node.log_so_far();
    assert!(
        !log.contains("Slow Consumer"),
        "no subscriber was cut: {log}"
    );
    assert_eq!(ours.received, total, "{ours:?}");
    assert!(!ours.closed, "{ours:?}");
    if let Some((_reference, reference)) = start_reference(&[]) {
        let theirs = paused_subscriber(reference, total, 50_000, pause);
        assert_eq!(theirs.received, total, "nats-server: {theirs:?}");
        assert!(!theirs.closed, "nats-server: {theirs:?}");
    }
}

/// A subscriber that never reads again is still cut: by `max_pending` (the publisher
/// is held back only a few milliseconds per read), with the reference's log line,
/// counted in `/varz` and `/metrics`.
#[test]
fn a_stuck_subscriber_is_cut_at_max_pending_logged_and_counted() {
    let (node, addr, _dir) = run_node(
        "stuck-pending",
        "log_level = \"info\"\nmax_pending = \"2MiB\"\n[monitor]\nlisten = \"127.0.0.1:0\"\n",
    );
    let monitor = monitor_addr(&node);
    let mut stuck = Raw::connect(addr);
    stuck.send(format!("CONNECT {{\"verbose\":false}}\r\nSUB {SUBJECT} 1\r\nPING\r\n").as_bytes());
    assert!(stuck.read_until(b"PONG\r\n", Duration::from_secs(10)));
    let started = Instant::now();
    let publisher = flood(addr, 200_000);
    assert!(
        node.wait_for_log(
            "Slow Consumer Detected: MaxPending of 2097152 Exceeded",
            Duration::from_secs(60)
        ),
        "{}",
        node.log_so_far()
    );
    let cut_after = started.elapsed();
    assert_eq!(publisher.join().expect("publisher"), 200_000);
    let varz: serde_json::Value = serde_json::from_slice(&http_get(monitor, "/varz").2).unwrap();
    assert_eq!(varz["slow_consumers"], 1, "{varz}");
    assert_eq!(varz["slow_consumer_stats"]["clients"], 1, "{varz}");
    assert!(varz["stalled_clients"].as_u64().unwrap_or(0) >= 1, "{varz}");
    let metrics = String::from_utf8(http_get(monitor, "/metrics").2).unwrap();
    assert!(
        metrics.contains("meshbroker_slow_consumers_total 1"),
        "{metrics}"
    );
    assert!(
        stuck.read_to_close(Duration::from_secs(10)),
        "the stuck one is closed"
    );
    assert!(
        cut_after < Duration::from_secs(30),
        "cut after {cut_after:?}"
    );
}

/// A subscriber whose socket takes no bytes for `write_deadline` is cut by the
/// deadline, before `max_pending` is reached, with the reference's line.
#[test]
fn a_stuck_subscriber_is_cut_at_the_write_deadline() {
    let (node, addr, _dir) = run_node(
        "stuck-deadline",
        "log_level = \"info\"\nwrite_deadline = \"1s\"\n[monitor]\nlisten = \"127.0.0.1:0\"\n",
    );
    let monitor = monitor_addr(&node);
    let mut stuck = Raw::connect(addr);
    stuck.send(format!("CONNECT {{\"verbose\":false}}\r\nSUB {SUBJECT} 1\r\nPING\r\n").as_bytes());
    assert!(stuck.read_until(b"PONG\r\n", Duration::from_secs(10)));
    let publisher = flood(addr, 300_000);
    assert!(
        node.wait_for_log(
            "Slow Consumer Detected: WriteDeadline of 1s exceeded with",
            Duration::from_secs(60)
        ),
        "{}",
        node.log_so_far()
    );
    assert_eq!(publisher.join().expect("publisher"), 300_000);
    let varz: serde_json::Value = serde_json::from_slice(&http_get(monitor, "/varz").2).unwrap();
    assert_eq!(varz["slow_consumers"], 1, "{varz}");
    assert!(
        stuck.read_to_close(Duration::from_secs(10)),
        "the stuck one is closed"
    );
}

/// A publisher of `total` messages on its own thread; returns how many it sent.
fn flood(addr: SocketAddr, total: usize) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        let mut publisher = TcpStream::connect(addr).expect("connect");
        publisher
            .write_all(b"CONNECT {\"verbose\":false}\r\n")
            .expect("connect");
        let mut frame = format!("PUB {SUBJECT} {PAYLOAD}\r\n").into_bytes();
        frame.extend(std::iter::repeat_n(b'x', PAYLOAD));
        frame.extend_from_slice(b"\r\n");
        let batch = frame.repeat(1000);
        let mut sent = 0;
        while sent < total && publisher.write_all(&batch).is_ok() {
            sent += 1000;
        }
        sent
    })
}

/// The monitoring address the node logged.
fn monitor_addr(node: &common::process::RunningNode) -> SocketAddr {
    assert!(node.wait_for_log("monitoring endpoint on http://", Duration::from_secs(10)));
    node.log_so_far()
        .lines()
        .find_map(|l| l.split("monitoring endpoint on http://").nth(1))
        .and_then(|a| a.trim().parse().ok())
        .expect("monitor address")
}
