//! Hostile clients against a running node, while a well-behaved publisher and
//! subscriber exchange numbered messages: each hostile one is cut off or contained the
//! way the reference does it, and the good subscriber gets every message, in order.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use meshbroker::config::{Dur, Size};

use common::{start, test_config, Raw};

/// Answers any PING waiting on `raw` (a client that only writes or only reads still
/// has to, or the server takes it for stale).
fn answer_pings(raw: &mut Raw) {
    raw.stream.set_nonblocking(true).unwrap();
    let mut chunk = [0u8; 4096];
    while let Ok(n) = raw.stream.read(&mut chunk) {
        if n == 0 {
            break;
        }
        raw.received.extend_from_slice(&chunk[..n]);
    }
    raw.stream.set_nonblocking(false).unwrap();
    while let Some(pos) = raw.received.windows(6).position(|w| w == b"PING\r\n") {
        raw.received.drain(..pos + 6);
        raw.stream.write_all(b"PONG\r\n").unwrap();
    }
}

/// The size every good message is padded to, so the volume overflows socket buffers.
const GOOD_SIZE: usize = 512;

/// A publisher and a subscriber that check every message; returns how many arrived.
/// The publisher stays within a window of the subscriber, so a busy machine slows
/// the pair down instead of making the good subscriber a slow consumer.
fn well_behaved(addr: std::net::SocketAddr, stop: Arc<AtomicBool>, sent: Arc<AtomicU64>) -> u64 {
    let mut sub = Raw::connect(addr);
    sub.send(b"CONNECT {\"verbose\":false}\r\nSUB good 1\r\nPING\r\n");
    assert!(sub.read_until(b"PONG\r\n", Duration::from_secs(5)));
    sub.received.clear();
    let received = Arc::new(AtomicU64::new(0));
    let mut publisher = Raw::connect(addr);
    publisher.send(b"CONNECT {\"verbose\":false}\r\n");
    let writer = {
        let received = received.clone();
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                while n.saturating_sub(received.load(Ordering::Relaxed)) > 200 {
                    std::thread::sleep(Duration::from_millis(1));
                    answer_pings(&mut publisher);
                }
                let body = format!("{n:0>GOOD_SIZE$}");
                let frame = format!("PUB good {}\r\n{}\r\n", body.len(), body);
                publisher.stream.write_all(frame.as_bytes()).unwrap();
                n += 1;
                sent.store(n, Ordering::Relaxed);
                if n % 100 == 0 {
                    answer_pings(&mut publisher);
                }
            }
            publisher.send(b"PING\r\n");
            assert!(publisher.read_until(b"PONG\r\n", Duration::from_secs(10)));
            n
        })
    };
    // Read while the publisher writes, checking the sequence; once it has stopped,
    // read until its last message.
    let mut total_sent = u64::MAX;
    let mut writer = Some(writer);
    let mut deadline = Instant::now() + Duration::from_secs(120);
    let mut expected = 0u64;
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 65536];
    sub.stream
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    loop {
        if writer.as_ref().is_some_and(|w| w.is_finished()) {
            total_sent = writer.take().unwrap().join().unwrap();
            deadline = Instant::now() + Duration::from_secs(30);
        }
        if expected >= total_sent || Instant::now() > deadline {
            break;
        }
        if let Ok(n) = sub.stream.read(&mut chunk) {
            assert!(
                n > 0,
                "the good subscriber was disconnected after {expected} messages; it last read {:?}",
                String::from_utf8_lossy(&buf[buf.len().saturating_sub(200)..])
            );
            buf.extend_from_slice(&chunk[..n]);
        }
        // Consume complete `MSG good 1 <len>\r\n<n>\r\n` frames.
        while let Some(line_end) = buf.windows(2).position(|w| w == b"\r\n") {
            let line = String::from_utf8_lossy(&buf[..line_end]).into_owned();
            if line == "PING" {
                // A reader that only reads is idle to the server: answer its PINGs.
                sub.stream.write_all(b"PONG\r\n").unwrap();
                buf.drain(..line_end + 2);
                continue;
            }
            let len: usize = line
                .rsplit(' ')
                .next()
                .and_then(|l| l.parse().ok())
                .unwrap_or_else(|| panic!("unexpected line {line:?}"));
            if buf.len() < line_end + 2 + len + 2 {
                break;
            }
            let body = String::from_utf8_lossy(&buf[line_end + 2..line_end + 2 + len]).into_owned();
            assert_eq!(
                body,
                format!("{expected:0>GOOD_SIZE$}"),
                "message out of order or lost"
            );
            expected += 1;
            received.store(expected, Ordering::Relaxed);
            buf.drain(..line_end + 2 + len + 2);
        }
    }
    assert_eq!(expected, total_sent, "the good subscriber missed messages");
    expected
}

#[test]
fn hostile_clients_are_contained_and_good_traffic_flows() {
    let mut config = test_config();
    // Short enough that a silent client goes stale within the test, long enough that
    // the good pair (which answers PINGs as it reads and writes) never does on a
    // loaded 2-core machine (CI saw both closed with 1 s while other tests ran).
    config.ping_interval = Dur(Duration::from_secs(2));
    config.max_pending = Size(1024 * 1024);
    let node = start(config);
    let addr = node.client_addr();
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let good = {
        let (stop, sent) = (stop.clone(), sent.clone());
        std::thread::spawn(move || well_behaved(addr, stop, sent))
    };

    std::thread::scope(|scope| {
        // Garbage: the reference's error, then closed.
        scope.spawn(|| {
            let mut raw = Raw::connect(addr);
            raw.send(b"\x16\x03\x01\x02\x00GET / HTTP/1.1\r\n\r\n");
            assert!(raw.read_to_close(Duration::from_secs(5)));
            assert_eq!(raw.text(), "-ERR 'Unknown Protocol Operation'\r\n");
        });
        // Connects and never sends CONNECT (nor answers PINGs): stale, closed.
        scope.spawn(|| {
            let mut raw = Raw::connect(addr);
            assert!(
                raw.read_to_close(Duration::from_secs(20)),
                "silent client closed"
            );
            assert!(
                raw.text().ends_with("-ERR 'Stale Connection'\r\n"),
                "{}",
                raw.text()
            );
        });
        // A control line of 1 MiB: cut off at the limit, not after reading it all.
        scope.spawn(|| {
            let mut raw = Raw::connect(addr);
            let mut line = b"SUB ".to_vec();
            line.extend(std::iter::repeat_n(b'a', 1024 * 1024));
            let _ = raw.stream.write_all(&line); // may fail once the server has closed
            assert!(raw.read_to_close(Duration::from_secs(10)));
            assert_eq!(raw.text(), "-ERR 'maximum control line exceeded'\r\n");
        });
        // 100,000 subscriptions: accepted (no limit configured), the node answers.
        scope.spawn(|| {
            let mut raw = Raw::connect(addr);
            let mut subs = b"CONNECT {\"verbose\":false}\r\n".to_vec();
            for i in 0..100_000 {
                subs.extend_from_slice(format!("SUB hostile.{i} {i}\r\n").as_bytes());
            }
            subs.extend_from_slice(b"PING\r\n");
            raw.send(&subs);
            assert!(raw.read_until(b"PONG\r\n", Duration::from_secs(30)));
        });
        // Subscribes to the good subject and never reads: cut off as a slow consumer.
        scope.spawn(|| {
            let mut raw = Raw::connect(addr);
            raw.send(b"CONNECT {\"verbose\":false}\r\nSUB good 1\r\nSUB good 2\r\nSUB good 3\r\nPING\r\n");
            assert!(raw.read_until(b"PONG\r\n", Duration::from_secs(5)));
            let started = Instant::now();
            while node.stats().slow_consumers.load(Ordering::Relaxed) == 0 {
                assert!(started.elapsed() < Duration::from_secs(60), "never cut off");
                std::thread::sleep(Duration::from_millis(50));
            }
            assert!(raw.read_to_close(Duration::from_secs(20)));
        });
        // Trickles a byte at a time: slow but correct, and harmless to others.
        scope.spawn(|| {
            let mut raw = Raw::connect(addr);
            for b in b"CONNECT {\"verbose\":false}\r\nPING\r\n" {
                raw.send(&[*b]);
                std::thread::sleep(Duration::from_millis(20));
            }
            assert!(raw.read_until(b"PONG\r\n", Duration::from_secs(5)));
        });
    });

    // Keep the good traffic going a little past the hostile phase, then check it.
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let delivered = good.join().unwrap();
    assert!(
        delivered > 1000,
        "good traffic too small to mean anything: {delivered}"
    );
    assert_eq!(delivered, sent.load(Ordering::Relaxed));
    // And the node still takes new clients.
    let mut raw = TcpStream::connect(addr)
        .map(|stream| Raw {
            stream,
            received: Vec::new(),
        })
        .unwrap();
    raw.send(b"PING\r\n");
    assert!(raw.read_until(b"PONG\r\n", Duration::from_secs(5)));
}
