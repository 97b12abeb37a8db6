//! The core protocol as a user of the official Rust client (`async-nats`) sees it.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use async_nats::{HeaderMap, HeaderValue};
use bytes::Bytes;
use futures::StreamExt;

use common::{settle, start, test_config};

const WAIT: Duration = Duration::from_secs(10);

async fn next(sub: &mut async_nats::Subscriber) -> async_nats::Message {
    tokio::time::timeout(WAIT, sub.next())
        .await
        .expect("message within the limit")
        .expect("subscription open")
}

/// Asserts that nothing arrives on `sub` for a short while.
async fn assert_quiet(sub: &mut async_nats::Subscriber) {
    if let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(200), sub.next()).await {
        panic!("unexpected message on {}", m.subject);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pub_sub_and_server_info() {
    let node = start(test_config());
    let client = async_nats::connect(node.client_url()).await.unwrap();
    let info = client.server_info();
    assert!(info.headers);
    assert_eq!(info.max_payload, 1024 * 1024);
    assert_eq!(info.port, node.client_addr().port());
    assert!(info.client_id > 0);

    let mut sub = client.subscribe("greet.joe").await.unwrap();
    client.publish("greet.joe", "hello".into()).await.unwrap();
    client.publish("greet.sue", "no".into()).await.unwrap();
    let m = next(&mut sub).await;
    assert_eq!(m.subject.as_str(), "greet.joe");
    assert_eq!(m.payload, Bytes::from("hello"));
    assert_quiet(&mut sub).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcards_match_as_the_reference() {
    let node = start(test_config());
    let subscriber = async_nats::connect(node.client_url()).await.unwrap();
    let publisher = async_nats::connect(node.client_url()).await.unwrap();
    let mut star = subscriber.subscribe("orders.*.created").await.unwrap();
    let mut full = subscriber.subscribe("orders.>").await.unwrap();
    let mut all = subscriber.subscribe(">").await.unwrap();
    settle(&subscriber).await;

    for subject in [
        "orders.eu.created",
        "orders.eu.deleted",
        "orders",
        "orders.a.b.c",
    ] {
        publisher.publish(subject, subject.into()).await.unwrap();
    }
    publisher.flush().await.unwrap();

    assert_eq!(next(&mut star).await.subject.as_str(), "orders.eu.created");
    assert_quiet(&mut star).await;
    let got: Vec<String> = vec![
        next(&mut full).await.subject.to_string(),
        next(&mut full).await.subject.to_string(),
        next(&mut full).await.subject.to_string(),
    ];
    assert_eq!(
        got,
        ["orders.eu.created", "orders.eu.deleted", "orders.a.b.c"]
    );
    assert_quiet(&mut full).await;
    for expected in [
        "orders.eu.created",
        "orders.eu.deleted",
        "orders",
        "orders.a.b.c",
    ] {
        let mut m = next(&mut all).await;
        // `>` also sees the settle round trip's inbox message.
        while m.subject.starts_with("_INBOX.") {
            m = next(&mut all).await;
        }
        assert_eq!(m.subject.as_str(), expected);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_group_delivers_each_message_to_exactly_one_member() {
    let node = start(test_config());
    let mut members = Vec::new();
    for _ in 0..3 {
        let c = async_nats::connect(node.client_url()).await.unwrap();
        let s = c.queue_subscribe("jobs", "workers".into()).await.unwrap();
        settle(&c).await;
        members.push((c, s));
    }
    let watcher = async_nats::connect(node.client_url()).await.unwrap();
    let mut plain = watcher.subscribe("jobs").await.unwrap();
    settle(&watcher).await;

    let publisher = async_nats::connect(node.client_url()).await.unwrap();
    const N: usize = 600;
    for i in 0..N {
        publisher
            .publish("jobs", i.to_string().into())
            .await
            .unwrap();
    }
    publisher.flush().await.unwrap();

    // The plain subscriber sees everything, in order.
    for i in 0..N {
        assert_eq!(next(&mut plain).await.payload, Bytes::from(i.to_string()));
    }
    // Every message reached exactly one member; every member got some.
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut per_member = Vec::new();
    for (_, sub) in &mut members {
        let mut count = 0;
        while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(300), sub.next()).await {
            *seen
                .entry(String::from_utf8_lossy(&m.payload).into_owned())
                .or_default() += 1;
            count += 1;
        }
        per_member.push(count);
    }
    assert_eq!(seen.len(), N, "every message delivered to the group");
    assert!(seen.values().all(|&c| c == 1), "no message delivered twice");
    assert!(per_member.iter().all(|&c| c > 0), "spread: {per_member:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_reply_and_no_responders() {
    let node = start(test_config());
    let service = async_nats::connect(node.client_url()).await.unwrap();
    let mut requests = service.subscribe("svc.echo").await.unwrap();
    settle(&service).await;
    let responder = tokio::spawn({
        let service = service.clone();
        async move {
            while let Some(req) = requests.next().await {
                let mut reply = b"echo: ".to_vec();
                reply.extend_from_slice(&req.payload);
                service
                    .publish(req.reply.unwrap(), reply.into())
                    .await
                    .unwrap();
            }
        }
    });

    let client = async_nats::connect(node.client_url()).await.unwrap();
    for i in 0..50 {
        let answer = tokio::time::timeout(WAIT, client.request("svc.echo", format!("{i}").into()))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(answer.payload, Bytes::from(format!("echo: {i}")));
    }

    let err = tokio::time::timeout(WAIT, client.request("svc.nobody", "?".into()))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(err.kind(), async_nats::RequestErrorKind::NoResponders);
    responder.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_with_multiple_values_per_key() {
    let node = start(test_config());
    let client = async_nats::connect(node.client_url()).await.unwrap();
    let mut sub = client.subscribe("h").await.unwrap();
    let mut headers = HeaderMap::new();
    headers.append("X-Trace", "one");
    headers.append("X-Trace", "two");
    headers.insert("Content-Type", "text/plain");
    client
        .publish_with_headers("h", headers, "body".into())
        .await
        .unwrap();
    let m = next(&mut sub).await;
    let got = m.headers.expect("headers arrive");
    let traces: Vec<&HeaderValue> = got.get_all("X-Trace").collect();
    assert_eq!(traces.len(), 2);
    assert_eq!(traces[0].as_str(), "one");
    assert_eq!(traces[1].as_str(), "two");
    assert_eq!(
        got.get("Content-Type").map(|v| v.as_str()),
        Some("text/plain")
    );
    assert_eq!(m.payload, Bytes::from("body"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribe_after_max_messages() {
    let node = start(test_config());
    let client = async_nats::connect(node.client_url()).await.unwrap();
    let mut sub = client.subscribe("limited").await.unwrap();
    sub.unsubscribe_after(3).await.unwrap();
    settle(&client).await;
    for i in 0..10 {
        client
            .publish("limited", i.to_string().into())
            .await
            .unwrap();
    }
    settle(&client).await;
    let mut got = Vec::new();
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(500), sub.next()).await {
        got.push(m.payload);
    }
    assert_eq!(
        got,
        vec![Bytes::from("0"), Bytes::from("1"), Bytes::from("2")]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payloads_up_to_max_payload() {
    let mut config = test_config();
    config.max_payload = meshbroker::config::Size(64 * 1024);
    let node = start(config);
    let client = async_nats::connect(node.client_url()).await.unwrap();
    assert_eq!(client.server_info().max_payload, 64 * 1024);
    let mut sub = client.subscribe("big").await.unwrap();
    settle(&client).await;
    for size in [0, 1, 4096, 64 * 1024] {
        let payload = Bytes::from(vec![b'x'; size]);
        client.publish("big", payload.clone()).await.unwrap();
        assert_eq!(next(&mut sub).await.payload.len(), size);
    }
    // One byte over: the client library refuses it before it reaches the wire.
    let over = client
        .publish("big", Bytes::from(vec![b'x'; 64 * 1024 + 1]))
        .await;
    assert!(
        over.is_err(),
        "the client enforces the max_payload from INFO"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_subscriptions_on_one_connection() {
    let node = start(test_config());
    let subscriber = async_nats::connect(node.client_url()).await.unwrap();
    let mut subs = Vec::new();
    for i in 0..10_000 {
        subs.push(subscriber.subscribe(format!("many.{i}")).await.unwrap());
    }
    settle(&subscriber).await;
    let publisher = async_nats::connect(node.client_url()).await.unwrap();
    for i in 0..10_000 {
        publisher
            .publish(format!("many.{i}"), i.to_string().into())
            .await
            .unwrap();
    }
    publisher.flush().await.unwrap();
    for (i, sub) in subs.iter_mut().enumerate() {
        let m = next(sub).await;
        assert_eq!(m.payload, Bytes::from(i.to_string()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_publisher_is_delivered_in_order() {
    let node = start(test_config());
    let subscriber = async_nats::connect(node.client_url()).await.unwrap();
    let mut sub = subscriber.subscribe("seq").await.unwrap();
    settle(&subscriber).await;
    let publisher = async_nats::connect(node.client_url()).await.unwrap();
    const N: u32 = 20_000;
    let sender = tokio::spawn(async move {
        for i in 0..N {
            publisher
                .publish("seq", i.to_be_bytes().to_vec().into())
                .await
                .unwrap();
        }
        publisher.flush().await.unwrap();
        publisher
    });
    for i in 0..N {
        let m = next(&mut sub).await;
        assert_eq!(
            m.payload.as_ref(),
            i.to_be_bytes(),
            "message {i} out of order"
        );
    }
    sender.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_off_skips_own_messages() {
    let node = start(test_config());
    let quiet = async_nats::ConnectOptions::new()
        .no_echo()
        .connect(node.client_url())
        .await
        .unwrap();
    let other = async_nats::connect(node.client_url()).await.unwrap();
    let mut own = quiet.subscribe("chat").await.unwrap();
    let mut ready = quiet.subscribe("ready").await.unwrap();
    let mut theirs = other.subscribe("chat").await.unwrap();
    settle(&other).await;
    // A no-echo connection cannot settle through itself: wait until it hears `other`.
    loop {
        other.publish("ready", "?".into()).await.unwrap();
        if let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(50), ready.next()).await {
            break;
        }
    }
    quiet.publish("chat", "from quiet".into()).await.unwrap();
    quiet.flush().await.unwrap();
    assert_eq!(next(&mut theirs).await.payload, Bytes::from("from quiet"));
    assert_quiet(&mut own).await;
    other.publish("chat", "from other".into()).await.unwrap();
    assert_eq!(next(&mut own).await.payload, Bytes::from("from other"));
}
