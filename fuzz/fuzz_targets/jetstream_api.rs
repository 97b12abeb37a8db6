//! JetStream's request decoding and the stream state machine on arbitrary input:
//! API subjects, ack subjects and bodies, pull requests, stream configs and stored
//! records never panic; records that decode re-encode to the same bytes; a stream
//! driven by arbitrary publishes, deletes, purges and its own `$JS.API` requests
//! (consumer create/delete/info/list, pull requests, msg and direct get) keeps its
//! counts consistent, answers every request with JSON or a status, and produces write
//! operations for every change.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use meshbroker::jetstream::api::{self, PurgeRequest, StreamConfig, StreamInfoRequest};
use meshbroker::jetstream::consumer::AckKind;
use meshbroker::jetstream::{headers, request, schema, stream};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    match selector % 6 {
        0 => {
            let _ = request::parse(&text);
            let _ = request::parse_ack(&text);
        }
        1 => {
            let _ = api::NextRequest::parse(rest);
            let _ = AckKind::parse(rest);
            let _ = api::parse_optional::<StreamInfoRequest>(rest);
        }
        2 => {
            if let Ok(cfg) = api::parse_required::<StreamConfig>(rest) {
                if let Ok(norm) = stream::normalize_config(cfg) {
                    // Normalizing is idempotent.
                    assert_eq!(stream::normalize_config(norm.clone()).ok(), Some(norm));
                }
            }
        }
        3 => {
            if let Ok(m) = schema::decode_message(rest) {
                let mut again = Vec::new();
                schema::encode_message(&mut again, m.ts, m.expires, &m.subject, m.hdr_len, &m.data);
                assert_eq!(again, rest);
            }
        }
        4 => {
            let _ = headers::get(rest, "Nats-Msg-Id");
            let _ = headers::status(rest);
            let _ = headers::lines(rest).count();
        }
        _ => drive_stream(rest),
    }
});

/// Publishes (with headers from the input), deletes and purges, checking the counts.
fn drive_stream(ops: &[u8]) {
    let cfg: StreamConfig = serde_json::from_str(
        r#"{"name":"F","subjects":["f.>"],"max_msgs_per_subject":3,"allow_rollup_hdrs":true,"max_msgs":50}"#,
    )
    .unwrap_or_default();
    let Ok(cfg) = stream::normalize_config(cfg) else {
        return;
    };
    let mut s = stream::Stream::new(cfg, 1, 64);
    let mut now = 10;
    for chunk in ops.chunks(2) {
        let (op, arg) = (chunk[0], chunk.get(1).copied().unwrap_or(0));
        now += 1;
        match op % 6 {
            0 | 1 => {
                let mut h = headers::HeaderBuilder::new();
                match arg % 4 {
                    0 => h.push("Nats-Msg-Id", &(arg / 4).to_string()),
                    1 => h.push("Nats-Rollup", "sub"),
                    2 => h.push(
                        "Nats-Expected-Last-Subject-Sequence",
                        &(arg / 4).to_string(),
                    ),
                    _ => {}
                }
                let mut data = h.finish();
                let n = data.len();
                data.push(arg);
                let _ = s.publish(now, &format!("f.{}", arg % 5), Bytes::from(data), n);
            }
            2 => {
                let _ = s.delete_message(arg as u64);
            }
            3 => {
                let _ = s.purge(&PurgeRequest {
                    filter: (arg % 2 == 0).then(|| format!("f.{}", arg % 5)),
                    keep: (arg % 3 == 0).then_some(arg as u64 % 4),
                    seq: None,
                });
            }
            4 => drive_api(&mut s, arg, now),
            _ => s.expire(now),
        }
        let st = s.state(&StreamInfoRequest {
            deleted_details: true,
            ..Default::default()
        });
        if st.messages > 0 {
            let span = st.last_seq - st.first_seq + 1;
            assert_eq!(span, st.messages + st.num_deleted, "{st:?}");
            assert_eq!(st.deleted.map_or(0, |d| d.len() as u64), st.num_deleted);
        } else if st.last_seq == 0 {
            // A stream that never held a message reports first_seq 0 (the reference).
            assert_eq!(st.first_seq, 0);
        } else {
            assert_eq!(st.first_seq, st.last_seq + 1);
        }
        assert!(st.messages <= 50);
        let changes = s.take_changes();
        let _ = s.write_ops(changes);
    }
}

/// One of the stream's own API requests, chosen and shaped by `arg`.
fn drive_api(s: &mut stream::Stream, arg: u8, now: i64) {
    let name = ["A", "B", "C"][(arg % 3) as usize];
    let (subject, body) = match (arg / 3) % 8 {
        0 => (
            format!("CONSUMER.CREATE.F.{name}"),
            format!(
                r#"{{"stream_name":"F","config":{{"durable_name":"{name}","ack_policy":"{}","filter_subject":"f.{}"}}}}"#,
                ["explicit", "none", "all"][(arg % 3) as usize],
                arg % 5
            ),
        ),
        1 => (
            "CONSUMER.CREATE.F".to_string(),
            r#"{"stream_name":"F","config":{"deliver_subject":"d.x"}}"#.to_string(),
        ),
        2 => (format!("CONSUMER.DELETE.F.{name}"), String::new()),
        3 => (format!("CONSUMER.INFO.F.{name}"), String::new()),
        4 => (
            format!("CONSUMER.MSG.NEXT.F.{name}"),
            format!("{}", arg % 4),
        ),
        5 => ("CONSUMER.LIST.F".to_string(), String::new()),
        6 => (
            "STREAM.MSG.GET.F".to_string(),
            format!(r#"{{"seq":{}}}"#, arg % 20),
        ),
        _ => (
            "DIRECT.GET.F".to_string(),
            format!(r#"{{"last_by_subj":"f.{}"}}"#, arg % 5),
        ),
    };
    let full = format!("$JS.API.{subject}");
    let Some(req) = request::parse(&full) else {
        panic!("the fuzzer built a subject the parser refuses: {full}");
    };
    let request = stream::Request {
        api: &req,
        body: body.as_bytes(),
        reply: Some("_INBOX.f"),
        subject: full.as_bytes(),
        cluster: None,
        // An account limit on consumers per stream, for some inputs.
        account_max_consumers: (body.len() % 3 == 0).then_some(2),
    };
    let mut out = Vec::new();
    let mut n = 0u32;
    let mut new_name = || {
        n += 1;
        format!("E{n}")
    };
    match s.api(&request, now, &mut new_name, &mut out) {
        stream::Answer::Json(Ok(body)) => {
            assert!(serde_json::from_slice::<serde_json::Value>(&body).is_ok());
        }
        stream::Answer::MsgGet(seq) | stream::Answer::DirectGet(seq) => {
            assert!(
                s.store().get(seq).is_some(),
                "found {seq} that is not stored"
            );
        }
        stream::Answer::Status(h) => assert!(headers::status(&h).is_some()),
        stream::Answer::Json(Err(_)) | stream::Answer::Nothing => {}
    }
    assert!(s.public_consumers().count() <= 5);
    let interest = |_: &str| true;
    s.poll_consumers(now, &interest, &mut out);
}
