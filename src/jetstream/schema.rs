//! The on-disk schema: which redb tables exist, how a stored message, a stream's
//! metadata and a consumer's state are encoded. The storage actor owns the database;
//! this module only says what the bytes mean, so it can be tested (and fuzzed) alone.
//!
//! Tables:
//! - `meshbroker`: `&str → &str`, the format marker (`format` = [`FORMAT`]).
//! - `streams`: stream name → JSON [`StreamRecord`] (config, created, sequence floor).
//! - `msgs/<stream>`: sequence → [`encode_message`] record.
//! - `consumers/<stream>`: consumer name → JSON [`ConsumerRecord`].

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::api::{ConsumerConfig, StreamConfig};
use super::consumer::ConsumerState;

/// The format this build writes and reads.
pub const FORMAT: &str = "meshbroker-jetstream-1";
pub const MARKER_TABLE: &str = "meshbroker";
pub const STREAMS_TABLE: &str = "streams";

/// The name a Raft group's log goes by in write batches: its entries are kept as a
/// stream's messages are (index → entry, in `msgs/<name>`), its state in
/// [`RAFT_STATE_TABLE`]. No stream can take the name (`/` is refused in names).
pub fn raft_log(group: u64) -> String {
    format!("raft/{group}")
}

/// Each Raft group's state, by its log's name.
pub const RAFT_STATE_TABLE: &str = "raft_state";
/// How far each replicated stream has applied its log, by stream name.
pub const APPLIED_TABLE: &str = "raft_applied";
/// Each Raft group's owner's last snapshot (the meta group's), by its log's name.
pub const SNAPSHOT_TABLE: &str = "raft_snapshot";

pub fn msgs_table(stream: &str) -> String {
    format!("msgs/{stream}")
}

pub fn consumers_table(stream: &str) -> String {
    format!("consumers/{stream}")
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamRecord {
    pub config: StreamConfig,
    pub created: i64,
    /// The last sequence assigned and its time, so sequences continue after a purge.
    #[serde(default)]
    pub last_seq: u64,
    #[serde(default)]
    pub last_ts: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConsumerRecord {
    pub name: String,
    pub config: ConsumerConfig,
    pub created: i64,
    pub state: ConsumerState,
}

/// A stream as storage reads it back at start: its record, messages and consumers.
#[derive(Debug, Clone)]
pub struct LoadedStream {
    pub record: StreamRecord,
    pub messages: Vec<(u64, MessageRecord)>,
    pub consumers: Vec<ConsumerRecord>,
}

/// A stored message as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageRecord {
    pub ts: i64,
    pub expires: Option<i64>,
    pub subject: String,
    pub hdr_len: u32,
    /// Header block followed by payload.
    pub data: Bytes,
}

const FIXED: usize = 8 + 8 + 4 + 2;

/// `ts (i64 LE) | expires (i64 LE, 0 = none) | hdr_len (u32 LE) | subject_len (u16 LE) |
/// subject | headers and payload`.
pub fn encode_message(
    out: &mut Vec<u8>,
    ts: i64,
    expires: Option<i64>,
    subject: &str,
    hdr_len: u32,
    data: &[u8],
) {
    out.reserve(FIXED + subject.len() + data.len());
    out.extend_from_slice(&ts.to_le_bytes());
    out.extend_from_slice(&expires.unwrap_or(0).to_le_bytes());
    out.extend_from_slice(&hdr_len.to_le_bytes());
    out.extend_from_slice(&(subject.len().min(u16::MAX as usize) as u16).to_le_bytes());
    out.extend_from_slice(subject.as_bytes());
    out.extend_from_slice(data);
}

/// Why a stored record could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("message record is truncated ({0} bytes)")]
    Truncated(usize),
    #[error("message record has a subject that is not UTF-8")]
    Subject,
    #[error("message record header length {hdr_len} exceeds its data ({data_len} bytes)")]
    HeaderLength { hdr_len: u32, data_len: usize },
}

pub fn decode_message(rec: &[u8]) -> Result<MessageRecord, RecordError> {
    let fixed = rec.get(..FIXED).ok_or(RecordError::Truncated(rec.len()))?;
    let mut i64s = [0u8; 8];
    i64s.copy_from_slice(&fixed[0..8]);
    let ts = i64::from_le_bytes(i64s);
    i64s.copy_from_slice(&fixed[8..16]);
    let expires = i64::from_le_bytes(i64s);
    let mut u32s = [0u8; 4];
    u32s.copy_from_slice(&fixed[16..20]);
    let hdr_len = u32::from_le_bytes(u32s);
    let subject_len = u16::from_le_bytes([fixed[20], fixed[21]]) as usize;
    let subject = rec
        .get(FIXED..FIXED + subject_len)
        .ok_or(RecordError::Truncated(rec.len()))?;
    let subject = std::str::from_utf8(subject).map_err(|_| RecordError::Subject)?;
    let data = rec.get(FIXED + subject_len..).unwrap_or_default();
    if hdr_len as usize > data.len() {
        return Err(RecordError::HeaderLength {
            hdr_len,
            data_len: data.len(),
        });
    }
    Ok(MessageRecord {
        ts,
        expires: (expires != 0).then_some(expires),
        subject: subject.to_string(),
        hdr_len,
        data: Bytes::copy_from_slice(data),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_records_round_trip() {
        let mut buf = Vec::new();
        encode_message(&mut buf, 42, Some(7), "a.b", 3, b"hdrpayload");
        let m = decode_message(&buf);
        assert_eq!(
            m,
            Ok(MessageRecord {
                ts: 42,
                expires: Some(7),
                subject: "a.b".into(),
                hdr_len: 3,
                data: Bytes::from_static(b"hdrpayload"),
            })
        );
        for cut in 0..buf.len() - 10 {
            assert!(decode_message(&buf[..cut]).is_err(), "cut at {cut}");
        }
    }
}
