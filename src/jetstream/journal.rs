//! The write journal's format: what the storage actor appends to `jetstream.journal`
//! when `[jetstream] ack = "write"`, and how it reads it back after a crash.
//!
//! With that setting an acknowledgement waits for a `write()` of the batch into this
//! file (the OS has it: it survives `kill -9`, not a power loss) instead of an fsynced
//! redb commit; the same batches are committed to redb right behind. redb remembers up
//! to where it has applied the journal (`generation`, `offset`), so a restart replays
//! exactly the batches that were written but not yet committed.
//!
//! File: `MAGIC | generation (u64 LE)`, then records `len (u32 LE) | crc32 (u32 LE)
//! | body`, the CRC over the generation and the body so a record left over from an
//! earlier generation never passes. Body: one write batch's stream and its [`WriteOp`]s.
//! Reading stops at the first record that is incomplete or fails its check: a crash in
//! the middle of a `write()` leaves such a tail, and nothing in it was acknowledged.

use super::schema::StreamRecord;

/// The first bytes of a journal file.
pub const MAGIC: &[u8; 8] = b"MBJRNL1\n";
/// Length of the file header: magic and generation.
pub const HEADER_LEN: u64 = 16;
const RECORD_HEAD: usize = 8;

/// Operation tags in a record body (a record is `stream (u16 len + bytes) | count (u32)
/// | operations`, each a tag and its fields, integers little-endian).
mod tag {
    /// `json (u32 len + bytes)`: the stream's record.
    pub const PUT_STREAM: u8 = 1;
    pub const DELETE_STREAM: u8 = 2;
    /// `seq (u64) | record (u32 len + bytes)`.
    pub const APPEND: u8 = 3;
    /// `seq (u64)`.
    pub const REMOVE: u8 = 4;
    /// `seq (u64)`: every message below it.
    pub const REMOVE_BELOW: u8 = 5;
    /// `name (u16 len + bytes) | record (u32 len + bytes)`.
    pub const PUT_CONSUMER: u8 = 6;
    /// `name (u16 len + bytes)`.
    pub const DELETE_CONSUMER: u8 = 7;
    /// `seq (u64)`: every message (log entry) from it on.
    pub const REMOVE_FROM: u8 = 8;
    /// `record (u32 len + bytes)`: a Raft group's hard state and voters.
    pub const PUT_RAFT_STATE: u8 = 9;
    /// `index (u64)`: how far into its Raft log a replicated stream has applied.
    pub const PUT_APPLIED: u8 = 10;
    /// `record (u32 len + bytes)`: a Raft group's owner's snapshot.
    pub const PUT_SNAPSHOT: u8 = 11;
}

/// One write to apply, on behalf of one stream.
#[derive(Debug, Clone, PartialEq)]
pub enum WriteOp {
    PutStream(Box<StreamRecord>),
    DeleteStream,
    Append {
        seq: u64,
        record: Vec<u8>,
    },
    Remove(u64),
    RemoveBelow(u64),
    PutConsumer {
        name: String,
        record: Vec<u8>,
    },
    DeleteConsumer(String),
    /// Every message from this sequence on: a Raft log's entries that a new leader's
    /// overwrite (the batch names the group's log, see `schema::raft_log`).
    RemoveFrom(u64),
    /// A Raft group's state ([`crate::raft::GroupState`], encoded).
    PutRaftState(Vec<u8>),
    /// A replicated stream has applied its Raft log up to this index (written with the
    /// changes it applied, so a restart applies exactly what follows).
    PutApplied(u64),
    /// A Raft group's owner's state as of an index of its log (the meta group's
    /// assignments, `crate::jetstream::meta::Meta::snapshot`, encoded): what lets the
    /// log be compacted.
    PutSnapshot(Vec<u8>),
}

/// Why a journal (or one of its records) could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JournalError {
    #[error("the journal does not start with meshbroker's journal header")]
    Header,
    #[error("journal record is truncated")]
    Truncated,
    #[error("journal record has unknown operation {0}")]
    UnknownOp(u8),
    #[error("journal record names a stream or consumer that is not UTF-8")]
    Name,
    #[error("journal record holds a stream record that does not parse: {0}")]
    StreamRecord(String),
    #[error("journal record has {0} bytes after its last operation")]
    Trailing(usize),
}

/// The file header for `generation`.
pub fn header(generation: u64) -> [u8; HEADER_LEN as usize] {
    let mut h = [0u8; HEADER_LEN as usize];
    h[..8].copy_from_slice(MAGIC);
    h[8..].copy_from_slice(&generation.to_le_bytes());
    h
}

/// The generation a file header names.
pub fn read_header(bytes: &[u8]) -> Result<u64, JournalError> {
    match bytes.get(..HEADER_LEN as usize) {
        Some(h) if &h[..8] == MAGIC => Ok(u64::from_le_bytes(
            h[8..].try_into().map_err(|_| JournalError::Header)?,
        )),
        _ => Err(JournalError::Header),
    }
}

/// Whether `bytes` (a whole file) is a header that was never finished: a file emptied
/// for a new generation and cut, by a crash, before or inside the header's write (a
/// prefix of it, or zeros where an OS crash lost the data but not the length). Such a
/// file holds nothing: it is emptied only once redb holds all it had.
pub fn is_unfinished_header(bytes: &[u8]) -> bool {
    if bytes.len() > HEADER_LEN as usize {
        return false;
    }
    let magic = &bytes[..bytes.len().min(MAGIC.len())];
    let prefix_of_ours = MAGIC.starts_with(magic) && bytes.len() < HEADER_LEN as usize;
    prefix_of_ours || bytes.iter().all(|&b| b == 0)
}

fn crc(generation: u64, body: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&generation.to_le_bytes());
    h.update(body);
    h.finalize()
}

/// Appends one record holding `stream`'s `ops` to `out`.
pub fn encode_record(out: &mut Vec<u8>, generation: u64, stream: &str, ops: &[WriteOp]) {
    let start = out.len();
    out.extend_from_slice(&[0u8; RECORD_HEAD]);
    put_str16(out, stream);
    out.extend_from_slice(&(ops.len() as u32).to_le_bytes());
    for op in ops {
        match op {
            WriteOp::PutStream(rec) => {
                out.push(tag::PUT_STREAM);
                // A record we just built always serialises; an empty one is refused
                // on replay rather than written wrong.
                put_bytes32(out, &serde_json::to_vec(rec).unwrap_or_default());
            }
            WriteOp::DeleteStream => out.push(tag::DELETE_STREAM),
            WriteOp::Append { seq, record } => {
                out.push(tag::APPEND);
                out.extend_from_slice(&seq.to_le_bytes());
                put_bytes32(out, record);
            }
            WriteOp::Remove(seq) => {
                out.push(tag::REMOVE);
                out.extend_from_slice(&seq.to_le_bytes());
            }
            WriteOp::RemoveBelow(seq) => {
                out.push(tag::REMOVE_BELOW);
                out.extend_from_slice(&seq.to_le_bytes());
            }
            WriteOp::PutConsumer { name, record } => {
                out.push(tag::PUT_CONSUMER);
                put_str16(out, name);
                put_bytes32(out, record);
            }
            WriteOp::DeleteConsumer(name) => {
                out.push(tag::DELETE_CONSUMER);
                put_str16(out, name);
            }
            WriteOp::RemoveFrom(seq) => {
                out.push(tag::REMOVE_FROM);
                out.extend_from_slice(&seq.to_le_bytes());
            }
            WriteOp::PutRaftState(record) => {
                out.push(tag::PUT_RAFT_STATE);
                put_bytes32(out, record);
            }
            WriteOp::PutApplied(index) => {
                out.push(tag::PUT_APPLIED);
                out.extend_from_slice(&index.to_le_bytes());
            }
            WriteOp::PutSnapshot(record) => {
                out.push(tag::PUT_SNAPSHOT);
                put_bytes32(out, record);
            }
        }
    }
    let body_len = out.len() - start - RECORD_HEAD;
    let sum = crc(generation, &out[start + RECORD_HEAD..]);
    out[start..start + 4].copy_from_slice(&(body_len as u32).to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&sum.to_le_bytes());
}

fn put_str16(out: &mut Vec<u8>, s: &str) {
    // Stream and consumer names are validated far below 64 KiB.
    let b = &s.as_bytes()[..s.len().min(u16::MAX as usize)];
    out.extend_from_slice(&(b.len() as u16).to_le_bytes());
    out.extend_from_slice(b);
}

fn put_bytes32(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

/// What [`next_record`] found at an offset.
#[derive(Debug, PartialEq)]
pub enum Next {
    /// A whole record: its stream and operations, and how many bytes it took.
    Record {
        stream: String,
        ops: Vec<WriteOp>,
        len: usize,
    },
    /// Nothing more: the end of the file.
    End,
    /// An incomplete record or one failing its check (a write cut short by a crash, or
    /// bytes from an earlier generation): the journal's valid part ends here.
    Torn,
}

/// Reads the record at the start of `bytes`, written under `generation`.
pub fn next_record(bytes: &[u8], generation: u64) -> Result<Next, JournalError> {
    if bytes.is_empty() {
        return Ok(Next::End);
    }
    let Some(head) = bytes.get(..RECORD_HEAD) else {
        return Ok(Next::Torn);
    };
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
    let sum = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
    let Some(body) = bytes.get(RECORD_HEAD..RECORD_HEAD + len) else {
        return Ok(Next::Torn);
    };
    if crc(generation, body) != sum {
        return Ok(Next::Torn);
    }
    let (stream, ops) = decode_body(body)?;
    Ok(Next::Record {
        stream,
        ops,
        len: RECORD_HEAD + len,
    })
}

/// A cursor over a record body.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], JournalError> {
        let (head, rest) = self.0.split_at_checked(n).ok_or(JournalError::Truncated)?;
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, JournalError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<usize, JournalError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]) as usize)
    }

    fn u32(&mut self) -> Result<usize, JournalError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    }

    fn u64(&mut self) -> Result<u64, JournalError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    fn str16(&mut self) -> Result<String, JournalError> {
        let n = self.u16()?;
        let b = self.take(n)?;
        std::str::from_utf8(b)
            .map(str::to_string)
            .map_err(|_| JournalError::Name)
    }

    fn bytes32(&mut self) -> Result<&'a [u8], JournalError> {
        let n = self.u32()?;
        self.take(n)
    }
}

fn decode_body(body: &[u8]) -> Result<(String, Vec<WriteOp>), JournalError> {
    let mut r = Reader(body);
    let stream = r.str16()?;
    let count = r.u32()?;
    // Each operation takes at least one byte: a count beyond that is a lie.
    let mut ops = Vec::with_capacity(count.min(r.0.len()));
    for _ in 0..count {
        let op = match r.u8()? {
            tag::PUT_STREAM => {
                let json = r.bytes32()?;
                let rec: StreamRecord = serde_json::from_slice(json)
                    .map_err(|e| JournalError::StreamRecord(e.to_string()))?;
                WriteOp::PutStream(Box::new(rec))
            }
            tag::DELETE_STREAM => WriteOp::DeleteStream,
            tag::APPEND => {
                let seq = r.u64()?;
                WriteOp::Append {
                    seq,
                    record: r.bytes32()?.to_vec(),
                }
            }
            tag::REMOVE => WriteOp::Remove(r.u64()?),
            tag::REMOVE_BELOW => WriteOp::RemoveBelow(r.u64()?),
            tag::PUT_CONSUMER => {
                let name = r.str16()?;
                WriteOp::PutConsumer {
                    name,
                    record: r.bytes32()?.to_vec(),
                }
            }
            tag::DELETE_CONSUMER => WriteOp::DeleteConsumer(r.str16()?),
            tag::REMOVE_FROM => WriteOp::RemoveFrom(r.u64()?),
            tag::PUT_RAFT_STATE => WriteOp::PutRaftState(r.bytes32()?.to_vec()),
            tag::PUT_APPLIED => WriteOp::PutApplied(r.u64()?),
            tag::PUT_SNAPSHOT => WriteOp::PutSnapshot(r.bytes32()?.to_vec()),
            other => return Err(JournalError::UnknownOp(other)),
        };
        ops.push(op);
    }
    if !r.0.is_empty() {
        return Err(JournalError::Trailing(r.0.len()));
    }
    Ok((stream, ops))
}

/// Where redb stands in the journal: `generation` and the byte offset after the last
/// record it has applied (16 bytes, as stored in the marker table). Ordered by
/// generation, then offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Applied {
    pub generation: u64,
    pub offset: u64,
}

impl Applied {
    pub fn to_bytes(self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&self.generation.to_le_bytes());
        b[8..].copy_from_slice(&self.offset.to_le_bytes());
        b
    }

    pub fn from_bytes(b: &[u8]) -> Option<Applied> {
        let b: &[u8; 16] = b.try_into().ok()?;
        let mut g = [0u8; 8];
        let mut o = [0u8; 8];
        g.copy_from_slice(&b[..8]);
        o.copy_from_slice(&b[8..]);
        Some(Applied {
            generation: u64::from_le_bytes(g),
            offset: u64::from_le_bytes(o),
        })
    }

    /// Where replay of a file of `generation` starts, or `None` when redb is already
    /// past all of it. The journal is emptied (and its generation raised) only once
    /// redb holds everything in it, so a file newer than redb's mark is wholly unapplied.
    pub fn replay_from(self, generation: u64) -> Option<u64> {
        use std::cmp::Ordering;
        match generation.cmp(&self.generation) {
            Ordering::Greater => Some(HEADER_LEN),
            Ordering::Equal => Some(self.offset.max(HEADER_LEN)),
            Ordering::Less => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<WriteOp> {
        vec![
            WriteOp::Append {
                seq: 7,
                record: b"message".to_vec(),
            },
            WriteOp::Remove(3),
            WriteOp::RemoveBelow(2),
            WriteOp::PutConsumer {
                name: "C".into(),
                record: b"{}".to_vec(),
            },
            WriteOp::DeleteConsumer("D".into()),
            WriteOp::RemoveFrom(9),
            WriteOp::PutRaftState(b"state".to_vec()),
            WriteOp::PutApplied(77),
            WriteOp::PutSnapshot(b"snapshot".to_vec()),
            WriteOp::DeleteStream,
        ]
    }

    #[test]
    fn records_round_trip_and_end_cleanly() {
        let mut buf = Vec::new();
        encode_record(&mut buf, 4, "ORDERS", &sample());
        encode_record(&mut buf, 4, "X", &[]);
        let Ok(Next::Record { stream, ops, len }) = next_record(&buf, 4) else {
            panic!("first record");
        };
        assert_eq!((stream.as_str(), ops), ("ORDERS", sample()));
        let Ok(Next::Record {
            stream,
            ops,
            len: l2,
        }) = next_record(&buf[len..], 4)
        else {
            panic!("second record");
        };
        assert_eq!((stream.as_str(), ops.len()), ("X", 0));
        assert_eq!(next_record(&buf[len + l2..], 4), Ok(Next::End));
    }

    #[test]
    fn a_cut_record_or_another_generation_is_torn() {
        let mut buf = Vec::new();
        encode_record(&mut buf, 1, "S", &sample());
        for cut in 1..buf.len() {
            assert_eq!(next_record(&buf[..cut], 1), Ok(Next::Torn), "cut at {cut}");
        }
        assert_eq!(next_record(&buf, 2), Ok(Next::Torn));
        let mut flipped = buf.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert_eq!(next_record(&flipped, 1), Ok(Next::Torn));
    }

    #[test]
    fn headers_and_marks() {
        assert_eq!(read_header(&header(9)), Ok(9));
        assert_eq!(read_header(b"MBJRNL2\n12345678"), Err(JournalError::Header));
        assert_eq!(read_header(b"short"), Err(JournalError::Header));
        let mark = Applied {
            generation: 3,
            offset: 100,
        };
        assert_eq!(Applied::from_bytes(&mark.to_bytes()), Some(mark));
        assert_eq!(mark.replay_from(3), Some(100));
        assert_eq!(mark.replay_from(4), Some(HEADER_LEN));
        assert_eq!(mark.replay_from(2), None);
        assert_eq!(Applied::default().replay_from(0), Some(HEADER_LEN));
    }

    #[test]
    fn a_header_cut_by_a_crash_is_unfinished_not_foreign() {
        let whole = header(5);
        for cut in 0..whole.len() {
            assert!(is_unfinished_header(&whole[..cut]), "cut at {cut}");
        }
        assert!(!is_unfinished_header(&whole), "a whole header is finished");
        assert!(is_unfinished_header(&[0u8; HEADER_LEN as usize]));
        assert!(is_unfinished_header(&[0u8; 3]));
        assert!(!is_unfinished_header(b"not a journal"));
        assert!(!is_unfinished_header(b"MBJRNL2\n"));
        let mut longer = vec![0u8; HEADER_LEN as usize + 1];
        assert!(
            !is_unfinished_header(&longer),
            "zeros past a header are damage"
        );
        longer.truncate(2);
        longer.copy_from_slice(b"MB");
        assert!(is_unfinished_header(&longer));
    }
}
