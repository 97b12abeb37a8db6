//! The route protocol against the reference: this test plays a cluster node toward a
//! real nats-server with raw bytes, using meshbroker's route parser and encoders
//! (`meshbroker::proto::route`). It checks that we read what nats-server sends on a
//! route (INFO, RS+, RMSG, HMSG) and that it accepts and acts on what we send.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::{free_port, start_reference, wait_for_port, Raw};
use meshbroker::proto::route::{self, Parsed, RouteConnect, RouteInfo, RouteOp, RouteParser};

const WAIT: Duration = Duration::from_secs(10);

/// Our side of a route: raw socket, route parser, owned copies of what arrived.
struct Peer {
    stream: TcpStream,
    buf: Vec<u8>,
    /// Everything received so far, in order (the reference interleaves its own
    /// `$SYS` interest with the lines a test waits for).
    history: Vec<Got>,
}

/// An operation received, owned.
#[derive(Debug, Clone, PartialEq)]
enum Got {
    Info(RouteInfo),
    Sub(String, String, Option<(String, u32)>),
    Unsub(String, String, Option<String>),
    Msg {
        subject: String,
        reply: Option<String>,
        queues: Vec<String>,
        headers: Option<usize>,
        data: Vec<u8>,
    },
    Ping,
    Pong,
    Err(String),
    Other,
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

impl Peer {
    fn connect(addr: std::net::SocketAddr) -> Peer {
        let stream = TcpStream::connect(addr).expect("route port");
        stream
            .set_read_timeout(Some(Duration::from_millis(200)))
            .ok();
        Peer {
            stream,
            buf: Vec::new(),
            history: Vec::new(),
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send");
    }

    /// The next operation, answering PINGs; `None` when the peer closed or the time
    /// is up.
    fn next(&mut self, limit: Duration) -> Option<Got> {
        let parser = RouteParser::new(4096, 1 << 20);
        let deadline = Instant::now() + limit;
        loop {
            match parser
                .parse(&self.buf)
                .expect("nats-server speaks the route protocol")
            {
                Parsed::Op(op, n) => {
                    let got = match op {
                        RouteOp::Info(json) => {
                            Got::Info(serde_json::from_slice(json).expect("route INFO"))
                        }
                        RouteOp::Sub {
                            account,
                            subject,
                            queue,
                        } => Got::Sub(
                            text(account),
                            text(subject),
                            queue.map(|(q, w)| (text(q), w)),
                        ),
                        RouteOp::Unsub {
                            account,
                            subject,
                            queue,
                        } => Got::Unsub(text(account), text(subject), queue.map(text)),
                        RouteOp::Msg(m) => Got::Msg {
                            subject: text(m.subject),
                            reply: m.reply.map(text),
                            queues: m.queues().map(text).collect(),
                            headers: m.headers,
                            data: m.data.to_vec(),
                        },
                        RouteOp::Ping => Got::Ping,
                        RouteOp::Pong => Got::Pong,
                        RouteOp::Err(e) => Got::Err(text(e)),
                        RouteOp::Ok | RouteOp::Connect(_) => Got::Other,
                    };
                    self.buf.drain(..n);
                    if got == Got::Ping {
                        self.send(b"PONG\r\n");
                        continue;
                    }
                    return Some(got);
                }
                Parsed::Incomplete { .. } => {
                    if Instant::now() > deadline {
                        return None;
                    }
                    let mut chunk = [0u8; 65536];
                    match self.stream.read(&mut chunk) {
                        Ok(0) => return None,
                        Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                        Err(_) => {}
                    }
                }
            }
        }
    }

    /// Waits until `count` received operations satisfy `want` (counting what came
    /// before the call too); returns everything received.
    fn expect_n(&mut self, count: usize, want: impl Fn(&Got) -> bool) -> &[Got] {
        let deadline = Instant::now() + WAIT;
        while self.history.iter().filter(|g| want(g)).count() < count {
            assert!(
                Instant::now() < deadline,
                "not seen; got {:?}",
                self.history
            );
            if let Some(got) = self.next(Duration::from_millis(500)) {
                self.history.push(got);
            }
        }
        &self.history
    }

    fn expect(&mut self, want: impl Fn(&Got) -> bool) -> &[Got] {
        self.expect_n(1, want)
    }
}

fn handshake(peer: &mut Peer, cluster: &str) -> RouteInfo {
    let Some(Got::Info(info)) = peer.next(WAIT) else {
        panic!("nats-server opens a route with INFO");
    };
    let connect = RouteConnect {
        name: "NMESHBROKERROUTETEST".into(),
        cluster: cluster.into(),
        ..RouteConnect::default()
    };
    let ours = RouteInfo {
        server_id: "NMESHBROKERROUTETEST".into(),
        server_name: "meshbroker-test".into(),
        version: "2.15.1".into(),
        proto: route::ROUTE_PROTO,
        host: "127.0.0.1".into(),
        port: 1,
        headers: true,
        max_payload: 1 << 20,
        cluster: cluster.into(),
        ..RouteInfo::default()
    };
    let mut hello = Vec::new();
    hello.extend_from_slice(b"CONNECT ");
    hello.extend_from_slice(&serde_json::to_vec(&connect).unwrap());
    hello.extend_from_slice(b"\r\nINFO ");
    hello.extend_from_slice(&serde_json::to_vec(&ours).unwrap());
    hello.extend_from_slice(b"\r\nPING\r\n");
    peer.send(&hello);
    info
}

/// nats-server with a cluster listener (cluster `c1`): the process, its client address
/// and its route address.
fn reference_cluster() -> Option<(common::Child, SocketAddr, SocketAddr)> {
    let cluster_port = free_port();
    let (child, client_addr) = start_reference(&[
        "--cluster",
        &format!("nats://127.0.0.1:{cluster_port}"),
        "--cluster_name",
        "c1",
    ])?;
    let route_addr: SocketAddr = format!("127.0.0.1:{cluster_port}").parse().unwrap();
    assert!(wait_for_port(route_addr, WAIT));
    Some((child, client_addr, route_addr))
}

#[test]
fn our_route_codec_talks_to_nats_server() {
    let Some((_reference, client_addr, route_addr)) = reference_cluster() else {
        return;
    };

    // A client of the reference, subscribed before the route exists.
    let mut client = Raw::connect(client_addr);
    client.send(b"CONNECT {\"verbose\":false,\"headers\":true}\r\nSUB orders.> 1\r\nSUB jobs workers 2\r\nPING\r\n");
    assert!(client.read_until(b"PONG\r\n", WAIT));
    client.received.clear();

    let mut peer = Peer::connect(route_addr);
    let info = handshake(&mut peer, "c1");
    assert_eq!(info.cluster, "c1");
    assert!(info.headers);
    // Its interest, in our parser's terms.
    peer.expect(|g| *g == Got::Sub("$G".into(), "orders.>".into(), None));
    peer.expect(|g| *g == Got::Sub("$G".into(), "jobs".into(), Some(("workers".into(), 1))));

    // Our interest: its client's messages come to us as RMSG / HMSG.
    let mut sub = Vec::new();
    route::write_sub(&mut sub, b"$G", b"from.route", None);
    sub.extend_from_slice(b"PING\r\n");
    peer.send(&sub);
    // The second PONG (the first answered the handshake): our RS+ is in effect.
    peer.expect_n(2, |g| *g == Got::Pong);
    client.send(
        b"PUB from.route _INBOX.r 5\r\nhello\r\nHPUB from.route 12 14\r\nNATS/1.0\r\n\r\nhi\r\n",
    );
    peer.expect(|g| {
        *g == Got::Msg {
            subject: "from.route".into(),
            reply: Some("_INBOX.r".into()),
            queues: vec![],
            headers: None,
            data: b"hello".to_vec(),
        }
    });
    peer.expect(|g| {
        *g == Got::Msg {
            subject: "from.route".into(),
            reply: None,
            queues: vec![],
            headers: Some(12),
            data: b"NATS/1.0\r\n\r\nhi".to_vec(),
        }
    });

    // Messages we route reach its client: plain, and for its queue member.
    let mut msgs = Vec::new();
    route::write_msg(
        &mut msgs,
        b"$G",
        b"orders.new",
        None,
        [b""; 0],
        None,
        b"order",
    );
    route::write_msg(
        &mut msgs,
        b"$G",
        b"jobs",
        Some(b"_INBOX.j"),
        [b"workers"],
        None,
        b"job",
    );
    // Without a queue list a queue subscriber gets nothing.
    route::write_msg(&mut msgs, b"$G", b"jobs", None, [b""; 0], None, b"nobody");
    peer.send(&msgs);
    assert!(client.read_until(b"job\r\n", WAIT), "{}", client.text());
    client.send(b"PING\r\n");
    assert!(client.read_until(b"PONG\r\n", WAIT));
    assert_eq!(
        client.text(),
        "MSG orders.new 1 5\r\norder\r\nMSG jobs 2 _INBOX.j 3\r\njob\r\nPONG\r\n"
    );

    // Interest going away.
    client.send(b"UNSUB 1\r\n");
    peer.expect(|g| *g == Got::Unsub("$G".into(), "orders.>".into(), None));
}

#[test]
fn nats_server_refuses_another_cluster_name() {
    let Some((_reference, _, route_addr)) = reference_cluster() else {
        return;
    };
    let mut peer = Peer::connect(route_addr);
    handshake(&mut peer, "other");
    let seen = peer.expect(|g| matches!(g, Got::Err(_)));
    assert_eq!(
        seen.iter().find(|g| matches!(g, Got::Err(_))),
        Some(&Got::Err(
            "'Rejecting connection, cluster name \"other\" does not match \"c1\"'".into()
        ))
    );
    assert_eq!(peer.next(WAIT), None, "then closed");
}
