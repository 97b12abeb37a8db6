//! One JetStream across three meshbroker processes on loopback (`jetstream.peers`):
//! the meta group elects a leader, streams created through any node are seen from
//! every node, an R1 stream placed on one node takes publishes and serves consumers
//! from clients on the others, a `kill -9`ed meta leader is replaced and the node,
//! restarted on its store, rejoins knowing every stream. R3 streams keep every acked
//! message through a leader `kill -9`, a leader frozen 12 s (SIGSTOP) and all nodes
//! killed at once; each replica's store, read from disk after a clean stop, holds the
//! same history. Clients are async-nats.

mod common;

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream};
use futures::StreamExt;

use common::jscluster::{eventually, js_on, peers, stream_leader, wait_leader, Peer, NAMES};

/// What STREAM.INFO says of `stream` now.
async fn info_of(js: &jetstream::Context, stream: &str) -> stream::Info {
    js.get_stream(stream)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .clone()
}

/// A durable pull consumer `name` on `stream`.
async fn durable(
    js: &jetstream::Context,
    stream: &str,
    name: &str,
) -> consumer::Consumer<consumer::pull::Config> {
    js.get_stream(stream)
        .await
        .unwrap()
        .create_consumer(consumer::pull::Config {
            durable_name: Some(name.into()),
            ..Default::default()
        })
        .await
        .unwrap()
}

async fn names(js: &jetstream::Context) -> Vec<String> {
    let mut names: Vec<String> = js
        .stream_names()
        .map(|n| n.unwrap())
        .collect::<Vec<_>>()
        .await;
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_are_one_jetstream_and_survive_losing_the_meta_leader() {
    let mut all = peers("one");
    let configs: Vec<String> = all.iter().map(|p| p.config(&all)).collect();
    for (p, c) in all.iter_mut().zip(&configs) {
        p.start(c);
    }
    let leader = wait_leader(&all, Duration::from_secs(20));
    let jsz = all[0].jsz();
    assert_eq!(jsz["meta_cluster"]["cluster_size"], 3, "{jsz}");
    assert_eq!(jsz["meta_cluster"]["name"], "js", "{jsz}");
    for p in &all {
        let (code, _, body) = common::http_get(p.monitor, "/healthz");
        assert_eq!(code, 200, "{}: {}", p.name, String::from_utf8_lossy(&body));
        let (_, _, metrics) = common::http_get(p.monitor, "/metrics");
        let metrics = String::from_utf8_lossy(&metrics).into_owned();
        let leads = if p.name == leader { 1 } else { 0 };
        assert!(
            metrics.contains(&format!("meshbroker_raft_meta_is_leader {leads}\n")),
            "{}: {metrics}",
            p.name
        );
    }

    // A stream created through n1 is seen from n3 and n2.
    let js1 = js_on(&all[0]).await;
    let created = js1
        .create_stream(stream::Config {
            name: "ORDERS".into(),
            subjects: vec!["orders.>".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(created.cached_info().config.name, "ORDERS");
    let js3 = js_on(&all[2]).await;
    let mut orders = js3.get_stream("ORDERS").await.unwrap();
    assert_eq!(orders.info().await.unwrap().state.messages, 0);

    // Published from n3, consumed from n2, wherever the stream is held.
    for i in 0..20 {
        let ack = js3
            .publish(format!("orders.{i}"), format!("order {i}").into())
            .await
            .unwrap()
            .await
            .unwrap();
        assert_eq!(ack.sequence, i + 1);
        assert_eq!(ack.stream, "ORDERS");
    }
    let js2 = js_on(&all[1]).await;
    let consumer = durable(&js2, "ORDERS", "worker").await;
    let mut batch = consumer.fetch().max_messages(20).messages().await.unwrap();
    let mut got = Vec::new();
    while let Some(m) = batch.next().await {
        let m = m.unwrap();
        got.push(String::from_utf8(m.payload.to_vec()).unwrap());
        m.ack().await.unwrap();
    }
    assert_eq!(got.len(), 20, "{got:?}");
    assert_eq!(got[19], "order 19");

    // A create that clashes is refused by the meta leader, whoever the client is on.
    let clash = js2
        .create_stream(stream::Config {
            name: "OTHER".into(),
            subjects: vec!["orders.eu".into()],
            ..Default::default()
        })
        .await;
    assert!(clash.is_err(), "overlapping subjects accepted");
    assert_eq!(names(&js2).await, ["ORDERS"]);
    let list: Vec<_> = js2.streams().map(|s| s.unwrap()).collect::<Vec<_>>().await;
    assert_eq!(list.len(), 1);
    assert_eq!(
        list[0].state.messages, 20,
        "LIST asks the holder for its info"
    );

    // The meta leader is killed: the other two elect another, and the JetStream goes
    // on taking new streams.
    let held_by = all
        .iter()
        .find(|p| p.jsz()["streams"].as_u64().is_some_and(|n| n == 1))
        .map(|p| p.name)
        .unwrap();
    let at = all.iter().position(|p| p.name == leader).unwrap();
    all[at].kill9();
    let killed = Instant::now();
    let next = wait_leader(&all, Duration::from_secs(15));
    let took = killed.elapsed();
    assert_ne!(next, leader);
    eprintln!("meta leader {leader} killed; {next} leads after {took:?}");
    let survivor = all.iter().find(|p| p.process.is_some()).unwrap();
    let js = js_on(survivor).await;
    js.create_stream(stream::Config {
        name: "EVENTS".into(),
        subjects: vec!["events.>".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    if held_by != leader {
        let info = info_of(&js, "ORDERS").await;
        assert_eq!(info.state.messages, 20);
    }

    // Restarted on its store, the old leader rejoins, knows both streams, and
    // still holds (or reaches) ORDERS with every message.
    let config = configs[at].clone();
    all[at].start(&config);
    let again = wait_leader(&all, Duration::from_secs(15));
    assert_eq!(again, next, "the returning node must not take over");
    let back = js_on(&all[at]).await;
    assert_eq!(names(&back).await, ["EVENTS", "ORDERS"]);
    let info = info_of(&back, "ORDERS").await;
    assert_eq!(info.state.messages, 20);

    // A delete through any node removes it everywhere.
    back.delete_stream("EVENTS").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    for p in &all {
        let js = js_on(p).await;
        while names(&js).await != ["ORDERS"] {
            assert!(
                Instant::now() < deadline,
                "EVENTS still listed on {}",
                p.name
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// An async publisher: 64 acks outstanding, message `i` on `<prefix>.<i % 7>` with
/// `Nats-Msg-Id: m-<i>`; an ack that fails or takes over two seconds is retried with
/// the same id until it comes. What was acked is noted as it is.
#[derive(Clone, Default)]
struct Load {
    acked: std::sync::Arc<std::sync::Mutex<std::collections::BTreeSet<u64>>>,
    /// Set: no new messages (those in flight are still acked).
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Load {
    fn acked(&self) -> std::collections::BTreeSet<u64> {
        self.acked.lock().unwrap().clone()
    }

    /// Publishes `0..total`; returns how many acks were retried.
    async fn run(self, js: jetstream::Context, prefix: &'static str, total: u64) -> u64 {
        let send = |i: u64| {
            let js = js.clone();
            async move {
                let mut headers = async_nats::HeaderMap::new();
                headers.insert("Nats-Msg-Id", format!("m-{i}").as_str());
                let ack = js
                    .publish_with_headers(
                        format!("{prefix}.{}", i % 7),
                        headers,
                        format!("{i}").into(),
                    )
                    .await
                    .ok();
                // Each ack has two seconds from its publish, not from when it is awaited.
                (i, tokio::time::Instant::now() + Duration::from_secs(2), ack)
            }
        };
        let mut window = std::collections::VecDeque::new();
        let mut retries = 0u64;
        let mut next = 0u64;
        let started = Instant::now();
        while next < total || !window.is_empty() {
            let stopped = self.stop.load(std::sync::atomic::Ordering::Relaxed);
            while next < total && !stopped && window.len() < 64 {
                window.push_back(send(next).await);
                next += 1;
            }
            let Some((i, deadline, pending)) = window.pop_front() else {
                break;
            };
            let acked = match pending {
                Some(ack) => matches!(tokio::time::timeout_at(deadline, ack).await, Ok(Ok(_))),
                None => false,
            };
            if acked {
                self.acked.lock().unwrap().insert(i);
            } else {
                // Again, same id, until it is acked (a leader change in between).
                retries += 1;
                assert!(
                    started.elapsed() < Duration::from_secs(180),
                    "message {i} never acked"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
                window.push_back(send(i).await);
            }
        }
        retries
    }
}

/// The messages of `stream` in a stopped node's store, in sequence order: (sequence,
/// subject, payload). Read from the redb file itself, so each replica is seen as it
/// is on disk, not through a leader.
fn stored(peer: &Peer, stream: &str) -> Vec<(u64, String, Vec<u8>)> {
    let all = with_store(peer, |store| store.load_all().unwrap());
    let Some(s) = all.into_iter().find(|s| s.record.config.name == stream) else {
        return Vec::new();
    };
    s.messages
        .into_iter()
        .map(|(seq, m)| {
            let payload = m.data[m.hdr_len as usize..].to_vec();
            (seq, m.subject, payload)
        })
        .collect()
}

/// Reads a stopped node's store with `read`, then closes it (the file is free again
/// for the node once the store's threads are gone).
fn with_store<T>(peer: &Peer, read: impl FnOnce(&meshbroker::actors::storage::Storage) -> T) -> T {
    let (store, closed) = meshbroker::actors::storage::Storage::open(
        &peer.dir.join("js"),
        meshbroker::config::AckAfter::Fsync,
    )
    .unwrap();
    let value = read(&store);
    drop(store);
    closed.wait(Duration::from_secs(10));
    value
}

/// Every message `0..total` once in `messages`, by payload.
fn assert_once_each(
    messages: &[(u64, String, Vec<u8>)],
    acked: &std::collections::BTreeSet<u64>,
    who: &str,
) {
    let mut seen = std::collections::BTreeSet::new();
    for (seq, _, payload) in messages {
        let i: u64 = std::str::from_utf8(payload).unwrap().parse().unwrap();
        assert!(
            seen.insert(i),
            "{who}: message {i} stored twice (again at {seq})"
        );
    }
    let missing: Vec<&u64> = acked.difference(&seen).collect();
    assert!(missing.is_empty(), "{who}: acked but lost: {missing:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_r3_stream_keeps_every_acked_message_when_its_leader_is_killed() {
    let mut all = peers("r3");
    let configs: Vec<String> = all.iter().map(|p| p.config(&all)).collect();
    for (p, c) in all.iter_mut().zip(&configs) {
        p.start(c);
    }
    wait_leader(&all, Duration::from_secs(20));
    let urls: Vec<String> = all.iter().map(|p| format!("nats://{}", p.client)).collect();
    let client = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connect(urls.clone())
        .await
        .unwrap();
    let mut js = jetstream::new(client);
    js.set_timeout(Duration::from_secs(3));
    js.create_stream(stream::Config {
        name: "R3".into(),
        subjects: vec!["r3.>".into()],
        num_replicas: 3,
        ..Default::default()
    })
    .await
    .unwrap();
    // The group elects its leader; the stream answers INFO once it has one.
    let mut leader = String::new();
    eventually(
        "an R3 stream leader",
        Duration::from_secs(15),
        async || match js.get_stream("R3").await {
            Ok(mut s) => match s.info().await {
                Ok(info) => {
                    let cluster = info.cluster.clone().unwrap_or_default();
                    leader = cluster.leader.unwrap_or_default();
                    !leader.is_empty()
                }
                Err(_) => false,
            },
            Err(_) => false,
        },
    )
    .await;

    const TOTAL: u64 = 3000;
    let load = Load::default();
    let publisher = tokio::spawn(load.clone().run(js.clone(), "r3", TOTAL));
    // Kill the stream's leader once the load is under way.
    eventually("publishes under way", Duration::from_secs(20), async || {
        let peer = all.iter().find(|p| p.name != leader).unwrap();
        peer.jsz()["messages"].as_u64().unwrap_or(0) >= 500
    })
    .await;
    let at = all.iter().position(|p| p.name == leader).unwrap();
    all[at].kill9();
    let killed = Instant::now();
    let retries = publisher.await.unwrap();
    eprintln!(
        "R3 leader {leader} killed under load; all {TOTAL} acked {:?} later, {retries} acks retried",
        killed.elapsed()
    );

    // Every acked message is there once, in one order, on the survivors.
    let mut info = info_of(&js, "R3").await;
    assert_ne!(
        info.cluster
            .clone()
            .unwrap_or_default()
            .leader
            .unwrap_or_default(),
        leader
    );
    assert_eq!(info.state.messages, TOTAL, "{info:?}");
    assert_eq!(
        info.state.last_sequence, TOTAL,
        "a retry was stored twice: {info:?}"
    );
    let consumer = durable(&js, "R3", "check").await;
    let mut seen = std::collections::HashSet::new();
    while seen.len() < TOTAL as usize {
        let mut batch = consumer.fetch().max_messages(500).messages().await.unwrap();
        let mut got = 0;
        while let Some(m) = batch.next().await {
            let m = m.unwrap();
            let id = m
                .headers
                .as_ref()
                .and_then(|h| h.get("Nats-Msg-Id"))
                .map(|v| v.to_string());
            assert!(seen.insert(id.clone().unwrap()), "{id:?} twice");
            // Answered once the ack is committed (through the stream's log): the next
            // fetch then never finds max_ack_pending reached by acks still on the way.
            m.double_ack().await.unwrap();
            got += 1;
        }
        assert!(got > 0, "consumer stalled at {}", seen.len());
    }

    // The killed replica returns and catches up from the log.
    let config = configs[at].clone();
    all[at].start(&config);
    eventually(
        "the returning replica holds every message",
        Duration::from_secs(20),
        async || all[at].jsz()["messages"].as_u64() == Some(TOTAL),
    )
    .await;
    info = info_of(&js, "R3").await;
    assert_eq!(info.state.messages, TOTAL);
    // One order on every replica, as their stores hold it.
    for p in all.iter_mut() {
        p.stop();
    }
    let first = stored(&all[0], "R3");
    assert_once_each(&first, &load.acked(), all[0].name);
    for p in &all[1..] {
        assert!(stored(p, "R3") == first, "{} holds another history", p.name);
    }
}

/// Starts the three nodes, creates the R3 stream `name` on `<name>.>` through any of
/// them and returns (a JetStream context on `urls`, the stream's leader).
async fn r3_cluster(all: &mut [Peer], name: &str, urls: &[usize]) -> (jetstream::Context, String) {
    let configs: Vec<String> = all.iter().map(|p| p.config(all)).collect();
    for (p, c) in all.iter_mut().zip(&configs) {
        p.start(c);
    }
    wait_leader(all, Duration::from_secs(20));
    let urls: Vec<String> = urls
        .iter()
        .map(|&i| format!("nats://{}", all[i].client))
        .collect();
    let client = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connect(urls)
        .await
        .unwrap();
    let mut js = jetstream::new(client);
    js.set_timeout(Duration::from_secs(3));
    js.create_stream(stream::Config {
        name: name.into(),
        subjects: vec![format!("{name}.>")],
        num_replicas: 3,
        ..Default::default()
    })
    .await
    .unwrap();
    let leader = stream_leader(&js, name, Duration::from_secs(15)).await;
    (js, leader)
}

/// The stream's leader frozen (SIGSTOP) for 12 s while an async publisher on the two
/// other nodes goes on: the majority elects and acks, the frozen node acks nothing
/// (it cannot), and once thawed it steps down and converges: every replica's store
/// holds the same messages in the same order, each acked message once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_r3_leader_steps_down_and_converges_with_no_acked_message_lost() {
    let mut all = peers("freeze");
    // The leader is known only once the stream exists: connect to all, then to the
    // other two for the load.
    let (js, leader) = r3_cluster(&mut all, "FZ", &[0, 1, 2]).await;
    let frozen = all.iter().position(|p| p.name == leader).unwrap();
    let others: Vec<usize> = (0..3).filter(|&i| i != frozen).collect();
    let urls: Vec<String> = others
        .iter()
        .map(|&i| format!("nats://{}", all[i].client))
        .collect();
    let client = async_nats::connect(urls).await.unwrap();
    let mut load_js = jetstream::new(client);
    load_js.set_timeout(Duration::from_secs(3));
    drop(js);

    const TOTAL: u64 = 4000;
    let load = Load::default();
    let publisher = tokio::spawn(load.clone().run(load_js.clone(), "FZ", TOTAL));
    eventually("publishes under way", Duration::from_secs(20), async || {
        load.acked().len() >= 500
    })
    .await;
    all[frozen].signal(libc::SIGSTOP);
    let frozen_at = Instant::now();
    let before = load.acked().len();
    // The majority goes on: acks resume while the old leader is still frozen.
    eventually(
        "acks resumed without the frozen leader",
        Duration::from_secs(11),
        async || load.acked().len() > before + 200,
    )
    .await;
    let resumed = frozen_at.elapsed();
    let new_leader = stream_leader(&load_js, "FZ", Duration::from_secs(5)).await;
    assert_ne!(new_leader, leader);
    tokio::time::sleep(Duration::from_secs(12).saturating_sub(frozen_at.elapsed())).await;
    all[frozen].signal(libc::SIGCONT);
    let retries = publisher.await.unwrap();
    eprintln!(
        "R3 leader {leader} frozen 12 s under load: acks resumed {resumed:?} after, on {new_leader}; {retries} acks retried"
    );
    assert_eq!(load.acked().len() as u64, TOTAL);

    // The thawed node follows the new leader and catches up.
    eventually(
        "the thawed replica holds every message",
        Duration::from_secs(30),
        async || all[frozen].jsz()["messages"].as_u64() == Some(TOTAL),
    )
    .await;
    let info = info_of(&load_js, "FZ").await;
    assert_eq!(info.state.messages, TOTAL, "{info:?}");
    assert_eq!(
        info.state.last_sequence, TOTAL,
        "a retry was stored twice: {info:?}"
    );
    assert_ne!(
        info.cluster.unwrap_or_default().leader.unwrap_or_default(),
        leader
    );

    // One history: the three stores, read from disk, are the same sequence.
    for p in all.iter_mut() {
        p.stop();
    }
    let first = stored(&all[0], "FZ");
    assert_once_each(&first, &load.acked(), all[0].name);
    for p in &all[1..] {
        let other = stored(p, "FZ");
        assert!(
            other == first,
            "{} holds another history than {}",
            p.name,
            all[0].name
        );
    }
}

/// Every node `kill -9`ed at once while an async publisher runs, then restarted: every
/// acked message is there, once, on every replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acked_message_survives_all_nodes_killed_at_once() {
    let mut all = peers("killall");
    let (js, _) = r3_cluster(&mut all, "KA", &[0, 1, 2]).await;
    let load = Load::default();
    let publisher = tokio::spawn(load.clone().run(js.clone(), "KA", 1_000_000));
    eventually("publishes under way", Duration::from_secs(20), async || {
        load.acked().len() >= 1500
    })
    .await;
    for p in all.iter_mut() {
        p.kill9();
    }
    publisher.abort();
    let _ = publisher.await;
    let acked = load.acked();
    eprintln!("all nodes killed with {} acked", acked.len());

    let configs: Vec<String> = all.iter().map(|p| p.config(&all)).collect();
    for (p, c) in all.iter_mut().zip(&configs) {
        p.start(c);
    }
    wait_leader(&all, Duration::from_secs(20));
    stream_leader(&js, "KA", Duration::from_secs(20)).await;
    let info = info_of(&js, "KA").await;
    assert!(info.state.messages >= acked.len() as u64, "{info:?}");
    eventually(
        "every replica caught up",
        Duration::from_secs(30),
        async || {
            all.iter()
                .all(|p| p.jsz()["messages"].as_u64() == Some(info.state.messages))
        },
    )
    .await;
    for p in all.iter_mut() {
        p.stop();
    }
    for p in &all {
        assert_once_each(&stored(p, "KA"), &acked, p.name);
    }
}

/// A JetStream API request through `client`, its JSON reply.
async fn api(client: &async_nats::Client, subject: &str, body: &str) -> serde_json::Value {
    let reply = client
        .request(subject.to_string(), body.to_string().into())
        .await
        .unwrap();
    serde_json::from_slice(&reply.payload).unwrap()
}

/// STREAM.INFO's `cluster` names the group, the leader since when, and the two other
/// replicas as the leader sees them; a stream leader stepdown (and a consumer's, which
/// moves with its stream) hands the group to another replica, as the reference
/// answers it; publishes go on acked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_info_lists_the_replicas_and_a_stepdown_moves_the_leader() {
    let mut all = peers("stepdown");
    let (js, leader) = r3_cluster(&mut all, "SD", &[0, 1, 2]).await;
    let client = async_nats::connect(all[2].client.to_string())
        .await
        .unwrap();
    js.publish("SD.a", "one".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let mut info = serde_json::Value::Null;
    eventually(
        "both followers current",
        Duration::from_secs(10),
        async || {
            info = api(&client, "$JS.API.STREAM.INFO.SD", "").await;
            let replicas = info["cluster"]["replicas"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            replicas.len() == 2 && replicas.iter().all(|r| r["current"] == true)
        },
    )
    .await;
    let cluster = &info["cluster"];
    assert_eq!(cluster["leader"], leader.as_str(), "{info}");
    assert_eq!(cluster["name"], "js");
    assert!(
        cluster["raft_group"]
            .as_str()
            .unwrap()
            .starts_with("S-R3F-"),
        "{info}"
    );
    assert!(cluster["leader_since"].is_string(), "{info}");
    let mut names: Vec<&str> = cluster["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            // Heard from within the last heartbeats.
            assert!(r["active"].as_u64().unwrap() < 5_000_000_000, "{r}");
            assert_eq!(r["peer"].as_str().unwrap().len(), 8, "{r}");
            r["name"].as_str().unwrap()
        })
        .collect();
    names.sort();
    let mut others: Vec<&str> = NAMES.iter().copied().filter(|n| *n != leader).collect();
    others.sort();
    assert_eq!(names, others);

    // A stepdown: success, then another leader.
    let bad = api(&client, "$JS.API.STREAM.LEADER.STEPDOWN.SD", "{bad json").await;
    assert_eq!(bad["error"]["err_code"], 10025, "{bad}");
    let nope = api(&client, "$JS.API.STREAM.LEADER.STEPDOWN.NOPE", "").await;
    assert_eq!(nope["error"]["err_code"], 10059, "{nope}");
    let unknown = r#"{"placement":{"preferred":"n9"}}"#;
    let unknown = api(&client, "$JS.API.STREAM.LEADER.STEPDOWN.SD", unknown).await;
    assert_eq!(unknown["error"]["err_code"], 10008, "{unknown}");
    let done = api(&client, "$JS.API.STREAM.LEADER.STEPDOWN.SD", "").await;
    assert_eq!(
        done["type"],
        "io.nats.jetstream.api.v1.stream_leader_stepdown_response"
    );
    assert_eq!(done["success"], true, "{done}");
    let moved = Instant::now();
    let mut second = String::new();
    eventually("a new stream leader", Duration::from_secs(10), async || {
        second = stream_leader(&js, "SD", Duration::from_secs(5)).await;
        second != leader
    })
    .await;
    eprintln!(
        "stream leader {leader} stepped down; {second} leads {:?} later",
        moved.elapsed()
    );
    js.publish("SD.a", "two".into())
        .await
        .unwrap()
        .await
        .unwrap();

    // To a preferred replica, through a consumer stepdown.
    let c = durable(&js, "SD", "C").await;
    drop(c);
    let nope = api(&client, "$JS.API.CONSUMER.LEADER.STEPDOWN.SD.NOPE", "").await;
    assert_eq!(nope["error"]["err_code"], 10014, "{nope}");
    let to = leader.as_str();
    let body = format!(r#"{{"placement":{{"preferred":"{to}"}}}}"#);
    let done = api(&client, "$JS.API.CONSUMER.LEADER.STEPDOWN.SD.C", &body).await;
    assert_eq!(
        done["type"],
        "io.nats.jetstream.api.v1.consumer_leader_stepdown_response"
    );
    assert_eq!(done["success"], true, "{done}");
    eventually(
        "the preferred replica leads",
        Duration::from_secs(10),
        async || stream_leader(&js, "SD", Duration::from_secs(5)).await == to,
    )
    .await;
    js.publish("SD.a", "three".into())
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eq!(info_of(&js, "SD").await.state.messages, 3);
}

/// Five leader stepdowns in a row while an async publisher runs: each moves the
/// group at once, every replica (the one that stepped down included) is current again
/// soon after, no acked message is lost or stored twice, and the three stores, read
/// from disk, hold one history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stepdowns_under_load_keep_every_replica_in_the_group() {
    let mut all = peers("stepload");
    let (js, _) = r3_cluster(&mut all, "SL", &[0, 1, 2]).await;
    let core = js.client();
    const TOTAL: u64 = 5000;
    let load = Load::default();
    let publisher = tokio::spawn(load.clone().run(js.clone(), "SL", TOTAL));
    for round in 0..5 {
        let before = load.acked().len();
        eventually("publishes under way", Duration::from_secs(20), async || {
            load.acked().len() >= before + 300
        })
        .await;
        let leader = stream_leader(&js, "SL", Duration::from_secs(10)).await;
        let done = api(&core, "$JS.API.STREAM.LEADER.STEPDOWN.SL", "").await;
        assert_eq!(done["success"], true, "round {round}: {done}");
        eventually(
            "a new leader after the stepdown",
            Duration::from_secs(10),
            async || stream_leader(&js, "SL", Duration::from_secs(5)).await != leader,
        )
        .await;
        eventually(
            &format!("every replica current after stepdown {round} (from {leader})"),
            Duration::from_secs(10),
            async || all_current(&js, "SL").await,
        )
        .await;
    }
    let retries = publisher.await.unwrap();
    eprintln!("5 stepdowns under load: {retries} acks retried");
    assert_eq!(load.acked().len() as u64, TOTAL);
    let info = info_of(&js, "SL").await;
    assert_eq!(
        info.state.last_sequence, TOTAL,
        "a retry stored twice: {info:?}"
    );
    for p in all.iter_mut() {
        p.stop();
    }
    let first = stored(&all[0], "SL");
    assert_once_each(&first, &load.acked(), all[0].name);
    for p in &all[1..] {
        assert_eq!(stored(p, "SL"), first, "{} holds another history", p.name);
    }
}

/// Whether every replica of `stream` is current (as its leader, asked through `js`,
/// sees them): each has answered the leader lately and holds what it committed.
async fn all_current(js: &jetstream::Context, stream: &str) -> bool {
    let Ok(mut s) = js.get_stream(stream).await else {
        return false;
    };
    let Ok(info) = s.info().await else {
        return false;
    };
    let cluster = info.cluster.clone().unwrap_or_default();
    cluster.leader.is_some()
        && cluster.replicas.len() == 2
        && cluster.replicas.iter().all(|r| r.current && !r.offline)
}

/// A key/value bucket with three replicas from async-nats clients on every node: a
/// put through one node is read through the others, and a watcher on another node
/// sees every update once, in order, across a leader `kill -9` (the killed node
/// restarts and catches up) and a leader stepdown while puts run (after which every
/// replica is current again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_r3_key_value_bucket_serves_every_node_and_its_watcher_survives_leader_changes() {
    let mut all = peers("kv");
    let configs: Vec<String> = all.iter().map(|p| p.config(&all)).collect();
    for (p, c) in all.iter_mut().zip(&configs) {
        p.start(c);
    }
    wait_leader(&all, Duration::from_secs(20));
    let mut on = Vec::new();
    for p in &all {
        on.push(js_on(p).await);
    }
    // History enough for every put of the test: the watcher is to see each one (with
    // less, a watcher that resets after a leader change may find older values gone,
    // at the reference too).
    let bucket = on[0]
        .create_key_value(jetstream::kv::Config {
            bucket: "cfg".into(),
            history: 64,
            num_replicas: 3,
            ..Default::default()
        })
        .await
        .unwrap();
    let leader = stream_leader(&on[0], "KV_cfg", Duration::from_secs(15)).await;
    // A watcher and a writer on the two nodes that do not lead the bucket's stream
    // (its leader is killed later).
    let mut followers = (0..3).filter(|&i| all[i].name != leader);
    let (watch_at, writer_at) = (followers.next().unwrap(), followers.next().unwrap());
    let watched = on[watch_at].get_key_value("cfg").await.unwrap();
    let mut watch = watched.watch("k.>").await.unwrap();
    // The watcher is read as the updates come (an ordered consumer recovers from a
    // leader change only while its stream is polled).
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(entry) = watch.next().await {
            let entry = entry.expect("the watcher goes on");
            if seen_tx
                .send(String::from_utf8_lossy(&entry.value).into_owned())
                .is_err()
            {
                break;
            }
        }
    });
    let writer = on[writer_at].get_key_value("cfg").await.unwrap();
    drop(bucket);

    let acked = std::sync::atomic::AtomicUsize::new(0);
    let mut expected = Vec::new();
    let put = async |n: usize, expected: &mut Vec<String>| {
        for i in 0..n {
            let value = format!("v{}", expected.len());
            let key = format!("k.{}", i % 3);
            // A put may meet a leader change: retried until acked (same key, same value).
            let deadline = Instant::now() + Duration::from_secs(20);
            while writer.put(&key, value.clone().into()).await.is_err() {
                assert!(Instant::now() < deadline, "put {key} never acked");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            expected.push(value);
            acked.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    };
    put(20, &mut expected).await;
    // Every node reads the last value (direct gets where the bucket allows them).
    for js in &on {
        let kv = js.get_key_value("cfg").await.unwrap();
        let mut got = None;
        eventually(
            "the last put read back",
            Duration::from_secs(5),
            async || {
                got = kv.get("k.1").await.unwrap();
                got.as_deref() == Some(b"v19".as_slice())
            },
        )
        .await;
    }
    // The leader is killed: the bucket goes on on the other two; the node comes back
    // on its store and catches up.
    let at = all.iter().position(|p| p.name == leader).unwrap();
    all[at].kill9();
    put(20, &mut expected).await;
    all[at].start(&configs[at]);
    eventually(
        "every replica current after the restart",
        Duration::from_secs(20),
        async || all_current(&on[writer_at], "KV_cfg").await,
    )
    .await;

    // A stepdown while puts run: the group moves, the puts go on, and the replica
    // that stepped down stays in the group.
    let core = async_nats::connect(all[writer_at].client.to_string())
        .await
        .unwrap();
    let stepdown = async {
        let from = acked.load(std::sync::atomic::Ordering::Relaxed);
        eventually("puts under way", Duration::from_secs(20), async || {
            acked.load(std::sync::atomic::Ordering::Relaxed) >= from + 10
        })
        .await;
        api(&core, "$JS.API.STREAM.LEADER.STEPDOWN.KV_cfg", "").await
    };
    let ((), done) = tokio::join!(put(40, &mut expected), stepdown);
    assert_eq!(done["success"], true, "{done}");
    eventually(
        "every replica current after the stepdown",
        Duration::from_secs(20),
        async || all_current(&on[writer_at], "KV_cfg").await,
    )
    .await;
    // The restarted node reads the last value too.
    let kv = on[at].get_key_value("cfg").await.unwrap();
    let last = expected.last().unwrap().clone();
    let last_key = format!("k.{}", (40 - 1) % 3);
    eventually(
        "the last put read on every node",
        Duration::from_secs(5),
        async || kv.get(&last_key).await.ok().flatten().as_deref() == Some(last.as_bytes()),
    )
    .await;

    // The watcher saw each put once, in order (a retried put that was stored twice
    // would show twice).
    let mut got = Vec::new();
    while got.len() < expected.len() {
        match tokio::time::timeout(Duration::from_secs(15), seen.recv()).await {
            Ok(Some(value)) => got.push(value),
            _ => panic!("watcher stalled after {got:?}"),
        }
    }
    assert_eq!(got, expected);
}

/// Two of three nodes killed: the survivor's R3 stream has no leader, and it answers
/// as the reference's replica does then (checked against nats-server 2.15.1): STREAM.INFO
/// with its own state and no `leader`, CONSUMER.CREATE, CONSUMER.INFO and
/// STREAM.PURGE with 503 10008 "JetStream system temporarily unavailable"; a publish
/// gets no ack (no quorum can promise it). Once a second node is back, a leader is
/// elected and nothing acked before the loss is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaderless_r3_stream_answers_as_the_reference_does() {
    let mut all = peers("leaderless");
    let (js, _) = r3_cluster(&mut all, "LL", &[0, 1, 2]).await;
    for i in 0..5 {
        js.publish("LL.a", format!("m{i}").into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    eventually(
        "both followers current",
        Duration::from_secs(10),
        async || all_current(&js, "LL").await,
    )
    .await;
    all[1].kill9();
    all[2].kill9();
    let client = async_nats::connect(all[0].client.to_string())
        .await
        .unwrap();
    let mut info = serde_json::Value::Null;
    eventually(
        "the survivor knows its stream has no leader",
        Duration::from_secs(15),
        async || {
            // Unanswered while the survivor still follows a dead leader.
            let Ok(Ok(reply)) = tokio::time::timeout(
                Duration::from_secs(1),
                client.request("$JS.API.STREAM.INFO.LL", "".into()),
            )
            .await
            else {
                return false;
            };
            info = serde_json::from_slice(&reply.payload).unwrap();
            info.get("error").is_none() && info["cluster"].get("leader").is_none()
        },
    )
    .await;
    assert_eq!(info["state"]["messages"], 5, "{info}");
    assert_eq!(info["config"]["num_replicas"], 3, "{info}");
    assert!(info["cluster"].get("leader_since").is_none(), "{info}");
    let unavailable = |v: &serde_json::Value, kind: &str| {
        assert_eq!(v["type"], format!("io.nats.jetstream.api.v1.{kind}"), "{v}");
        assert_eq!(v["error"]["code"], 503, "{v}");
        assert_eq!(v["error"]["err_code"], 10008, "{v}");
        assert_eq!(
            v["error"]["description"], "JetStream system temporarily unavailable",
            "{v}"
        );
    };
    let create = r#"{"stream_name":"LL","config":{"ack_policy":"explicit"}}"#;
    let created = api(&client, "$JS.API.CONSUMER.CREATE.LL", create).await;
    unavailable(&created, "consumer_create_response");
    let consumer = api(&client, "$JS.API.CONSUMER.INFO.LL.X", "").await;
    unavailable(&consumer, "consumer_info_response");
    let purged = api(&client, "$JS.API.STREAM.PURGE.LL", "").await;
    unavailable(&purged, "stream_purge_response");
    let mut js0 = jetstream::new(client.clone());
    js0.set_timeout(Duration::from_millis(800));
    let unacked = js0.publish("LL.a", "lost?".into()).await.unwrap().await;
    assert!(unacked.is_err(), "no quorum, yet acked: {unacked:?}");

    let config = all[1].config(&all);
    all[1].start(&config);
    let leader = stream_leader(&js0, "LL", Duration::from_secs(20)).await;
    assert!(leader == "n1" || leader == "n2", "{leader}");
    assert!(info_of(&js0, "LL").await.state.messages >= 5);
}

/// The stream's group on `peer` as its `/raftz` shows it (`None` before it runs).
fn raftz_group(peer: &Peer) -> Option<serde_json::Value> {
    let all = common::http_get_json(peer.monitor, "/raftz?acc=%24G");
    let groups = all["$G"].as_object()?;
    groups.values().next().cloned()
}

/// A Raft log compacts only what every voter holds: with a follower killed (-9) under
/// an async load its peers keep the log it lacks, it catches up from them when it
/// returns, and then every log compacts; a node killed after compacting restarts from
/// its stored compaction point and its store. Every acked message is on every
/// replica once, in one order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_logs_compact_what_every_replica_holds_and_restart_from_it() {
    // Past three compaction intervals (4096 entries each).
    const TOTAL: u64 = 14_000;
    let mut all = peers("compact");
    let configs: Vec<String> = all.iter().map(|p| p.config(&all)).collect();
    let (js, leader) = r3_cluster(&mut all, "cmp", &[0, 1, 2]).await;
    let away = all.iter().position(|p| p.name != leader).unwrap();
    let load = Load::default();
    let publisher = tokio::spawn(load.clone().run(js.clone(), "cmp", TOTAL));
    eventually("publishes under way", Duration::from_secs(60), async || {
        all[away].jsz()["messages"].as_u64().unwrap_or(0) >= 2_000
    })
    .await;
    all[away].kill9();
    // What the follower's log holds now that it is down: no log may compact past it.
    let away_holds = with_store(&all[away], |store| {
        let logs = store.raft_logs().unwrap();
        let log = logs.iter().find(|l| *l != "raft/0").unwrap();
        let entries = store.load_raft_log(log).unwrap().entries;
        entries.last().map_or(0, |e| e.0)
    });
    let held = all.iter().position(|p| p.name == leader).unwrap();
    eventually(
        "publishes go on without the follower",
        Duration::from_secs(60),
        async || all[held].jsz()["messages"].as_u64().unwrap_or(0) >= 9_000,
    )
    .await;
    // The survivors are current (the leader, and a follower hearing it and applying
    // what it commits) while the load goes on.
    eventually(
        "the survivors healthy",
        Duration::from_secs(10),
        async || {
            all.iter()
                .filter(|p| p.process.is_some())
                .all(|p| common::http_get(p.monitor, "/healthz").0 == 200)
        },
    )
    .await;
    // The follower lacks what came after `away_holds`: no log compacts past it.
    for p in all.iter().filter(|p| p.process.is_some()) {
        let g = raftz_group(p).unwrap();
        let first = g["wal"]["first_seq"].as_u64().unwrap();
        assert!(
            first <= away_holds + 1,
            "{} compacted to {first} with a voter away holding {away_holds}",
            p.name
        );
    }
    all[away].start(&configs[away]);
    let retries = publisher.await.unwrap();
    assert_eq!(load.acked().len() as u64, TOTAL, "{retries} retries");
    eventually(
        "the returning follower holds every message",
        Duration::from_secs(30),
        async || all[away].jsz()["messages"].as_u64() == Some(TOTAL),
    )
    .await;
    eventually(
        "every log compacted past the follower's absence",
        Duration::from_secs(30),
        async || {
            all.iter().all(|p| {
                raftz_group(p).is_some_and(|g| {
                    g["wal"]["first_seq"].as_u64().unwrap_or(0) > 8_192
                        && g["wal"]["messages"].as_u64().unwrap_or(u64::MAX) < TOTAL - 8_192
                })
            })
        },
    )
    .await;
    eventually("every node healthy", Duration::from_secs(10), async || {
        all.iter()
            .all(|p| common::http_get(p.monitor, "/healthz").0 == 200)
    })
    .await;
    let (_, _, body) = common::http_get(all[held].monitor, "/metrics");
    let metrics = String::from_utf8_lossy(&body);
    assert!(
        metrics.contains("meshbroker_raft_group_first_index{account=\"$G\",group=\"S-R3F-"),
        "{metrics}"
    );

    // A compacted node killed and restarted starts after its compaction point.
    let restarted = (away + 1) % 3;
    let before = raftz_group(&all[restarted]).unwrap()["wal"]["first_seq"]
        .as_u64()
        .unwrap();
    all[restarted].kill9();
    all[restarted].start(&configs[restarted]);
    eventually(
        "the restarted node runs the group from its compacted log",
        Duration::from_secs(30),
        async || {
            raftz_group(&all[restarted]).is_some_and(|g| {
                g["wal"]["first_seq"].as_u64() == Some(before) && g["leader"].is_string()
            })
        },
    )
    .await;
    eventually(
        "the restarted node holds every message",
        Duration::from_secs(30),
        async || all[restarted].jsz()["messages"].as_u64() == Some(TOTAL),
    )
    .await;
    // Still one JetStream that takes publishes and acks them.
    js.publish("cmp.after", "after".into())
        .await
        .unwrap()
        .await
        .unwrap();
    for p in all.iter_mut() {
        p.stop();
    }
    let history = stored(&all[0], "cmp");
    let (after, acked) = history.split_last().unwrap();
    assert_eq!(after.2, b"after");
    assert_once_each(acked, &load.acked(), all[0].name);
    for p in &all[1..] {
        assert!(
            stored(p, "cmp") == history,
            "{} holds another history",
            p.name
        );
    }
}

/// A node whose store is lost, replaced as the README says: started on an empty
/// store it finds out from its leader (from the first heartbeat, which says it had
/// acknowledged entries it no longer holds, or from a new leader, which compacted
/// entries every voter held), says so and stays out of the groups rather than vote with a memory
/// it lost; on a copy of a stopped replica's store it rejoins and holds every
/// message, the same history as the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_store_is_lost_is_replaced_from_a_copy_of_a_replica() {
    // Past two compaction intervals.
    const TOTAL: u64 = 9_000;
    let mut all = peers("replace");
    let configs: Vec<String> = all.iter().map(|p| p.config(&all)).collect();
    let (js, _) = r3_cluster(&mut all, "rep", &[0, 1, 2]).await;
    let load = Load::default();
    load.clone().run(js.clone(), "rep", TOTAL).await;
    eventually("every log compacted", Duration::from_secs(30), async || {
        all.iter().all(|p| {
            raftz_group(p).is_some_and(|g| g["wal"]["first_seq"].as_u64().unwrap_or(0) > 4_096)
        })
    })
    .await;

    // n3 leads the stream when its disk is lost, so the leader it comes back to has
    // never heard from it: only the compaction point can tell it what it lost.
    let to = all[2].name;
    let body = format!(r#"{{"placement":{{"preferred":"{to}"}}}}"#);
    if stream_leader(&js, "rep", Duration::from_secs(5)).await != to {
        let client = async_nats::connect(all[0].client.to_string())
            .await
            .unwrap();
        let done = api(&client, "$JS.API.STREAM.LEADER.STEPDOWN.rep", &body).await;
        assert_eq!(done["success"], true, "{done}");
    }
    eventually("n3 leads the stream", Duration::from_secs(10), async || {
        stream_leader(&js, "rep", Duration::from_secs(5)).await == to
    })
    .await;

    // n3's disk is lost: it comes back empty and cannot catch up.
    all[2].kill9();
    std::fs::remove_dir_all(all[2].dir.join("js")).unwrap();
    all[2].start(&configs[2]);
    eventually(
        "n3 saying its store was lost",
        Duration::from_secs(20),
        async || {
            all[2]
                .log_text()
                .contains("its store was lost; the group stops")
        },
    )
    .await;
    let log = all[2].log_text();
    let told = log.lines().filter(|l| l.contains("its store was lost"));
    eprintln!("n3: {}", told.collect::<Vec<_>>().join("\n"));
    assert!(!log.contains("panicked"));
    // Unhealthy: its meta group stopped, or (had the meta leader first sent it the
    // meta log from the start) its stream's group.
    let (code, _, body) = common::http_get(all[2].monitor, "/healthz");
    let body = String::from_utf8_lossy(&body);
    assert_eq!(code, 503, "{body}");
    assert!(
        body.contains("JetStream meta layer is not running")
            || body.contains("JetStream stream '$G > rep' is not current"),
        "{body}"
    );
    assert_ne!(all[2].jsz()["messages"].as_u64(), Some(TOTAL));

    // Replaced: n2 stopped, its store copied to n3, both started.
    all[2].kill9();
    all[1].stop();
    std::fs::remove_dir_all(all[2].dir.join("js")).unwrap();
    let copied = std::process::Command::new("cp")
        .arg("-a")
        .arg(all[1].dir.join("js"))
        .arg(all[2].dir.join("js"))
        .status()
        .unwrap();
    assert!(copied.success());
    all[1].start(&configs[1]);
    all[2].start(&configs[2]);
    // Acked once the restarted nodes have a leader (retried with one id each).
    for i in 0..100 {
        let id = format!("after-{i}");
        eventually(
            "an ack after the replacement",
            Duration::from_secs(30),
            async || {
                let mut headers = async_nats::HeaderMap::new();
                headers.insert("Nats-Msg-Id", id.as_str());
                match js
                    .publish_with_headers(format!("rep.after.{i}"), headers, "after".into())
                    .await
                {
                    Ok(ack) => ack.await.is_ok(),
                    Err(_) => false,
                }
            },
        )
        .await;
    }
    eventually(
        "the replaced node holds every message",
        Duration::from_secs(30),
        async || all[2].jsz()["messages"].as_u64() == Some(TOTAL + 100),
    )
    .await;
    eventually(
        "the replaced node healthy",
        Duration::from_secs(10),
        async || common::http_get(all[2].monitor, "/healthz").0 == 200,
    )
    .await;
    for p in all.iter_mut() {
        p.stop();
    }
    let history = stored(&all[0], "rep");
    assert_eq!(history.len() as u64, TOTAL + 100);
    let (before, after) = history.split_at(TOTAL as usize);
    assert!(after.iter().all(|(_, _, p)| p == b"after"));
    assert_once_each(before, &load.acked(), all[0].name);
    for p in &all[1..] {
        assert!(
            stored(p, "rep") == history,
            "{} holds another history",
            p.name
        );
    }
}

/// A deleted R3 stream takes its Raft log and state with it on every replica: the
/// store holds the meta group's log only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_r3_stream_leaves_no_raft_log_behind() {
    let mut all = peers("dellog");
    let (js, _) = r3_cluster(&mut all, "gone", &[0]).await;
    for i in 0..10 {
        js.publish(format!("gone.{i}"), "x".into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    js.delete_stream("gone").await.unwrap();
    eventually(
        "no stream group left",
        Duration::from_secs(10),
        async || all.iter().all(|p| raftz_group(p).is_none()),
    )
    .await;
    for p in all.iter_mut() {
        p.stop();
    }
    for p in &all {
        let logs = with_store(p, |store| store.raft_logs().unwrap());
        assert_eq!(logs, ["raft/0"], "{}", p.name);
    }
}

/// The meta group's log on `peer`, as its `/raftz` shows it.
fn meta_wal(peer: &Peer) -> serde_json::Value {
    common::http_get_json(peer.monitor, "/raftz")["$SYS"]["_meta_"]["wal"].clone()
}

/// The meta log compacts to a snapshot of the assignments once every peer holds its
/// entries: a node `kill -9`ed after that starts from the snapshot and its log, knows
/// every stream and runs its replicated stream's group again; a meta leader whose
/// store is lost is told so by the leader elected without it (which compacted
/// entries every voter held) and stays out instead of rejoining with its votes
/// forgotten (before the meta log compacted, nothing could tell it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_meta_log_compacts_to_a_snapshot_and_a_node_restarts_from_it() {
    let mut all = peers("metasnap");
    let configs: Vec<String> = all.iter().map(|p| p.config(&all)).collect();
    let (js, _) = r3_cluster(&mut all, "keep", &[0]).await;
    for i in 0..10 {
        js.publish(format!("keep.{i}"), "x".into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    // Past the meta group's interval (64 entries): 45 creates and 25 deletes.
    for i in 0..45 {
        js.create_stream(stream::Config {
            name: format!("m{i}"),
            subjects: vec![format!("m{i}.>")],
            ..Default::default()
        })
        .await
        .unwrap();
    }
    for i in 0..25 {
        js.delete_stream(format!("m{i}")).await.unwrap();
    }
    let mut expected: Vec<String> = (25..45).map(|i| format!("m{i}")).collect();
    expected.push("keep".into());
    expected.sort();
    eventually(
        "every meta log compacted",
        Duration::from_secs(20),
        async || {
            all.iter()
                .all(|p| meta_wal(p)["first_seq"].as_u64().unwrap_or(0) > 60)
        },
    )
    .await;

    // A follower of the meta group killed and restarted: from its snapshot.
    let leader = wait_leader(&all, Duration::from_secs(10));
    let y = all.iter().position(|p| p.name != leader).unwrap();
    let first = meta_wal(&all[y])["first_seq"].as_u64().unwrap();
    all[y].kill9();
    all[y].start(&configs[y]);
    wait_leader(&all, Duration::from_secs(20));
    assert!(meta_wal(&all[y])["first_seq"].as_u64().unwrap() >= first);
    let on_y = js_on(&all[y]).await;
    eventually(
        "the restarted node knows every stream",
        Duration::from_secs(20),
        async || names(&on_y).await == expected,
    )
    .await;
    on_y.publish("keep.after", "x".into())
        .await
        .unwrap()
        .await
        .unwrap();
    eventually(
        "the restarted node's replica takes new messages",
        Duration::from_secs(20),
        async || all[y].jsz()["messages"].as_u64() == Some(11),
    )
    .await;
    eventually(
        "the restarted node healthy",
        Duration::from_secs(20),
        async || common::http_get(all[y].monitor, "/healthz").0 == 200,
    )
    .await;
    let log = all[y].log_text();
    assert!(!log.contains("cannot start"), "{log}");
    assert!(!log.contains("panicked"), "{log}");

    // The meta leader's store is lost while it is down; the others elect a leader.
    let lost = all.iter().position(|p| p.name == leader).unwrap();
    all[lost].kill9();
    std::fs::remove_dir_all(all[lost].dir.join("js")).unwrap();
    let new_leader = wait_leader(&all, Duration::from_secs(20));
    assert_ne!(new_leader, leader);
    all[lost].start(&configs[lost]);
    eventually(
        "the node without its store told by the new meta leader",
        Duration::from_secs(20),
        async || {
            all[lost].log_text().lines().any(|l| {
                l.contains("raft group 0:")
                    && l.contains("compacted its log to")
                    && l.contains("its store was lost")
            })
        },
    )
    .await;
    let (code, _, body) = common::http_get(all[lost].monitor, "/healthz");
    assert_eq!(code, 503, "{}", String::from_utf8_lossy(&body));
    // The other two are one JetStream still.
    let other = all
        .iter()
        .position(|p| p.name != leader && p.process.is_some())
        .unwrap();
    assert_eq!(names(&js_on(&all[other]).await).await, expected);
}

/// The next advisory on `sub` whose subject is `subject`, skipping others.
async fn advisory(sub: &mut async_nats::Subscriber, subject: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let m = tokio::time::timeout(left, sub.next())
            .await
            .unwrap_or_else(|_| panic!("no {subject} within 15 s"))
            .unwrap();
        if m.subject.as_str() == subject {
            return serde_json::from_slice(&m.payload).unwrap();
        }
    }
}

/// Leader changes and a lost quorum are advised as nats-server 2.15.1 advises them in
/// a 3-node cluster (`src/jetstream/advisory.rs` holds its bytes): each in the
/// stream's account and, naming the account, in the system account, with one id;
/// a stream's election names its consumers' too (their state is its group's). The
/// meta leader stepdown is the system account's: answered there, refused with the
/// reference's errors, and the new meta leader advised there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_changes_and_a_lost_quorum_are_advised_as_the_reference_does() {
    let mut all = peers("advise");
    let accounts =
        "[accounts.APP]\nusers = [{ user = \"app\", password = \"app\" }]\njetstream = true\n\
                    [accounts.SYS]\nusers = [{ user = \"sys\", password = \"sys\" }]\n";
    let configs: Vec<String> = all
        .iter()
        .map(|p| format!("system_account = \"SYS\"\n{}{accounts}", p.config(&all)))
        .collect();
    for (p, c) in all.iter_mut().zip(&configs) {
        p.start(c);
    }
    wait_leader(&all, Duration::from_secs(20));
    let login = async |user: &str| {
        async_nats::ConnectOptions::with_user_and_password(user.into(), user.into())
            .connect(all[0].client.to_string())
            .await
            .unwrap()
    };
    let app = login("app").await;
    let sys = login("sys").await;
    let mut app_events = app.subscribe("$JS.EVENT.ADVISORY.>").await.unwrap();
    let mut sys_events = sys.subscribe("$JS.EVENT.ADVISORY.>").await.unwrap();
    app.flush().await.unwrap();
    sys.flush().await.unwrap();
    let mut js = jetstream::new(app.clone());
    js.set_timeout(Duration::from_secs(5));
    js.create_stream(stream::Config {
        name: "S".into(),
        subjects: vec!["s.>".into()],
        num_replicas: 3,
        ..Default::default()
    })
    .await
    .unwrap();
    let elected = "$JS.EVENT.ADVISORY.STREAM.LEADER_ELECTED.S";
    let first = advisory(&mut app_events, elected).await;
    assert_eq!(
        first["type"], "io.nats.jetstream.advisory.v1.stream_leader_elected",
        "{first}"
    );
    assert!(first.get("account").is_none(), "{first}");
    let leader = stream_leader(&js, "S", Duration::from_secs(10)).await;
    assert_eq!(first["leader"], leader.as_str());
    let names: Vec<&str> = first["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, NAMES, "{first}");
    let copy = advisory(&mut sys_events, elected).await;
    assert_eq!(copy["account"], "APP", "{copy}");
    assert_eq!(copy["id"], first["id"]);
    durable(&js, "S", "C").await;

    // A stepdown to n1: the stream's and its consumer's new leader advised.
    let step = async |client: &async_nats::Client, subject: &str, body: &str| {
        let m = client
            .request(subject.to_string(), body.to_string().into())
            .await
            .unwrap();
        serde_json::from_slice::<serde_json::Value>(&m.payload).unwrap()
    };
    if leader != "n1" {
        let body = r#"{"placement":{"preferred":"n1"}}"#;
        let done = step(&app, "$JS.API.STREAM.LEADER.STEPDOWN.S", body).await;
        assert_eq!(done["success"], true, "{done}");
        let again = advisory(&mut app_events, elected).await;
        assert_eq!(again["leader"], "n1", "{again}");
        let c = advisory(
            &mut app_events,
            "$JS.EVENT.ADVISORY.CONSUMER.LEADER_ELECTED.S.C",
        )
        .await;
        assert_eq!(
            (
                c["type"].as_str(),
                c["consumer"].as_str(),
                c["leader"].as_str()
            ),
            (
                Some("io.nats.jetstream.advisory.v1.consumer_leader_elected"),
                Some("C"),
                Some("n1")
            ),
            "{c}"
        );
    }

    // The meta stepdown: the system account's, with the reference's answers.
    let meta = "$JS.API.META.LEADER.STEPDOWN";
    let nope = step(&sys, meta, r#"{"placement":{"preferred":"nope"}}"#).await;
    assert_eq!(
        nope["error"]["description"], r#"preferred server "nope" not known"#,
        "{nope}"
    );
    assert_eq!(
        nope["type"],
        "io.nats.jetstream.api.v1.meta_leader_stepdown_response"
    );
    let meta_leader = wait_leader(&all, Duration::from_secs(10));
    let body = format!(r#"{{"placement":{{"preferred":"{meta_leader}"}}}}"#);
    let already = step(&sys, meta, &body).await;
    assert_eq!(already["error"]["err_code"], 10005, "{already}");
    let bad = step(&sys, meta, "{bad").await;
    assert_eq!(bad["error"]["err_code"], 10025, "{bad}");
    let done = step(&sys, meta, "").await;
    assert_eq!(done["success"], true, "{done}");
    let domain = advisory(&mut sys_events, "$JS.EVENT.ADVISORY.DOMAIN.LEADER_ELECTED").await;
    assert_eq!(domain["cluster"], "js", "{domain}");
    let new_meta = wait_leader(&all, Duration::from_secs(10));
    assert_ne!(new_meta, meta_leader);
    // n1 leads the meta group too when it loses its followers below.
    if new_meta != "n1" {
        let done = step(&sys, meta, r#"{"placement":{"preferred":"n1"}}"#).await;
        assert_eq!(done["success"], true, "{done}");
        eventually(
            "n1 leads the meta group",
            Duration::from_secs(10),
            async || wait_leader(&all, Duration::from_secs(10)) == "n1",
        )
        .await;
    }
    // From the application's account the request gets no answer, as there.
    let from_app = tokio::time::timeout(
        Duration::from_secs(2),
        app.request(meta.to_string(), "".into()),
    )
    .await;
    assert!(!matches!(from_app, Ok(Ok(_))), "{from_app:?}");

    // n1 leads the stream and loses both followers: quorum lost, for the stream and
    // its consumer, in both accounts.
    assert_eq!(stream_leader(&js, "S", Duration::from_secs(10)).await, "n1");
    all[1].kill9();
    all[2].kill9();
    let lost = advisory(&mut app_events, "$JS.EVENT.ADVISORY.STREAM.QUORUM_LOST.S").await;
    assert_eq!(
        lost["type"], "io.nats.jetstream.advisory.v1.stream_quorum_lost",
        "{lost}"
    );
    assert_eq!(lost["replicas"].as_array().map(Vec::len), Some(3), "{lost}");
    advisory(
        &mut app_events,
        "$JS.EVENT.ADVISORY.CONSUMER.QUORUM_LOST.S.C",
    )
    .await;
    let copy = advisory(&mut sys_events, "$JS.EVENT.ADVISORY.STREAM.QUORUM_LOST.S").await;
    assert_eq!(copy["account"], "APP", "{copy}");
}

/// A fault schedule under an async load (ids, retries): six faults one after the
/// other, each on a node picked by a seeded generator (the seed is printed; set
/// `NEMESIS_SEED` to replay one): `kill -9` and a restart a second later, a pause
/// (SIGSTOP, 2 s, SIGCONT), `kill -9` of the stream's leader. After each fault every
/// node must be healthy (`/healthz` 200: current with its groups' leaders) again
/// within 30 s (the times are printed). Then: every acked message stored once on
/// every replica, one history on all three, read from disk after a clean stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fault_schedule_under_load_loses_no_acked_message() {
    let seed: u64 = std::env::var("NEMESIS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    eprintln!("NEMESIS_SEED={seed}");
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut all = peers("nemesis");
    let configs: Vec<String> = all.iter().map(|p| p.config(&all)).collect();
    let (js, _) = r3_cluster(&mut all, "nem", &[0, 1, 2]).await;
    let load = Load::default();
    let publisher = tokio::spawn(load.clone().run(js.clone(), "nem", u64::MAX));
    eventually("publishes under way", Duration::from_secs(30), async || {
        load.acked().len() >= 500
    })
    .await;
    let mut recovered = Vec::new();
    for round in 0..6 {
        let victim = rng.usize(..3);
        let started = Instant::now();
        let what = match round % 3 {
            0 => {
                all[victim].kill9();
                tokio::time::sleep(Duration::from_secs(1)).await;
                all[victim].start(&configs[victim]);
                format!("kill -9 {}", all[victim].name)
            }
            1 => {
                all[victim].signal(libc::SIGSTOP);
                tokio::time::sleep(Duration::from_secs(2)).await;
                all[victim].signal(libc::SIGCONT);
                format!("pause {}", all[victim].name)
            }
            _ => {
                let leader = stream_leader(&js, "nem", Duration::from_secs(20)).await;
                let at = all.iter().position(|p| p.name == leader).unwrap();
                all[at].kill9();
                tokio::time::sleep(Duration::from_secs(1)).await;
                all[at].start(&configs[at]);
                format!("kill -9 the leader {leader}")
            }
        };
        let acked_before = load.acked().len();
        eventually(
            &format!("every node healthy after round {round} ({what})"),
            Duration::from_secs(30),
            async || {
                all.iter()
                    .all(|p| common::http_get(p.monitor, "/healthz").0 == 200)
            },
        )
        .await;
        recovered.push((what, started.elapsed()));
        // Acks go on between faults.
        eventually(
            &format!("acks after round {round}"),
            Duration::from_secs(30),
            async || load.acked().len() > acked_before + 100,
        )
        .await;
    }
    load.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let retries = publisher.await.unwrap();
    let acked = load.acked();
    eprintln!(
        "{} acked, {retries} retried; fault to every node healthy: {}",
        acked.len(),
        recovered
            .iter()
            .map(|(what, d)| format!("{what} {:.1} s", d.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(", ")
    );
    eventually(
        "every replica holds every acked message",
        Duration::from_secs(30),
        async || {
            all.iter()
                .all(|p| p.jsz()["messages"].as_u64() >= Some(acked.len() as u64))
        },
    )
    .await;
    for p in all.iter_mut() {
        p.stop();
    }
    let history = stored(&all[0], "nem");
    assert_once_each(&history, &acked, all[0].name);
    for p in &all[1..] {
        assert!(
            stored(p, "nem") == history,
            "{} holds another history (seed {seed})",
            p.name
        );
    }
}
