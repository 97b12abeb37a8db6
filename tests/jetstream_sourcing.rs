//! Mirrors and sources as the official Rust client drives them, on meshbroker and on
//! nats-server 2.15.1 with the same script: a mirror (whole, from a start sequence,
//! filtered) keeps the origin's sequences and skips what it deleted; sources with a
//! filter and a subject transform append with `Nats-Stream-Source`; both follow new
//! messages live; the origin's consumers stay hidden; bad configs get the reference's
//! error codes. meshbroker is then restarted under its sources: they resume without a
//! duplicate.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream};

use common::{jetstream_config, start, start_reference, TempDir};

const WAIT: Duration = Duration::from_secs(20);

/// One stored message as a comparison needs it: sequence, subject, payload, and the
/// `Nats-Stream-Source` header without the reference's optional identity field.
type Stored = (u64, String, String, Option<String>);

async fn request(client: &async_nats::Client, subject: &str, body: &str) -> serde_json::Value {
    let m = client
        .request(subject.to_string(), body.to_string().into())
        .await
        .expect("answer");
    serde_json::from_slice(&m.payload).expect("json")
}

/// Waits until `stream` holds a message at `last_seq`; its messages then.
async fn contents(client: &async_nats::Client, stream: &str, last_seq: u64) -> Vec<Stored> {
    let deadline = Instant::now() + WAIT;
    loop {
        let info = request(client, &format!("$JS.API.STREAM.INFO.{stream}"), "").await;
        if info["state"]["last_seq"].as_u64() >= Some(last_seq) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{stream} reaches {last_seq}: {info}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut out = Vec::new();
    for seq in 1..=last_seq {
        let got = request(
            client,
            &format!("$JS.API.STREAM.MSG.GET.{stream}"),
            &format!(r#"{{"seq":{seq}}}"#),
        )
        .await;
        let Some(m) = got.get("message") else {
            continue;
        };
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD;
        let text = |k: &str| {
            m.get(k)
                .and_then(|v| v.as_str())
                .map(|v| String::from_utf8(b64.decode(v).unwrap()).unwrap())
                .unwrap_or_default()
        };
        let source = text("hdrs")
            .lines()
            .find_map(|l| l.strip_prefix("Nats-Stream-Source: ").map(str::to_string))
            .map(|h| h.split(' ').take(5).collect::<Vec<_>>().join(" "));
        out.push((
            m["seq"].as_u64().unwrap(),
            m["subject"].as_str().unwrap().to_string(),
            text("data"),
            source,
        ));
    }
    out
}

struct Seen {
    mirror: Vec<Stored>,
    mirror_from_4: Vec<Stored>,
    mirror_filtered: Vec<Stored>,
    sourced: Vec<Stored>,
    mirror_deleted: serde_json::Value,
    source_info: serde_json::Value,
    origin_consumers: serde_json::Value,
    errors: Vec<serde_json::Value>,
}

async fn script(addr: SocketAddr) -> Seen {
    let client = async_nats::connect(addr.to_string()).await.unwrap();
    let js = jetstream::new(client.clone());
    js.create_stream(stream::Config {
        name: "ORIG".into(),
        subjects: vec!["orig.>".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    for i in 0..5 {
        js.publish(format!("orig.{}", i % 2), format!("m{i}").into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    request(&client, "$JS.API.STREAM.MSG.DELETE.ORIG", r#"{"seq":3}"#).await;
    let create = |name: &'static str, body: &'static str| {
        let client = client.clone();
        async move { request(&client, &format!("$JS.API.STREAM.CREATE.{name}"), body).await }
    };
    create("MIR", r#"{"name":"MIR","mirror":{"name":"ORIG"}}"#).await;
    create(
        "MIR4",
        r#"{"name":"MIR4","mirror":{"name":"ORIG","opt_start_seq":4}}"#,
    )
    .await;
    // From a start time: that of origin message 4.
    let four = request(&client, "$JS.API.STREAM.MSG.GET.ORIG", r#"{"seq":4}"#).await;
    let time = four["message"]["time"].as_str().unwrap().to_string();
    let created = request(
        &client,
        "$JS.API.STREAM.CREATE.MIRT",
        &format!(r#"{{"name":"MIRT","mirror":{{"name":"ORIG","opt_start_time":"{time}"}}}}"#),
    )
    .await;
    assert!(created.get("error").is_none(), "{created}");
    create(
        "MIRF",
        r#"{"name":"MIRF","mirror":{"name":"ORIG","filter_subject":"orig.1"}}"#,
    )
    .await;
    create(
        "SRC",
        r#"{"name":"SRC","subjects":["src.>"],"sources":[{"name":"ORIG","filter_subject":"orig.1"},{"name":"ORIG","subject_transforms":[{"src":"orig.*","dest":"zero.{{wildcard(1)}}"}]}]}"#,
    )
    .await;
    let _ = contents(&client, "MIR", 5).await;
    // New messages follow live.
    js.publish("orig.1", "m5".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let mirror = contents(&client, "MIR", 6).await;
    let mirror_from_4 = contents(&client, "MIR4", 6).await;
    assert_eq!(
        contents(&client, "MIRT", 6).await,
        mirror_from_4,
        "a start time gives what the start sequence gives"
    );
    let mirror_filtered = contents(&client, "MIRF", 6).await;
    let sourced = contents(&client, "SRC", 8).await;
    let info = request(&client, "$JS.API.STREAM.INFO.MIR", "").await;
    let mirror_deleted = serde_json::json!([info["state"]["num_deleted"], info["mirror"]["name"]]);
    let info = request(&client, "$JS.API.STREAM.INFO.SRC", "").await;
    let source_info = serde_json::json!(info["sources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["name"].clone(), s["seq"].clone(), s["lag"].clone()))
        .collect::<Vec<_>>());
    let names = request(&client, "$JS.API.CONSUMER.NAMES.ORIG", "").await;
    let origin_consumers = serde_json::json!([names["total"], names["consumers"]]);
    let mut errors = Vec::new();
    for body in [
        r#"{"name":"BAD","subjects":["bad"],"mirror":{"name":"ORIG"}}"#,
        r#"{"name":"BAD","mirror":{"name":"ORIG"},"sources":[{"name":"ORIG"}]}"#,
        r#"{"name":"BAD","first_seq":5,"mirror":{"name":"ORIG"}}"#,
        r#"{"name":"BAD","sources":[{"name":"ORIG"},{"name":"ORIG"}]}"#,
        r#"{"name":"BAD","sources":[{"name":"ORIG","subject_transforms":[{"src":"orig.0","dest":"z.{{wildcard(1)}}"}]}]}"#,
    ] {
        let e = request(&client, "$JS.API.STREAM.CREATE.BAD", body).await;
        errors.push(serde_json::json!([
            e["error"]["err_code"],
            e["error"]["description"]
        ]));
    }
    let e = request(
        &client,
        "$JS.API.STREAM.UPDATE.MIR",
        r#"{"name":"MIR","mirror":{"name":"OTHER"}}"#,
    )
    .await;
    errors.push(serde_json::json!([
        e["error"]["err_code"],
        e["error"]["description"]
    ]));
    Seen {
        mirror,
        mirror_from_4,
        mirror_filtered,
        sourced,
        mirror_deleted,
        source_info,
        origin_consumers,
        errors,
    }
}

fn s(seq: u64, subject: &str, data: &str, source: Option<&str>) -> Stored {
    (seq, subject.into(), data.into(), source.map(str::to_string))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirrors_and_sources_match_the_reference() {
    let dir = TempDir::new("js-sourcing");
    let node = start(jetstream_config(&dir));
    let ours = script(node.client_addr()).await;
    assert_eq!(
        ours.mirror,
        [
            s(1, "orig.0", "m0", None),
            s(2, "orig.1", "m1", None),
            s(4, "orig.1", "m3", None),
            s(5, "orig.0", "m4", None),
            s(6, "orig.1", "m5", None),
        ]
    );
    assert_eq!(
        ours.mirror_from_4,
        [
            s(4, "orig.1", "m3", None),
            s(5, "orig.0", "m4", None),
            s(6, "orig.1", "m5", None),
        ]
    );
    assert_eq!(
        ours.mirror_filtered,
        [
            s(2, "orig.1", "m1", None),
            s(4, "orig.1", "m3", None),
            s(6, "orig.1", "m5", None),
        ]
    );
    // The two sources are set up one after the other, so the interleaving of their
    // first messages is not fixed; each one's order is.
    let from = |filter: &str| -> Vec<(String, String, String)> {
        ours.sourced
            .iter()
            .filter(|m| {
                m.3.as_deref()
                    .is_some_and(|h| h.split(' ').nth(2) == Some(filter))
            })
            .map(|m| (m.1.clone(), m.2.clone(), m.3.clone().unwrap()))
            .collect()
    };
    let own = |v: &[(&str, &str, &str)]| -> Vec<(String, String, String)> {
        v.iter()
            .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
            .collect()
    };
    assert_eq!(
        from("orig.1"),
        own(&[
            ("orig.1", "m1", "ORIG 2 orig.1 > orig.1"),
            ("orig.1", "m3", "ORIG 4 orig.1 > orig.1"),
            ("orig.1", "m5", "ORIG 6 orig.1 > orig.1"),
        ])
    );
    assert_eq!(
        from("orig.*"),
        own(&[
            ("zero.0", "m0", "ORIG 1 orig.* zero.{{wildcard(1)}} orig.0"),
            ("zero.1", "m1", "ORIG 2 orig.* zero.{{wildcard(1)}} orig.1"),
            ("zero.1", "m3", "ORIG 4 orig.* zero.{{wildcard(1)}} orig.1"),
            ("zero.0", "m4", "ORIG 5 orig.* zero.{{wildcard(1)}} orig.0"),
            ("zero.1", "m5", "ORIG 6 orig.* zero.{{wildcard(1)}} orig.1"),
        ])
    );
    assert_eq!(
        ours.sourced.iter().map(|m| m.0).collect::<Vec<_>>(),
        (1..=8).collect::<Vec<_>>()
    );
    assert_eq!(ours.mirror_deleted, serde_json::json!([1, "ORIG"]));
    assert_eq!(
        ours.origin_consumers,
        serde_json::json!([0, []]),
        "the origin's consumers for them are hidden"
    );
    let codes: Vec<&serde_json::Value> = ours.errors.iter().map(|e| &e[0]).collect();
    assert_eq!(codes, [10034, 10031, 10143, 10140, 10146, 10055]);

    if let Some((_reference, addr)) =
        start_reference(&["-js", "-sd", &dir.0.join("ref").to_string_lossy()])
    {
        let theirs = script(addr).await;
        assert_eq!(ours.mirror, theirs.mirror);
        assert_eq!(ours.mirror_from_4, theirs.mirror_from_4);
        assert_eq!(ours.mirror_filtered, theirs.mirror_filtered);
        let sorted = |v: &[Stored]| {
            let mut v: Vec<_> = v
                .iter()
                .map(|m| (m.3.clone(), m.1.clone(), m.2.clone()))
                .collect();
            v.sort();
            v
        };
        assert_eq!(sorted(&ours.sourced), sorted(&theirs.sourced));
        assert_eq!(ours.mirror_deleted, theirs.mirror_deleted);
        assert_eq!(ours.source_info, theirs.source_info);
        assert_eq!(ours.origin_consumers, theirs.origin_consumers);
        assert_eq!(ours.errors, theirs.errors);
    }

    // Restarted on the same store, the sources pick up where they were: one new origin
    // message arrives once in each, nothing twice.
    node.shutdown();
    let node = start(jetstream_config(&dir));
    let client = async_nats::connect(node.client_url()).await.unwrap();
    let js = jetstream::new(client.clone());
    js.publish("orig.1", "m6".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let sourced = contents(&client, "SRC", 10).await;
    assert_eq!(sourced.len(), 10, "{sourced:?}");
    let m6: Vec<&Stored> = sourced.iter().filter(|m| m.2 == "m6").collect();
    assert_eq!(m6.len(), 2, "one copy per source: {sourced:?}");
    let mirror = contents(&client, "MIR", 7).await;
    assert_eq!(mirror.last(), Some(&s(7, "orig.1", "m6", None)));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let info = request(&client, "$JS.API.STREAM.INFO.SRC", "").await;
    assert_eq!(info["state"]["messages"], 10, "still nothing twice");
}
