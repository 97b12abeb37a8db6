//! Cluster routes between in-process nodes on loopback (no mesh): routes form from
//! configured seeds and gossip, messages and queue groups cross them as the reference's
//! do, duplicates settle, a stopped node is dropped and comes back, and a node without
//! the secret, from another cluster, or with a certificate from another CA never
//! becomes a route. Clients are async-nats; one test clusters with nats-server itself.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use futures::StreamExt;
use meshbroker::{Config, Node};

use common::certs::TestCa;
use common::{start, test_config, TempDir};

const SECRET: &str = "a-cluster-secret-for-tests";

fn cluster_config(name: &str, routes: &[String]) -> Config {
    let mut config = test_config();
    config.server_name = Some(name.to_string());
    config.cluster.name = Some("c1".into());
    config.cluster.listen = Some("127.0.0.1:0".into());
    config.cluster.routes = routes.to_vec();
    config
}

fn route_to(node: &Node) -> String {
    format!(
        "nats-route://{}",
        node.cluster_addr().expect("cluster listener")
    )
}

/// Waits until every node has a route to every other one.
fn wait_full_mesh(nodes: &[&Node], limit: Duration) -> Duration {
    let started = Instant::now();
    let want = nodes.len() - 1;
    loop {
        let counts: Vec<usize> = nodes.iter().map(|n| n.routes().len()).collect();
        if counts.iter().all(|&c| c == want) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "no full mesh after {limit:?}: routes per node {counts:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until a message published on `node` to `subject` reaches the node named
/// `from` (as plain interest, or a queue group with at least `weight` members there).
fn wait_interest(node: &Node, from: &str, subject: &str, queue: Option<(&str, u32)>) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let Some(route) = node.routes().into_iter().find(|r| r.remote_name == from) else {
            assert!(
                Instant::now() < deadline,
                "{} has no route to {from}",
                node.server_name()
            );
            std::thread::sleep(Duration::from_millis(10));
            continue;
        };
        let heard = node.remote_interest(subject);
        let found = heard.iter().any(|(rid, q, w)| {
            *rid == route.rid
                && match queue {
                    None => q.is_none(),
                    Some((name, weight)) => q.as_deref() == Some(name) && *w >= weight,
                }
        });
        if found {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} never heard {from}'s interest in {subject} {queue:?}: {heard:?}",
            node.server_name()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn three_nodes() -> (Node, Node, Node) {
    let n1 = start(cluster_config("n1", &[]));
    let seed = vec![route_to(&n1)];
    let n2 = start(cluster_config("n2", &seed));
    let n3 = start(cluster_config("n3", &seed));
    wait_full_mesh(&[&n1, &n2, &n3], Duration::from_secs(10));
    (n1, n2, n3)
}

async fn connect(node: &Node) -> async_nats::Client {
    async_nats::connect(node.client_url())
        .await
        .expect("connect")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_from_one_seed_form_a_full_mesh_and_deliver_everywhere() {
    let (n1, n2, n3) = three_nodes();
    let c1 = connect(&n1).await;
    let c2 = connect(&n2).await;
    let c3 = connect(&n3).await;
    let mut s2 = c2.subscribe("orders.>").await.unwrap();
    let mut s3 = c3.subscribe("orders.*").await.unwrap();
    // Two subscriptions on one node that both match: still one copy per node.
    let mut s3b = c3.subscribe("orders.new").await.unwrap();
    common::settle(&c2).await;
    common::settle(&c3).await;
    wait_interest(&n1, "n2", "orders.new", None);
    wait_interest(&n1, "n3", "orders.new", None);

    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Order-Id", "42");
    for i in 0..100 {
        c1.publish_with_headers("orders.new", headers.clone(), format!("{i}").into())
            .await
            .unwrap();
    }
    c1.flush().await.unwrap();
    for (name, sub) in [
        ("n2", &mut s2),
        ("n3 orders.*", &mut s3),
        ("n3 orders.new", &mut s3b),
    ] {
        for i in 0..100 {
            let msg = tokio::time::timeout(Duration::from_secs(5), sub.next())
                .await
                .unwrap_or_else(|_| panic!("{name}: message {i} did not arrive"))
                .unwrap();
            assert_eq!(msg.subject.as_str(), "orders.new");
            assert_eq!(msg.payload, format!("{i}").as_bytes(), "{name}: in order");
            let h = msg.headers.expect("headers cross the route");
            assert_eq!(h.get("Order-Id").map(|v| v.as_str()), Some("42"));
        }
    }
    // Nothing more: one copy per subscription, none duplicated by the two routes.
    for sub in [&mut s2, &mut s3, &mut s3b] {
        assert!(
            tokio::time::timeout(Duration::from_millis(300), sub.next())
                .await
                .is_err(),
            "a duplicate arrived"
        );
    }

    // Request/reply across nodes: the reply subject is an inbox on n1.
    let mut service = c3.subscribe("svc.echo").await.unwrap();
    common::settle(&c3).await;
    wait_interest(&n1, "n3", "svc.echo", None);
    let responder = tokio::spawn({
        let c3 = c3.clone();
        async move {
            while let Some(req) = service.next().await {
                if let Some(reply) = req.reply {
                    c3.publish(reply, req.payload).await.unwrap();
                }
            }
        }
    });
    let answer = tokio::time::timeout(
        Duration::from_secs(5),
        c1.request("svc.echo", "ping".into()),
    )
    .await
    .expect("request answered in time")
    .expect("request answered");
    assert_eq!(answer.payload, "ping".as_bytes());
    responder.abort();

    // No responders anywhere: the requester hears 503 from its own node.
    let none = c1.request("svc.nobody", "x".into()).await;
    assert!(
        matches!(
            none.as_ref().map_err(|e| e.kind()),
            Err(async_nats::RequestErrorKind::NoResponders)
        ),
        "{none:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_group_over_three_nodes_gets_each_message_once() {
    let (n1, n2, n3) = three_nodes();
    let clients = [connect(&n1).await, connect(&n2).await, connect(&n3).await];
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(usize, String)>();
    let mut tasks = Vec::new();
    for (i, client) in clients.iter().enumerate() {
        // Two members on each node.
        for _ in 0..2 {
            let mut sub = client
                .queue_subscribe("jobs", "workers".into())
                .await
                .unwrap();
            let tx = tx.clone();
            tasks.push(tokio::spawn(async move {
                while let Some(m) = sub.next().await {
                    let _ = tx.send((i, String::from_utf8_lossy(&m.payload).into_owned()));
                }
            }));
        }
        common::settle(client).await;
    }
    // Each node hears the group (weight 2) from the other two.
    for (node, others) in [
        (&n1, ["n2", "n3"]),
        (&n2, ["n1", "n3"]),
        (&n3, ["n1", "n2"]),
    ] {
        for other in others {
            wait_interest(node, other, "jobs", Some(("workers", 2)));
        }
    }
    let total = 600;
    for i in 0..total {
        // Published from every node in turn.
        clients[i % 3]
            .publish("jobs", format!("{i}").into())
            .await
            .unwrap();
    }
    for c in &clients {
        c.flush().await.unwrap();
    }
    let mut seen = HashSet::new();
    let mut per_node = [0usize; 3];
    while seen.len() < total {
        let (node, payload) = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap_or_else(|_| panic!("only {} of {total} jobs arrived", seen.len()))
            .unwrap();
        assert!(
            seen.insert(payload.clone()),
            "job {payload} delivered twice"
        );
        per_node[node] += 1;
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(500), rx.recv())
            .await
            .is_err(),
        "a job was delivered twice"
    );
    // Picks are spread by weight over all members: every node gets a share.
    assert!(
        per_node.iter().all(|&n| n > total / 10),
        "uneven spread {per_node:?}"
    );
    for t in tasks {
        t.abort();
    }
}

#[test]
fn a_stopped_node_is_dropped_and_rejoins() {
    let (n1, n2, n3) = three_nodes();
    let n3_cluster = n3.cluster_addr().unwrap();
    n3.shutdown();
    let started = Instant::now();
    while n1.routes().len() != 1 || n2.routes().len() != 1 {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "n3 still routed: {:?} {:?}",
            n1.routes().len(),
            n2.routes().len()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // It comes back on the same address (n1 and n2 redial it only if they knew it;
    // it knows its seed): the mesh is full again.
    let mut config = cluster_config("n3", &[route_to(&n1)]);
    config.cluster.listen = Some(n3_cluster.to_string());
    let n3 = start(config);
    wait_full_mesh(&[&n1, &n2, &n3], Duration::from_secs(10));
}

#[test]
fn nodes_that_dial_each_other_keep_one_route() {
    // Both know each other: both dial, and both keep the same single connection.
    let a_port = common::free_port();
    let b_port = common::free_port();
    let mut a = cluster_config("a", &[format!("127.0.0.1:{b_port}")]);
    a.cluster.listen = Some(format!("127.0.0.1:{a_port}"));
    let mut b = cluster_config("b", &[format!("127.0.0.1:{a_port}")]);
    b.cluster.listen = Some(format!("127.0.0.1:{b_port}"));
    let a = start(a);
    let b = start(b);
    wait_full_mesh(&[&a, &b], Duration::from_secs(10));
    // Stable: still exactly one route each a little later, the same connection.
    std::thread::sleep(Duration::from_millis(1500));
    let ra = a.routes();
    let rb = b.routes();
    assert_eq!((ra.len(), rb.len()), (1, 1));
    assert_ne!(
        ra[0].did_solicit, rb[0].did_solicit,
        "one side dialed the route both kept"
    );
}

/// Starts `node` with `bad` changes and checks it never becomes a route of `good`.
fn refused(good: &Node, bad: Config) {
    let bad = start(bad);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(good.routes().is_empty(), "{:?}", good.routes());
    assert!(bad.routes().is_empty(), "{:?}", bad.routes());
}

#[test]
fn a_node_with_the_wrong_secret_or_cluster_name_is_refused() {
    let mut config = cluster_config("good", &[]);
    config.cluster.secret = Some(meshbroker::config::Secret(SECRET.into()));
    let good = start(config);
    let seed = vec![route_to(&good)];

    let mut wrong = cluster_config("wrong-secret", &seed);
    wrong.cluster.secret = Some(meshbroker::config::Secret("not-the-cluster-secret".into()));
    refused(&good, wrong);

    let no_secret = cluster_config("no-secret", &seed);
    refused(&good, no_secret);

    let mut other = cluster_config("other-cluster", &seed);
    other.cluster.name = Some("c2".into());
    other.cluster.secret = Some(meshbroker::config::Secret(SECRET.into()));
    refused(&good, other);

    // The same secret and name: a route.
    let mut right = cluster_config("right", &seed);
    right.cluster.secret = Some(meshbroker::config::Secret(SECRET.into()));
    let right = start(right);
    wait_full_mesh(&[&good, &right], Duration::from_secs(10));
}

#[test]
fn a_certificate_from_another_ca_is_refused() {
    let dir = TempDir::new("cluster-tls");
    let ca = TestCa::new("cluster ca");
    let ca_file = ca.write(&dir.0, "ca.pem");
    let other_ca = TestCa::new("impostor ca");
    let with_tls = |name: &str, ca: &TestCa, ca_file: &std::path::Path, routes: &[String]| {
        let files = ca.leaf(&dir.0, name, &["localhost"]);
        let mut config = cluster_config(name, routes);
        config.cluster.secret = Some(meshbroker::config::Secret(SECRET.into()));
        config.cluster.cert_file = Some(files.cert);
        config.cluster.key_file = Some(files.key);
        config.cluster.ca_file = Some(ca_file.to_path_buf());
        config
    };
    let good = start(with_tls("good", &ca, &ca_file, &[]));
    let seed = vec![route_to(&good)];
    // Signed by another CA, trusting the real one: the acceptor refuses its certificate.
    refused(&good, with_tls("impostor", &other_ca, &ca_file, &seed));
    // Without TLS at all.
    let mut plain = cluster_config("plain", &seed);
    plain.cluster.secret = Some(meshbroker::config::Secret(SECRET.into()));
    refused(&good, plain);
    // A properly signed node: a route, and messages cross it.
    let right = start(with_tls("right", &ca, &ca_file, &seed));
    wait_full_mesh(&[&good, &right], Duration::from_secs(10));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let a = connect(&good).await;
        let b = connect(&right).await;
        let mut sub = b.subscribe("secure").await.unwrap();
        common::settle(&b).await;
        wait_interest(&good, "right", "secure", None);
        a.publish("secure", "over mutual TLS".into()).await.unwrap();
        let m = tokio::time::timeout(Duration::from_secs(5), sub.next())
            .await
            .expect("delivered over the TLS route")
            .unwrap();
        assert_eq!(m.payload, "over mutual TLS".as_bytes());
    });
}

/// A peer that sends garbage, an oversized message or lies about interest is cut off
/// (or contained); the node keeps serving its clients and its real routes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_peer_that_misbehaves_is_cut_off_and_the_node_keeps_serving() {
    let n1 = start(cluster_config("n1", &[]));
    let n2 = start(cluster_config("n2", &[route_to(&n1)]));
    wait_full_mesh(&[&n1, &n2], Duration::from_secs(10));
    let addr = n1.cluster_addr().unwrap();
    let handshake = |id: &str| {
        format!(
            "CONNECT {{\"name\":\"{id}\",\"cluster\":\"c1\"}}\r\nINFO {{\"server_id\":\"{id}\",\"server_name\":\"{id}\",\"cluster\":\"c1\"}}\r\n"
        )
    };
    // Garbage instead of a handshake.
    let mut raw = common::Raw::connect(addr);
    raw.send(b"HELLO THERE\r\n");
    assert!(raw.read_to_close(Duration::from_secs(5)), "closed");
    // A route whose message is over max_payload: -ERR, then closed.
    let mut raw = common::Raw::connect(addr);
    raw.send(handshake("NFAKE1").as_bytes());
    raw.send(b"RMSG $G foo 999999999\r\n");
    assert!(raw.read_to_close(Duration::from_secs(5)), "closed");
    assert!(raw.text().contains("-ERR"), "{}", raw.text());
    // A route that sends an unknown operation after the handshake: closed.
    let mut raw = common::Raw::connect(addr);
    raw.send(handshake("NFAKE2").as_bytes());
    raw.send(b"BOGUS op\r\n");
    assert!(raw.read_to_close(Duration::from_secs(5)), "closed");
    // Interest with a bad subject is ignored; an absurd queue weight is capped.
    let mut raw = common::Raw::connect(addr);
    raw.send(handshake("NFAKE3").as_bytes());
    raw.send(b"RS+ $G foo..bar\r\nRS+ $G ok.subject q 4000000000\r\nPING\r\n");
    assert!(raw.read_until(b"PONG", Duration::from_secs(5)));
    let heard = n1.remote_interest("ok.subject");
    assert_eq!(heard.len(), 1, "{heard:?}");
    assert_eq!(heard[0].2, 1024, "weight capped");
    assert!(n1.remote_interest("foo.bar").is_empty());
    // Through all of it, clients on both nodes talk over the real route.
    let c1 = connect(&n1).await;
    let c2 = connect(&n2).await;
    let mut sub = c2.subscribe("still.works").await.unwrap();
    common::settle(&c2).await;
    wait_interest(&n1, "n2", "still.works", None);
    c1.publish("still.works", "yes".into()).await.unwrap();
    let m = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .expect("delivered")
        .unwrap();
    assert_eq!(m.payload, "yes".as_bytes());
}

/// A peer that announces an inbox and sends a request in the same breath gets the
/// answer, however fast the responder: the node applies the interest before it hands
/// on the message (a JetStream actor answers within microseconds, before an interest
/// change still on its way to the router would be visible; the reply was then lost).
#[test]
fn interest_announced_before_a_request_is_in_place_for_its_answer() {
    let dir = TempDir::new("route-order");
    let mut config = common::jetstream_config(&dir);
    config.server_name = Some("n1".into());
    config.cluster.name = Some("c1".into());
    config.cluster.listen = Some("127.0.0.1:0".into());
    let n1 = start(config);
    let addr = n1.cluster_addr().unwrap();
    for i in 0..20 {
        let mut raw = common::Raw::connect(addr);
        raw.send(
            format!(
                "CONNECT {{\"name\":\"NPEER{i}\",\"cluster\":\"c1\"}}\r\nINFO {{\"server_id\":\"NPEER{i}\",\"server_name\":\"peer{i}\",\"cluster\":\"c1\"}}\r\n"
            )
            .as_bytes(),
        );
        raw.send(
            format!("RS+ $G _INBOX.t{i}.*\r\nRMSG $G $JS.API.INFO _INBOX.t{i}.1 0\r\n\r\n")
                .as_bytes(),
        );
        let want = format!("RMSG $G _INBOX.t{i}.1");
        assert!(
            raw.read_until(want.as_bytes(), Duration::from_secs(5)),
            "round {i}: no answer routed back: {}",
            raw.text()
        );
        assert!(
            raw.text().contains("account_info_response"),
            "{}",
            raw.text()
        );
    }
}

#[test]
fn a_cluster_listener_off_loopback_needs_secret_and_tls() {
    let mut config = cluster_config("open", &[]);
    config.cluster.listen = Some("0.0.0.0:0".into());
    let err = Node::start(config).err().expect("refused").to_string();
    assert!(err.contains("cluster.listen"), "{err}");
    assert!(err.contains("secret") && err.contains("TLS"), "{err}");
}

/// meshbroker and nats-server in one cluster: interest and messages in both directions,
/// and a queue group spanning both gets each message once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clusters_with_the_reference_server() {
    let ours = start(cluster_config("ours", &[]));
    let Some((_reference, ref_addr)) = common::start_reference(&[
        "--cluster",
        &format!("nats://127.0.0.1:{}", common::free_port()),
        "--cluster_name",
        "c1",
        "--routes",
        &route_to(&ours),
        "--server_name",
        "reference",
    ]) else {
        return;
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while ours.routes().len() != 1 {
        assert!(
            Instant::now() < deadline,
            "the reference never routed to us"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let a = connect(&ours).await;
    let b = async_nats::connect(format!("nats://{ref_addr}"))
        .await
        .unwrap();
    let mut on_ref = b.subscribe("to.reference").await.unwrap();
    let mut on_ours = a.subscribe("to.ours").await.unwrap();
    common::settle(&a).await;
    common::settle(&b).await;
    wait_interest(&ours, "reference", "to.reference", None);
    a.publish("to.reference", "hello reference".into())
        .await
        .unwrap();
    let m = tokio::time::timeout(Duration::from_secs(5), on_ref.next())
        .await
        .expect("reached the reference's subscriber")
        .unwrap();
    assert_eq!(m.payload, "hello reference".as_bytes());
    // The reference learned our interest from our RS+: poll until it forwards.
    let deadline = Instant::now() + Duration::from_secs(10);
    let m = loop {
        b.publish("to.ours", "hello meshbroker".into())
            .await
            .unwrap();
        if let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(200), on_ours.next()).await
        {
            break m;
        }
        assert!(
            Instant::now() < deadline,
            "the reference never forwarded to us"
        );
    };
    assert_eq!(m.payload, "hello meshbroker".as_bytes());
    // Drain extra copies of the probe.
    while tokio::time::timeout(Duration::from_millis(200), on_ours.next())
        .await
        .is_ok()
    {}

    // One queue group with a member on each server.
    let mut qa = a.queue_subscribe("work", "w".into()).await.unwrap();
    let mut qb = b.queue_subscribe("work", "w".into()).await.unwrap();
    common::settle(&a).await;
    common::settle(&b).await;
    wait_interest(&ours, "reference", "work", Some(("w", 1)));
    let total = 200;
    for i in 0..total {
        let client = if i % 2 == 0 { &a } else { &b };
        client.publish("work", format!("{i}").into()).await.unwrap();
    }
    a.flush().await.unwrap();
    b.flush().await.unwrap();
    let mut seen = HashSet::new();
    let mut counts = [0usize; 2];
    while seen.len() < total {
        let (which, m) = tokio::select! {
            Some(m) = qa.next() => (0, m),
            Some(m) = qb.next() => (1, m),
            _ = tokio::time::sleep(Duration::from_secs(5)) => panic!("only {} of {total} arrived", seen.len()),
        };
        assert!(
            seen.insert(m.payload.clone()),
            "delivered twice: {:?}",
            m.payload
        );
        counts[which] += 1;
    }
    let extra = tokio::select! {
        Some(m) = qa.next() => Some(m),
        Some(m) = qb.next() => Some(m),
        _ = tokio::time::sleep(Duration::from_millis(500)) => None,
    };
    assert!(extra.is_none(), "a message was delivered twice: {extra:?}");
    assert!(counts[0] > 0 && counts[1] > 0, "{counts:?}");
}
