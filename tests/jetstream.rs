//! JetStream as a user of the official Rust client (`async-nats`) sees it: streams,
//! publish acks, pull and push consumers, key/value, object store, restarts. The
//! stream, consumer, key/value and object-store scenarios run twice: on one node,
//! and on three meshbroker processes with every stream R3, each step's client on
//! another node than the last.

mod common;

use std::time::Duration;

use async_nats::jetstream::{self, consumer, kv, object_store, stream};
use futures::StreamExt;
use tokio::io::AsyncReadExt;

use common::jscluster::{self, Peer};
use common::{jetstream_config, start, TempDir};

const WAIT: Duration = Duration::from_secs(10);

async fn connect(node: &meshbroker::Node) -> (async_nats::Client, jetstream::Context) {
    connect_url(&node.client_url()).await
}

async fn connect_url(url: &str) -> (async_nats::Client, jetstream::Context) {
    let client = async_nats::connect(url).await.unwrap();
    let js = jetstream::new(client.clone());
    (client, js)
}

/// Where a scenario runs.
enum Target {
    /// One in-process node.
    One {
        node: Box<meshbroker::Node>,
        _dir: TempDir,
    },
    /// Three meshbroker processes, one JetStream: every stream R3.
    Three(Vec<Peer>),
}

impl Target {
    fn one(tag: &str) -> Target {
        let dir = TempDir::new(tag);
        let node = start(jetstream_config(&dir));
        Target::One {
            node: Box::new(node),
            _dir: dir,
        }
    }

    fn three(tag: &str) -> Target {
        Target::Three(jscluster::started(tag))
    }

    fn replicas(&self) -> usize {
        match self {
            Target::One { .. } => 1,
            Target::Three(peers) => peers.len(),
        }
    }

    /// A client on node `i` (modulo the node count).
    async fn connect(&self, i: usize) -> (async_nats::Client, jetstream::Context) {
        match self {
            Target::One { node, .. } => connect(node).await,
            Target::Three(peers) => {
                connect_url(&format!("nats://{}", peers[i % peers.len()].client)).await
            }
        }
    }
}

fn orders(replicas: usize) -> stream::Config {
    stream::Config {
        name: "ORDERS".into(),
        subjects: vec!["orders.>".into()],
        num_replicas: replicas,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_publish_acks_and_info() {
    streams_publish_acks_and_info_on(&Target::one("js-basic")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_publish_acks_and_info_r3() {
    streams_publish_acks_and_info_on(&Target::three("js-basic")).await;
}

async fn streams_publish_acks_and_info_on(t: &Target) {
    let (_client, js) = t.connect(0).await;

    let mut s = js.create_stream(orders(t.replicas())).await.unwrap();
    assert_eq!(s.info().await.unwrap().config.max_messages, -1);
    // Creating it again with the same config is fine; a different one is not.
    js.create_stream(orders(t.replicas())).await.unwrap();
    let mut other = orders(t.replicas());
    other.max_messages = 5;
    assert!(js.create_stream(other).await.is_err());
    // Overlapping subjects are refused.
    let overlap = stream::Config {
        name: "OTHER".into(),
        subjects: vec!["orders.eu.*".into()],
        ..Default::default()
    };
    let err = js.create_stream(overlap).await.unwrap_err();
    assert!(err.to_string().contains("overlap"), "{err}");

    // Published through another node than the one the stream was created on.
    let (_, js) = t.connect(1).await;
    for i in 1..=5u64 {
        let ack = js
            .publish(format!("orders.{i}"), "payload".into())
            .await
            .unwrap()
            .await
            .unwrap();
        assert_eq!((ack.stream.as_str(), ack.sequence), ("ORDERS", i));
    }
    // Dedupe by Nats-Msg-Id.
    let mut h = async_nats::HeaderMap::new();
    h.insert("Nats-Msg-Id", "m-1");
    let first = js
        .publish_with_headers("orders.x", h.clone(), "a".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let again = js
        .publish_with_headers("orders.x", h, "a".into())
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eq!(first.sequence, 6);
    assert!(!first.duplicate);
    assert_eq!((again.sequence, again.duplicate), (6, true));
    // Expected last sequence.
    let wrong = js
        .send_publish(
            "orders.y",
            jetstream::message::PublishMessage::build()
                .payload("b".into())
                .expected_last_sequence(3),
        )
        .await
        .unwrap()
        .await;
    assert!(wrong.is_err());

    // Read through a third.
    let (_, js) = t.connect(2).await;
    let mut s = js.get_stream("ORDERS").await.unwrap();
    let info = s.info().await.unwrap();
    assert_eq!(info.state.messages, 6);
    assert_eq!(info.state.last_sequence, 6);
    assert_eq!(info.state.first_sequence, 1);

    let msg = s.get_raw_message(2).await.unwrap();
    assert_eq!(msg.subject.as_str(), "orders.2");
    assert_eq!(&msg.payload[..], b"payload");
    let last = s.get_last_raw_message_by_subject("orders.x").await.unwrap();
    assert_eq!(last.sequence, 6);
    s.delete_message(3).await.unwrap();
    assert!(s.get_raw_message(3).await.is_err());

    let names: Vec<String> = js.stream_names().map(|n| n.unwrap()).collect().await;
    assert_eq!(names, vec!["ORDERS".to_string()]);
    let purged = s.purge().filter("orders.1").await.unwrap();
    assert_eq!(purged.purged, 1);
    let purged = s.purge().await.unwrap();
    assert_eq!(purged.purged, 4);
    let info = s.info().await.unwrap();
    assert_eq!((info.state.messages, info.state.first_sequence), (0, 7));
    js.delete_stream("ORDERS").await.unwrap();
    assert!(js.get_stream("ORDERS").await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_consumer_fetch_ack_and_redelivery() {
    pull_consumer_fetch_ack_and_redelivery_on(&Target::one("js-pull")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_consumer_fetch_ack_and_redelivery_r3() {
    pull_consumer_fetch_ack_and_redelivery_on(&Target::three("js-pull")).await;
}

async fn pull_consumer_fetch_ack_and_redelivery_on(t: &Target) {
    let (_client, js) = t.connect(0).await;
    js.create_stream(orders(t.replicas())).await.unwrap();
    let (_, js) = t.connect(1).await;
    for i in 0..10 {
        js.publish(format!("orders.{i}"), format!("m{i}").into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let (_, consuming) = t.connect(2).await;
    let s = consuming.get_stream("ORDERS").await.unwrap();
    let mut c: consumer::PullConsumer = s
        .create_consumer(consumer::pull::Config {
            durable_name: Some("C".into()),
            ack_wait: Duration::from_millis(500),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(c.info().await.unwrap().num_pending, 10);

    let mut batch = c.fetch().max_messages(4).messages().await.unwrap();
    let mut got = Vec::new();
    while let Some(m) = tokio::time::timeout(WAIT, batch.next()).await.unwrap() {
        let m = m.unwrap();
        got.push(String::from_utf8_lossy(&m.payload).to_string());
        // Ack all but the second.
        if got.len() != 2 {
            m.double_ack().await.unwrap();
        }
    }
    assert_eq!(got, vec!["m0", "m1", "m2", "m3"]);
    let info = c.info().await.unwrap();
    assert_eq!(info.num_ack_pending, 1);
    assert_eq!(info.num_pending, 6);
    assert_eq!(info.ack_floor.stream_sequence, 1);
    assert_eq!(info.delivered.stream_sequence, 4);

    // After the ack wait the unacked one comes back first.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let mut batch = c.fetch().max_messages(2).messages().await.unwrap();
    let m = tokio::time::timeout(WAIT, batch.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(&m.payload[..], b"m1");
    assert_eq!(m.info().unwrap().delivered, 2);
    m.double_ack().await.unwrap();

    // A no-wait fetch on an empty consumer ends at once.
    let mut rest = c.batch().max_messages(100).messages().await.unwrap();
    let mut n = 0;
    while let Some(m) = tokio::time::timeout(WAIT, rest.next()).await.unwrap() {
        m.unwrap().ack().await.unwrap();
        n += 1;
        if n == 6 {
            break;
        }
    }
    assert_eq!(n, 6);
    // Its request (94 more wanted) ends with its subscription.
    drop(rest);
    let mut empty = c.fetch().max_messages(5).messages().await.unwrap();
    let end = tokio::time::timeout(WAIT, empty.next()).await.unwrap();
    assert!(end.is_none(), "no messages: the fetch ends");

    // The messages() stream keeps pulling as new messages arrive.
    let mut stream = c.messages().await.unwrap();
    js.publish("orders.new", "late".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let m = tokio::time::timeout(WAIT, stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(&m.payload[..], b"late");
    m.ack().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_value_bucket() {
    key_value_bucket_on(&Target::one("js-kv")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_value_bucket_r3() {
    key_value_bucket_on(&Target::three("js-kv")).await;
}

async fn key_value_bucket_on(t: &Target) {
    let (_client, js) = t.connect(0).await;
    let kv = js
        .create_key_value(kv::Config {
            bucket: "cfg".into(),
            history: 3,
            num_replicas: t.replicas(),
            ..Default::default()
        })
        .await
        .unwrap();
    let r1 = kv.put("a", "1".into()).await.unwrap();
    let r2 = kv.put("a", "2".into()).await.unwrap();
    assert_eq!(kv.get("a").await.unwrap().as_deref(), Some(&b"2"[..]));
    assert!(kv.get("missing").await.unwrap().is_none());
    // create fails on an existing key; update needs the right revision.
    assert!(kv.create("a", "x".into()).await.is_err());
    assert!(kv.update("a", "3".into(), r1).await.is_err());
    let r3 = kv.update("a", "3".into(), r2).await.unwrap();
    assert!(r3 > r2);
    kv.create("b", "1".into()).await.unwrap();
    let entry = kv.entry("a").await.unwrap().unwrap();
    assert_eq!(entry.revision, r3);

    // Another node's client reads and watches the same bucket.
    let (_, js) = t.connect(1).await;
    let kv = js.get_key_value("cfg").await.unwrap();
    let mut keys: Vec<String> = kv.keys().await.unwrap().map(|k| k.unwrap()).collect().await;
    keys.sort();
    assert_eq!(keys, vec!["a", "b"]);

    let history: Vec<_> = kv
        .history("a")
        .await
        .unwrap()
        .map(|e| e.unwrap().revision)
        .collect()
        .await;
    assert_eq!(history, vec![r1, r2, r3]);

    let mut watch = kv.watch("a").await.unwrap();
    kv.put("a", "4".into()).await.unwrap();
    let seen = tokio::time::timeout(WAIT, watch.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(&seen.value[..], b"4");

    kv.delete("b").await.unwrap();
    assert!(kv.get("b").await.unwrap().is_none());
    kv.purge("a").await.unwrap();
    assert!(kv.get("a").await.unwrap().is_none());
    // A deleted key can be created again.
    kv.create("b", "again".into()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn object_store_round_trip() {
    object_store_round_trip_on(&Target::one("js-obj")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn object_store_round_trip_r3() {
    object_store_round_trip_on(&Target::three("js-obj")).await;
}

async fn object_store_round_trip_on(t: &Target) {
    let (_client, js) = t.connect(0).await;
    let store = js
        .create_object_store(object_store::Config {
            bucket: "files".into(),
            num_replicas: t.replicas(),
            ..Default::default()
        })
        .await
        .unwrap();
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    store.put("blob.bin", &mut data.as_slice()).await.unwrap();
    let (_, js) = t.connect(1).await;
    let store = js.get_object_store("files").await.unwrap();
    let mut obj = store.get("blob.bin").await.unwrap();
    let mut back = Vec::new();
    obj.read_to_end(&mut back).await.unwrap();
    assert_eq!(back.len(), data.len());
    assert!(back == data);
    let info = store.info("blob.bin").await.unwrap();
    assert_eq!(info.size, data.len());
    store.delete("blob.bin").await.unwrap();
    assert!(store.get("blob.bin").await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_messages_sequences_and_consumer_position() {
    let dir = TempDir::new("js-restart");
    {
        let node = start(jetstream_config(&dir));
        let (_client, js) = connect(&node).await;
        let s = js.create_stream(orders(1)).await.unwrap();
        for i in 0..20 {
            js.publish(format!("orders.{i}"), format!("m{i}").into())
                .await
                .unwrap()
                .await
                .unwrap();
        }
        let c: consumer::PullConsumer = s
            .create_consumer(consumer::pull::Config {
                durable_name: Some("C".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        let mut batch = c.fetch().max_messages(5).messages().await.unwrap();
        while let Some(m) = tokio::time::timeout(WAIT, batch.next()).await.unwrap() {
            m.unwrap().double_ack().await.unwrap();
        }
        node.shutdown();
    }
    let node = start(jetstream_config(&dir));
    let (_client, js) = connect(&node).await;
    let mut s = js.get_stream("ORDERS").await.unwrap();
    let info = s.info().await.unwrap();
    assert_eq!((info.state.messages, info.state.last_sequence), (20, 20));
    let ack = js
        .publish("orders.after", "x".into())
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eq!(ack.sequence, 21);
    let mut c: consumer::PullConsumer = s.get_consumer("C").await.unwrap();
    let ci = c.info().await.unwrap();
    assert_eq!(ci.ack_floor.stream_sequence, 5);
    assert_eq!(ci.num_pending, 16);
    let mut batch = c.fetch().max_messages(1).messages().await.unwrap();
    let m = tokio::time::timeout(WAIT, batch.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(&m.payload[..], b"m5");
}

/// `jetstream.max_file` / `max_memory`: a stream that would reserve more than the node
/// allows is refused at creation (10047 / 10028); once stored bytes pass the limit,
/// publishes are refused with the reference's 503 / 10023 and nothing more is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_storage_limits_refuse_streams_and_publishes() {
    let dir = TempDir::new("js-limits");
    let mut config = jetstream_config(&dir);
    config.jetstream.max_file = meshbroker::config::Size(4096);
    config.jetstream.max_memory = meshbroker::config::Size(2048);
    let node = start(config);
    let (client, js) = connect(&node).await;

    let too_big = js
        .create_stream(stream::Config {
            name: "BIG".into(),
            subjects: vec!["big".into()],
            max_bytes: 1 << 20,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(too_big.to_string().contains("10047"), "{too_big}");

    js.create_stream(stream::Config {
        name: "LIM".into(),
        subjects: vec!["lim".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let payload = bytes::Bytes::from(vec![b'x'; 500]);
    let mut stored = 0u64;
    let refusal = loop {
        let reply = tokio::time::timeout(WAIT, client.request("lim", payload.clone()))
            .await
            .unwrap()
            .unwrap();
        let ack: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap();
        if ack.get("error").is_some() {
            break ack;
        }
        stored += 1;
        assert!(stored < 100, "the limit never applied");
    };
    assert_eq!(refusal["error"]["code"], 503);
    assert_eq!(refusal["error"]["err_code"], 10023);
    assert_eq!(refusal["error"]["description"], "insufficient resources");
    // The publish that crossed 4096 bytes (each counts 500 + 3 + 30) was stored.
    assert_eq!(stored, 4096 / 533 + 1);
    let mut lim = js.get_stream("LIM").await.unwrap();
    assert_eq!(lim.info().await.unwrap().state.messages, stored);

    // Memory streams count against max_memory, not max_file.
    js.create_stream(stream::Config {
        name: "MEM".into(),
        subjects: vec!["mem".into()],
        storage: stream::StorageType::Memory,
        ..Default::default()
    })
    .await
    .unwrap();
    let ack = js.publish("mem", payload.clone()).await.unwrap().await;
    assert!(ack.is_ok(), "{ack:?}");
}

/// Push consumers as the client drives them: a durable one with flow control and idle
/// heartbeats delivering more than the flow-control window, an ordered one, deliver
/// policies, `max_deliver` and ack policy all, with consumer info checked at each step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_consumers_flow_control_ordered_and_policies() {
    push_consumers_flow_control_ordered_and_policies_on(&Target::one("js-push")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_consumers_flow_control_ordered_and_policies_r3() {
    push_consumers_flow_control_ordered_and_policies_on(&Target::three("js-push")).await;
}

async fn push_consumers_flow_control_ordered_and_policies_on(t: &Target) {
    let (_, js) = t.connect(0).await;
    js.create_stream(orders(t.replicas())).await.unwrap();
    // 3,000 messages of 1 KiB: past the 2 MiB flow-control window.
    let payload = bytes::Bytes::from(vec![b'p'; 1024]);
    let mut acks = Vec::new();
    for i in 0..3000 {
        acks.push(
            js.publish(format!("orders.{}", i % 3), payload.clone())
                .await
                .unwrap(),
        );
    }
    for a in acks {
        a.await.unwrap();
    }

    // Consumed by a client on another node.
    let (client, js) = t.connect(1).await;
    let s = js.get_stream("ORDERS").await.unwrap();
    let fc: consumer::PushConsumer = s
        .create_consumer(consumer::push::Config {
            durable_name: Some("FC".into()),
            deliver_subject: client.new_inbox(),
            flow_control: true,
            idle_heartbeat: Duration::from_millis(200),
            ack_policy: consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut msgs = fc.messages().await.unwrap();
    for i in 0..3000u64 {
        let m = tokio::time::timeout(WAIT, msgs.next())
            .await
            .expect("delivery stalled (flow control unanswered?)")
            .unwrap()
            .unwrap();
        assert_eq!(m.info().unwrap().stream_sequence, i + 1);
        m.ack().await.unwrap();
    }
    // Idle: heartbeats keep the client's stream alive, nothing else arrives.
    assert!(
        tokio::time::timeout(Duration::from_millis(700), msgs.next())
            .await
            .is_err(),
        "no message after the last one"
    );
    let info = js
        .get_stream("ORDERS")
        .await
        .unwrap()
        .consumer_info("FC")
        .await
        .unwrap();
    assert_eq!(info.num_pending, 0);
    assert_eq!(info.delivered.stream_sequence, 3000);
    drop(msgs);

    // Ordered: everything in order, from a filtered subject.
    let ordered = s
        .create_consumer(consumer::push::OrderedConfig {
            deliver_subject: client.new_inbox(),
            filter_subject: "orders.1".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut msgs = ordered.messages().await.unwrap();
    let mut last = 0;
    for _ in 0..1000 {
        let m = tokio::time::timeout(WAIT, msgs.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let seq = m.info().unwrap().stream_sequence;
        assert_eq!(m.subject.as_str(), "orders.1");
        assert!(seq > last);
        last = seq;
    }
    assert_eq!(last, 2999);
    drop(msgs);

    // Deliver last / new / by start sequence, ack all, max_deliver.
    let start_at = |policy: consumer::DeliverPolicy, name: &str| consumer::push::Config {
        durable_name: Some(name.into()),
        deliver_subject: format!("deliver.{name}"),
        deliver_policy: policy,
        ack_policy: consumer::AckPolicy::All,
        ack_wait: Duration::from_millis(300),
        max_deliver: 2,
        ..Default::default()
    };
    let last: consumer::PushConsumer = s
        .create_consumer(start_at(consumer::DeliverPolicy::Last, "LAST"))
        .await
        .unwrap();
    let mut msgs = last.messages().await.unwrap();
    let m = tokio::time::timeout(WAIT, msgs.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(m.info().unwrap().stream_sequence, 3000);
    // Not acked: redelivered once (max_deliver 2), then never again.
    let again = tokio::time::timeout(WAIT, msgs.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(again.info().unwrap().delivered, 2);
    assert!(
        tokio::time::timeout(Duration::from_millis(900), msgs.next())
            .await
            .is_err(),
        "max_deliver 2 stops redelivery"
    );
    drop(msgs);

    let from: consumer::PushConsumer = s
        .create_consumer(start_at(
            consumer::DeliverPolicy::ByStartSequence {
                start_sequence: 2990,
            },
            "FROM",
        ))
        .await
        .unwrap();
    let mut msgs = from.messages().await.unwrap();
    let mut tenth = None;
    for i in 0..11u64 {
        let m = tokio::time::timeout(WAIT, msgs.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(m.info().unwrap().stream_sequence, 2990 + i);
        if i == 9 {
            tenth = Some(m);
        }
    }
    // Ack all: acking the 10th acks the nine before it.
    tenth.unwrap().double_ack().await.unwrap();
    let info = js
        .get_stream("ORDERS")
        .await
        .unwrap()
        .consumer_info("FROM")
        .await
        .unwrap();
    assert_eq!(info.ack_floor.stream_sequence, 2999);
    assert_eq!(info.num_ack_pending, 1);
    drop(msgs);

    let new: consumer::PushConsumer = s
        .create_consumer(start_at(consumer::DeliverPolicy::New, "NEW"))
        .await
        .unwrap();
    let mut msgs = new.messages().await.unwrap();
    js.publish("orders.x", "fresh".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let m = tokio::time::timeout(WAIT, msgs.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(&m.payload[..], b"fresh");
    assert_eq!(m.info().unwrap().stream_sequence, 3001);
}
