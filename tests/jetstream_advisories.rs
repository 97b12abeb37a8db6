//! JetStream advisories as the official Rust client sees them, on meshbroker and on
//! nats-server 2.15.1 with the same script: stream and consumer actions, NAK, TERM
//! (with and without a reason), max deliveries (and what it leaves of the consumer's
//! state), the API audit naming the client.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream, AckKind};
use futures::StreamExt;

use common::{jetstream_config, start, start_reference, TempDir};

const WAIT: Duration = Duration::from_secs(10);

/// The advisories (subject, body with `id` and `timestamp` removed) one server sent
/// for the script, the API audits apart, and the consumer state after max deliveries.
struct Seen {
    advisories: Vec<(String, serde_json::Value)>,
    audits: Vec<serde_json::Value>,
    after_max: serde_json::Value,
}

/// The next event of any kind, with its id (checked) and time taken out.
async fn next_any(events: &mut async_nats::Subscriber) -> (String, serde_json::Value) {
    let m = tokio::time::timeout(WAIT, events.next())
        .await
        .expect("an event in time")
        .expect("subscription open");
    let mut body: serde_json::Value = serde_json::from_slice(&m.payload).expect("json");
    let obj = body.as_object_mut().expect("an object");
    assert!(obj
        .remove("id")
        .is_some_and(|id| id.as_str().is_some_and(|s| s.len() == 22)));
    assert!(obj.remove("timestamp").is_some());
    (m.subject.to_string(), body)
}

/// The next advisory that is not an API audit; audits on the way are kept.
async fn next_event(
    events: &mut async_nats::Subscriber,
    audits: &mut Vec<serde_json::Value>,
) -> (String, serde_json::Value) {
    loop {
        let (subject, body) = next_any(events).await;
        if subject == "$JS.EVENT.ADVISORY.API" {
            audits.push(body);
            continue;
        }
        return (subject, body);
    }
}

async fn script(addr: SocketAddr) -> Seen {
    let client = async_nats::ConnectOptions::new()
        .name("advisories")
        .connect(addr.to_string())
        .await
        .unwrap();
    let js = jetstream::new(client.clone());
    let mut events = client.subscribe("$JS.EVENT.>").await.unwrap();
    client.flush().await.unwrap();
    let mut audits = Vec::new();
    let mut advisories = Vec::new();
    macro_rules! expect_event {
        () => {{
            let e = next_event(&mut events, &mut audits).await;
            advisories.push(e.clone());
            e
        }};
    }

    let stream = js
        .create_stream(stream::Config {
            name: "ADV".into(),
            subjects: vec!["adv.>".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    expect_event!();
    js.update_stream(stream::Config {
        name: "ADV".into(),
        subjects: vec!["adv.>".into()],
        max_messages: 1000,
        ..Default::default()
    })
    .await
    .unwrap();
    expect_event!();
    let pull = consumer::pull::Config {
        durable_name: Some("C".into()),
        ack_policy: consumer::AckPolicy::Explicit,
        max_deliver: 2,
        ack_wait: Duration::from_millis(500),
        ..Default::default()
    };
    let c = stream.create_consumer(pull).await.unwrap();
    expect_event!();
    for i in 1..=3 {
        js.publish(format!("adv.{i}"), "m".into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let fetch_one = || async {
        let mut batch = c
            .batch()
            .max_messages(1)
            .expires(WAIT)
            .messages()
            .await
            .unwrap();
        tokio::time::timeout(WAIT, batch.next())
            .await
            .expect("a message in time")
            .expect("one message")
            .unwrap()
    };
    // NAK the first delivery of 1, wait for its advisory, then TERM its redelivery.
    let m = fetch_one().await;
    assert_eq!(m.info().unwrap().stream_sequence, 1);
    m.ack_with(AckKind::Nak(None)).await.unwrap();
    expect_event!();
    let m = fetch_one().await;
    assert_eq!(m.info().unwrap().stream_sequence, 1);
    m.ack_with(AckKind::Term).await.unwrap();
    expect_event!();
    // 2 is terminated with a reason.
    let m = fetch_one().await;
    assert_eq!(m.info().unwrap().stream_sequence, 2);
    client
        .publish(m.reply.clone().unwrap(), "+TERM poison pill".into())
        .await
        .unwrap();
    expect_event!();
    // 3 is never acked: after its second delivery it is given up.
    let m = fetch_one().await;
    assert_eq!(m.info().unwrap().stream_sequence, 3);
    let m = fetch_one().await;
    assert_eq!(m.info().unwrap().delivered, 2);
    // Pulls make the consumer look for redeliveries; the third is not made.
    let mut batch = c
        .batch()
        .max_messages(1)
        .expires(Duration::from_millis(1500))
        .messages()
        .await
        .unwrap();
    let (subject, _) = expect_event!();
    assert_eq!(subject, "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.ADV.C");
    while let Ok(Some(m)) = tokio::time::timeout(WAIT, batch.next()).await {
        assert!(m.is_err(), "nothing is delivered a third time");
    }
    let info = client
        .request("$JS.API.CONSUMER.INFO.ADV.C", "".into())
        .await
        .unwrap();
    let info: serde_json::Value = serde_json::from_slice(&info.payload).unwrap();
    let after_max = serde_json::json!({
        "ack_floor": [info["ack_floor"]["consumer_seq"], info["ack_floor"]["stream_seq"]],
        "delivered": [info["delivered"]["consumer_seq"], info["delivered"]["stream_seq"]],
        "num_ack_pending": info["num_ack_pending"],
        "num_redelivered": info["num_redelivered"],
    });
    js.delete_consumer_from_stream("C", "ADV").await.unwrap();
    expect_event!();
    js.delete_stream("ADV").await.unwrap();
    expect_event!();
    // The audit of the delete comes after its advisory.
    client.flush().await.unwrap();
    while !audits
        .iter()
        .any(|a| a["subject"] == "$JS.API.STREAM.DELETE.ADV")
    {
        let (subject, body) = next_any(&mut events).await;
        assert_eq!(subject, "$JS.EVENT.ADVISORY.API", "{body}");
        audits.push(body);
    }
    Seen {
        advisories,
        audits,
        after_max,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn advisories_match_the_reference() {
    let dir = TempDir::new("js-advisories");
    let node = start(jetstream_config(&dir));
    let ours = script(node.client_addr()).await;

    let subjects: Vec<&str> = ours.advisories.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(
        subjects,
        [
            "$JS.EVENT.ADVISORY.STREAM.CREATED.ADV",
            "$JS.EVENT.ADVISORY.STREAM.UPDATED.ADV",
            "$JS.EVENT.ADVISORY.CONSUMER.CREATED.ADV.C",
            "$JS.EVENT.ADVISORY.CONSUMER.MSG_NAKED.ADV.C",
            "$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED.ADV.C",
            "$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED.ADV.C",
            "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.ADV.C",
            "$JS.EVENT.ADVISORY.CONSUMER.DELETED.ADV.C",
            "$JS.EVENT.ADVISORY.STREAM.DELETED.ADV",
        ]
    );
    assert_eq!(
        ours.advisories[6].1,
        serde_json::json!({"type": "io.nats.jetstream.advisory.v1.max_deliver",
            "stream": "ADV", "consumer": "C", "stream_seq": 3, "deliveries": 2})
    );
    assert_eq!(ours.advisories[5].1["reason"], "poison pill");
    // Max deliveries leaves the ack floor where the terminated 1 and 2 put it (3 is
    // not acked) and counts the message as redelivered.
    assert_eq!(
        ours.after_max,
        serde_json::json!({"ack_floor": [3, 2], "delivered": [5, 3],
            "num_ack_pending": 0, "num_redelivered": 1})
    );
    let create = ours
        .audits
        .iter()
        .find(|a| a["subject"] == "$JS.API.STREAM.CREATE.ADV")
        .expect("the create is audited");
    assert_eq!(create["type"], "io.nats.jetstream.advisory.v1.api_audit");
    assert_eq!(create["client"]["name"], "advisories");
    assert_eq!(create["client"]["lang"], "rust");
    assert_eq!(create["client"]["acc"], "$G");
    let response: serde_json::Value =
        serde_json::from_str(create["response"].as_str().unwrap()).unwrap();
    assert_eq!(response["did_create"], true);

    let Some((_reference, addr)) =
        start_reference(&["-js", "-sd", &dir.0.join("ref").to_string_lossy()])
    else {
        return;
    };
    let theirs = script(addr).await;
    assert_eq!(ours.advisories, theirs.advisories);
    assert_eq!(ours.after_max, theirs.after_max);
    // The same requests are audited, with the same client fields (but for `rtt`, which
    // meshbroker does not measure, and the ids and times of this connection).
    let audited = |seen: &Seen| -> Vec<String> {
        seen.audits
            .iter()
            .map(|a| a["subject"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    assert_eq!(audited(&ours), audited(&theirs));
    let keys = |a: &serde_json::Value| -> Vec<String> {
        let mut k: Vec<String> = a["client"]
            .as_object()
            .unwrap()
            .keys()
            .filter(|k| *k != "rtt")
            .cloned()
            .collect();
        k.sort();
        k
    };
    assert_eq!(keys(&ours.audits[0]), keys(&theirs.audits[0]));
}
