//! JetStream's request decoding and the stream state machine on arbitrary input:
//! API subjects, ack subjects and bodies, pull requests, stream configs and stored
//! records never panic; records that decode re-encode to the same bytes; a stream
//! driven by arbitrary publishes, deletes and purges keeps its counts consistent.
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
        match op % 5 {
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
        let _ = s.take_changes();
    }
}
