//! A stream in storage: its changes as the write operations that persist them, its
//! record, and the stream rebuilt from what storage read back at start.

use std::sync::Arc;

use super::{Change, Stream, STREAM_CACHE_BUDGET};
use crate::jetstream::consumer::Consumer;
use crate::jetstream::headers;
use crate::jetstream::journal::WriteOp;
use crate::jetstream::schema::{self, ConsumerRecord, LoadedStream, StreamRecord};
use crate::jetstream::store::Entry;

impl Stream {
    /// The write operations that persist `changes` (taken with
    /// [`Stream::take_changes`]): appended messages, removals, consumers whose state
    /// is kept (durable, file-backed), and the stream's record when its configuration
    /// or first sequence moved.
    pub fn write_ops(&self, changes: Vec<Change>) -> Vec<WriteOp> {
        let mut ops = Vec::with_capacity(changes.len());
        let mut meta = false;
        for change in changes {
            match change {
                Change::Append {
                    seq,
                    ts,
                    subject,
                    hdr_len,
                    data,
                    expires,
                } => {
                    let mut record = Vec::new();
                    schema::encode_message(&mut record, ts, expires, &subject, hdr_len, &data);
                    ops.push(WriteOp::Append { seq, record });
                }
                Change::Remove(seq) => ops.push(WriteOp::Remove(seq)),
                Change::RemoveBelow(seq) => {
                    ops.push(WriteOp::RemoveBelow(seq));
                    meta = true;
                }
                Change::Config => meta = true,
                Change::Consumer(name) => {
                    let Some(c) = self.consumers.get(&name) else {
                        continue;
                    };
                    if !c.is_durable() || c.config.mem_storage {
                        continue;
                    }
                    let record = ConsumerRecord {
                        name: name.clone(),
                        config: c.config.clone(),
                        created: c.created,
                        state: c.state(),
                    };
                    if let Ok(bytes) = serde_json::to_vec(&record) {
                        ops.push(WriteOp::PutConsumer {
                            name,
                            record: bytes,
                        });
                    }
                }
                Change::ConsumerDeleted(name) => ops.push(WriteOp::DeleteConsumer(name)),
            }
        }
        if meta {
            ops.push(WriteOp::PutStream(Box::new(self.record())));
        }
        ops
    }

    /// The stream's record: configuration, creation time, last sequence and its time.
    pub fn record(&self) -> StreamRecord {
        let t = self.store.totals();
        StreamRecord {
            config: self.config.clone(),
            created: self.created,
            last_seq: t.last_seq,
            last_ts: t.last_ts,
        }
    }

    /// Rebuilds a stream from what storage loaded: messages (all durable and
    /// committed), the dedupe window from their `Nats-Msg-Id`s, and consumers.
    pub fn restore(loaded: LoadedStream, now: i64) -> Stream {
        let rec = loaded.record;
        let mut stream = Stream::new(rec.config, rec.created, STREAM_CACHE_BUDGET);
        let mut ids = Vec::new();
        for (seq, m) in loaded.messages {
            let hdr = m.data.get(..m.hdr_len as usize).unwrap_or_default();
            if m.hdr_len > 0 {
                if let Some(id) = headers::get(hdr, "Nats-Msg-Id") {
                    ids.push((seq, m.ts, id.to_string()));
                }
            }
            stream.restore_message(
                seq,
                Entry {
                    ts: m.ts,
                    subject: Arc::from(m.subject.as_str()),
                    hdr_len: m.hdr_len,
                    len: m.data.len() as u32,
                    data: Some(m.data),
                    expires: m.expires,
                },
            );
        }
        stream.store.set_last(rec.last_seq, rec.last_ts);
        let last = stream.store.last_seq().max(rec.last_seq);
        stream.store.set_durable(last);
        stream.store.set_committed(last);
        stream.restore_dedupe(now, ids);
        for c in loaded.consumers {
            let consumer = Consumer::restore(
                stream.name(),
                &c.name,
                c.config,
                c.created,
                c.state,
                &stream.store,
                now,
            );
            stream.consumers.insert(c.name, consumer);
        }
        stream
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jetstream::api::{ConsumerConfig, StreamConfig, StreamInfoRequest};
    use crate::jetstream::consumer::AckKind;
    use crate::jetstream::stream::normalize_config;
    use bytes::Bytes;
    use std::collections::BTreeMap;

    /// What a store holds after applying `ops` (the storage actor's job, in memory).
    #[derive(Default)]
    struct Stored {
        record: Option<StreamRecord>,
        messages: BTreeMap<u64, Vec<u8>>,
        consumers: BTreeMap<String, Vec<u8>>,
    }

    impl Stored {
        fn apply(&mut self, ops: Vec<WriteOp>) {
            for op in ops {
                match op {
                    WriteOp::PutStream(r) => self.record = Some(*r),
                    WriteOp::DeleteStream => *self = Stored::default(),
                    WriteOp::Append { seq, record } => {
                        self.messages.insert(seq, record);
                    }
                    WriteOp::Remove(seq) => {
                        self.messages.remove(&seq);
                    }
                    WriteOp::RemoveBelow(seq) => self.messages.retain(|s, _| *s >= seq),
                    WriteOp::PutConsumer { name, record } => {
                        self.consumers.insert(name, record);
                    }
                    WriteOp::DeleteConsumer(name) => {
                        self.consumers.remove(&name);
                    }
                    WriteOp::RemoveFrom(seq) => self.messages.retain(|s, _| *s < seq),
                    WriteOp::PutRaftState(_) | WriteOp::PutApplied(_) | WriteOp::PutSnapshot(_) => {
                    }
                }
            }
        }

        fn load(&self) -> LoadedStream {
            LoadedStream {
                record: self
                    .record
                    .clone()
                    .unwrap_or_else(|| panic!("no stream record")),
                messages: self
                    .messages
                    .iter()
                    .map(|(seq, r)| {
                        let m = schema::decode_message(r).unwrap_or_else(|e| panic!("{e}"));
                        (*seq, m)
                    })
                    .collect(),
                consumers: self
                    .consumers
                    .values()
                    .map(|r| serde_json::from_slice(r).unwrap_or_else(|e| panic!("{e}")))
                    .collect(),
            }
        }
    }

    /// The state machine's changes, persisted and read back, rebuild the same stream:
    /// messages, deleted sequences, sequences that continue after a purge, the dedupe
    /// window and a durable consumer's ack floor.
    #[test]
    fn what_the_write_ops_persist_restores_the_same_stream() {
        let cfg: StreamConfig = serde_json::from_str(
            r#"{"name":"R","subjects":["r.>"],"duplicate_window":60000000000}"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let cfg = normalize_config(cfg).unwrap_or_else(|e| panic!("{e}"));
        let mut s = Stream::new(cfg, 1, u64::MAX);
        let mut stored = Stored::default();
        stored.apply(vec![WriteOp::PutStream(Box::new(s.record()))]);
        let id = |n: u32| {
            let mut h = crate::jetstream::headers::HeaderBuilder::new();
            h.push("Nats-Msg-Id", &format!("id{n}"));
            let mut data = h.finish();
            let len = data.len();
            data.extend_from_slice(b"payload");
            (Bytes::from(data), len)
        };
        for n in 0..10 {
            let (data, len) = id(n);
            assert!(s
                .publish(100 + i64::from(n), &format!("r.{}", n % 3), data, len)
                .is_ok());
        }
        let consumer: ConsumerConfig =
            serde_json::from_str(r#"{"durable_name":"D","ack_policy":"explicit"}"#)
                .unwrap_or_else(|e| panic!("{e}"));
        let consumer = crate::jetstream::stream::normalize_consumer(consumer, s.config())
            .unwrap_or_else(|e| panic!("{e}"));
        s.add_consumer(Consumer::new("R", "D", consumer, 120, s.store()));
        let changes = s.take_changes();
        stored.apply(s.write_ops(changes));
        assert!(s.delete_message(4).is_ok());
        assert!(s
            .purge(&crate::jetstream::api::PurgeRequest {
                filter: None,
                keep: None,
                seq: Some(3),
            })
            .is_ok());
        s.ack("D", 5, AckKind::Ack, None, 130);
        let changes = s.take_changes();
        stored.apply(s.write_ops(changes));

        let restored = Stream::restore(stored.load(), 150);
        let detail = StreamInfoRequest {
            deleted_details: true,
            ..Default::default()
        };
        let (a, b) = (s.state(&detail), restored.state(&detail));
        assert_eq!(
            serde_json::to_value(&a).ok(),
            serde_json::to_value(&b).ok(),
            "state after restore"
        );
        let info = |s: &Stream| {
            s.consumer("D")
                .map(|c| serde_json::to_value(c.state()).ok())
                .unwrap_or_else(|| panic!("consumer D lost"))
        };
        assert_eq!(info(&s), info(&restored));
        // The dedupe window came back from the headers: a retry is a duplicate.
        let mut restored = restored;
        let (data, len) = id(7);
        let ack = restored
            .publish(160, "r.1", data, len)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(ack.duplicate, "{ack:?}");
        let (data, len) = id(11);
        let ack = restored
            .publish(161, "r.1", data, len)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ack.seq, 11, "sequences continue");
    }
}
