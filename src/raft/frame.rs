//! Raft messages on the wire and log entries on disk, in our own encoding.
//!
//! raft-rs speaks protobuf 2.x types (`eraftpb`), and protobuf 2.x must never parse
//! bytes from the network (RUSTSEC-2024-0437: crafted input overflows the stack). So
//! nothing here uses protobuf's parser: a message between nodes is a flat record we
//! encode and decode field by field, with bounded lengths and a CRC-32 over the whole
//! frame, and every log entry inside it carries its own CRC-32, the same bytes the log
//! store keeps (so an entry is checked when it arrives and again whenever it is read).
//!
//! Frame (little endian):
//!
//! ```text
//! frame   = version:u8 group:u64 type:u8 to:u64 from:u64 term:u64 log_term:u64
//!           index:u64 commit:u64 commit_term:u64 request_snapshot:u64 reject:u8
//!           reject_hint:u64 deprecated_priority:u64 priority:i64 context:bytes
//!           n_entries:u32 entry*n snapshot? crc32:u32
//! entry   = len:u32 body crc32(body):u32
//! body    = type:u8 term:u64 index:u64 sync_log:u8 data:bytes context:bytes
//! snapshot= has:u8 [index:u64 term:u64 conf_state data:bytes]
//! conf_state = voters:list learners:list voters_outgoing:list learners_next:list auto_leave:u8
//! list    = n:u32 u64*n            bytes = n:u32 u8*n
//! ```
//!
//! What is refused, and why: a `MsgPropose` (each node proposes only to its own group
//! leader through our own requests, never by raft-rs forwarding, because raft-rs parses
//! the data of configuration-change proposals with protobuf), and configuration-change
//! entries (their data is protobuf; membership changes will carry our own encoding).

use bytes::Bytes;
use raft::eraftpb::{
    ConfState, Entry, EntryType, Message, MessageType, Snapshot, SnapshotMetadata,
};

/// The frame layout's version (the first byte).
pub const VERSION: u8 = 1;

/// The largest count of entries, or of ids in a list, one frame may declare. A real
/// frame holds far fewer; the bound keeps a lying peer from making us allocate.
const MAX_ITEMS: usize = 1 << 20;

/// Why a frame or an entry could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("raft frame is truncated")]
    Truncated,
    #[error("raft frame has version {0}, this node speaks {VERSION}")]
    Version(u8),
    #[error("raft frame checksum mismatch")]
    FrameChecksum,
    #[error("raft log entry checksum mismatch (entry {index})")]
    EntryChecksum { index: u64 },
    #[error("raft frame has unknown message type {0}")]
    MessageType(u8),
    #[error("raft entry has unknown type {0}")]
    EntryType(u8),
    #[error("raft frame has {0} where a flag (0 or 1) belongs")]
    Flag(u8),
    #[error("raft frame declares {0} items, more than a frame may hold")]
    TooMany(usize),
    #[error("raft frame has {0} bytes after its end")]
    Trailing(usize),
    #[error("raft proposals are not taken from the network")]
    Proposal,
    #[error("raft configuration-change entries are not carried yet")]
    ConfChange,
}

/// A Raft message for one group.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupMessage {
    pub group: u64,
    pub message: Message,
}

const MESSAGE_TYPES: [MessageType; 19] = [
    MessageType::MsgHup,
    MessageType::MsgBeat,
    MessageType::MsgPropose,
    MessageType::MsgAppend,
    MessageType::MsgAppendResponse,
    MessageType::MsgRequestVote,
    MessageType::MsgRequestVoteResponse,
    MessageType::MsgSnapshot,
    MessageType::MsgHeartbeat,
    MessageType::MsgHeartbeatResponse,
    MessageType::MsgUnreachable,
    MessageType::MsgSnapStatus,
    MessageType::MsgCheckQuorum,
    MessageType::MsgTransferLeader,
    MessageType::MsgTimeoutNow,
    MessageType::MsgReadIndex,
    MessageType::MsgReadIndexResp,
    MessageType::MsgRequestPreVote,
    MessageType::MsgRequestPreVoteResponse,
];

fn message_type(code: u8) -> Result<MessageType, FrameError> {
    MESSAGE_TYPES
        .iter()
        .copied()
        .find(|t| *t as u8 == code)
        .ok_or(FrameError::MessageType(code))
}

fn entry_type(code: u8) -> Result<EntryType, FrameError> {
    match code {
        0 => Ok(EntryType::EntryNormal),
        1 | 2 => Err(FrameError::ConfChange),
        _ => Err(FrameError::EntryType(code)),
    }
}

/// Appends `entry` as `len | body | crc32(body)`: the form entries travel in and are
/// stored in.
pub fn encode_entry(out: &mut Vec<u8>, entry: &Entry) -> Result<(), FrameError> {
    if entry.entry_type != EntryType::EntryNormal {
        return Err(FrameError::ConfChange);
    }
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    out.push(entry.entry_type as u8);
    out.extend_from_slice(&entry.term.to_le_bytes());
    out.extend_from_slice(&entry.index.to_le_bytes());
    out.push(u8::from(entry.sync_log));
    put_bytes(out, &entry.data);
    put_bytes(out, &entry.context);
    let body = &out[start + 4..];
    let (len, crc) = (body.len() as u32, crc32fast::hash(body));
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// Decodes one entry written by [`encode_entry`], checking its checksum.
pub fn decode_entry(bytes: &[u8]) -> Result<Entry, FrameError> {
    let mut r = Reader::new(bytes);
    let entry = r.entry()?;
    r.finish()?;
    Ok(entry)
}

/// Encodes a message for `group` as one frame.
pub fn encode(group: u64, m: &Message) -> Result<Vec<u8>, FrameError> {
    let mut out =
        Vec::with_capacity(128 + m.entries.iter().map(|e| e.data.len() + 48).sum::<usize>());
    out.push(VERSION);
    out.extend_from_slice(&group.to_le_bytes());
    out.push(m.msg_type as u8);
    for v in [
        m.to,
        m.from,
        m.term,
        m.log_term,
        m.index,
        m.commit,
        m.commit_term,
        m.request_snapshot,
    ] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.push(u8::from(m.reject));
    out.extend_from_slice(&m.reject_hint.to_le_bytes());
    out.extend_from_slice(&m.deprecated_priority.to_le_bytes());
    out.extend_from_slice(&m.priority.to_le_bytes());
    put_bytes(&mut out, &m.context);
    out.extend_from_slice(&(m.entries.len() as u32).to_le_bytes());
    for e in m.entries.iter() {
        encode_entry(&mut out, e)?;
    }
    match m.snapshot.as_ref() {
        None => out.push(0),
        Some(s) => {
            out.push(1);
            let meta = s.metadata.as_ref();
            out.extend_from_slice(&meta.map_or(0, |m| m.index).to_le_bytes());
            out.extend_from_slice(&meta.map_or(0, |m| m.term).to_le_bytes());
            let empty = ConfState::default();
            let cs = meta.and_then(|m| m.conf_state.as_ref()).unwrap_or(&empty);
            for list in [
                &cs.voters,
                &cs.learners,
                &cs.voters_outgoing,
                &cs.learners_next,
            ] {
                out.extend_from_slice(&(list.len() as u32).to_le_bytes());
                for id in list {
                    out.extend_from_slice(&id.to_le_bytes());
                }
            }
            out.push(u8::from(cs.auto_leave));
            put_bytes(&mut out, &s.data);
        }
    }
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    Ok(out)
}

/// Decodes a frame from a peer: checks its version and checksums, and refuses what a
/// peer must not send (see the module's notes).
pub fn decode(frame: &[u8]) -> Result<GroupMessage, FrameError> {
    let body_len = frame.len().checked_sub(4).ok_or(FrameError::Truncated)?;
    let (body, crc) = frame.split_at(body_len);
    let version = *body.first().ok_or(FrameError::Truncated)?;
    if version != VERSION {
        return Err(FrameError::Version(version));
    }
    if crc32fast::hash(body).to_le_bytes() != crc {
        return Err(FrameError::FrameChecksum);
    }
    let mut r = Reader::new(&body[1..]);
    let group = r.u64()?;
    let msg_type = message_type(r.u8()?)?;
    if msg_type == MessageType::MsgPropose {
        return Err(FrameError::Proposal);
    }
    let mut m = Message {
        msg_type,
        to: r.u64()?,
        from: r.u64()?,
        term: r.u64()?,
        log_term: r.u64()?,
        index: r.u64()?,
        commit: r.u64()?,
        commit_term: r.u64()?,
        request_snapshot: r.u64()?,
        reject: r.flag()?,
        reject_hint: r.u64()?,
        deprecated_priority: r.u64()?,
        priority: r.u64()? as i64,
        context: r.bytes()?,
        ..Message::default()
    };
    let n = r.count()?;
    let mut entries = Vec::with_capacity(n.min(1024));
    for _ in 0..n {
        entries.push(r.entry()?);
    }
    m.entries = entries.into();
    if r.flag()? {
        let index = r.u64()?;
        let term = r.u64()?;
        let conf_state = ConfState {
            voters: r.ids()?,
            learners: r.ids()?,
            voters_outgoing: r.ids()?,
            learners_next: r.ids()?,
            auto_leave: r.flag()?,
            ..ConfState::default()
        };
        let data = r.bytes()?;
        m.snapshot = Some(Snapshot {
            data,
            metadata: Some(SnapshotMetadata {
                conf_state: Some(conf_state).into(),
                index,
                term,
                ..SnapshotMetadata::default()
            })
            .into(),
            ..Snapshot::default()
        })
        .into();
    }
    r.finish()?;
    Ok(GroupMessage { group, message: m })
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

/// A cursor over a frame that never reads past its end.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(rest: &'a [u8]) -> Self {
        Reader { rest }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], FrameError> {
        if self.rest.len() < n {
            return Err(FrameError::Truncated);
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, FrameError> {
        Ok(self.take(1)?[0])
    }

    /// A flag is 0 or 1: any other byte would decode to a value that re-encodes
    /// differently, so a frame's bytes would not be what it says.
    fn flag(&mut self) -> Result<bool, FrameError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(FrameError::Flag(other)),
        }
    }

    fn u32(&mut self) -> Result<u32, FrameError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, FrameError> {
        let b = self.take(8)?;
        let mut a = [0; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    fn count(&mut self) -> Result<usize, FrameError> {
        let n = self.u32()? as usize;
        if n > MAX_ITEMS {
            return Err(FrameError::TooMany(n));
        }
        Ok(n)
    }

    fn bytes(&mut self) -> Result<Bytes, FrameError> {
        let n = self.u32()? as usize;
        Ok(Bytes::copy_from_slice(self.take(n)?))
    }

    fn ids(&mut self) -> Result<Vec<u64>, FrameError> {
        let n = self.count()?;
        // Eight bytes each must still be there: no allocation a frame cannot back.
        if self.rest.len() / 8 < n {
            return Err(FrameError::Truncated);
        }
        (0..n).map(|_| self.u64()).collect()
    }

    fn entry(&mut self) -> Result<Entry, FrameError> {
        let len = self.u32()? as usize;
        let body = self.take(len)?;
        let crc = self.u32()?;
        let mut b = Reader::new(body);
        let entry_type = entry_type(b.u8()?)?;
        let term = b.u64()?;
        let index = b.u64()?;
        if crc32fast::hash(body) != crc {
            return Err(FrameError::EntryChecksum { index });
        }
        let entry = Entry {
            entry_type,
            term,
            index,
            sync_log: b.flag()?,
            data: b.bytes()?,
            context: b.bytes()?,
            ..Entry::default()
        };
        b.finish()?;
        Ok(entry)
    }

    fn finish(&self) -> Result<(), FrameError> {
        match self.rest.len() {
            0 => Ok(()),
            n => Err(FrameError::Trailing(n)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the `raft_frame` fuzz target: an entry whose `sync_log` byte was 143
    /// (with a checksum to match) decoded as `true` and re-encoded as 1.
    #[test]
    fn a_flag_byte_other_than_0_or_1_is_refused() {
        let data: &[u8] = &[
            26, 0, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 16, 38, 0, 0, 0, 0, 52, 90, 83, 143, 0, 0, 0, 0,
            0, 0, 0, 0, 133, 171, 196, 91,
        ];
        assert_eq!(decode_entry(data).err(), Some(FrameError::Flag(143)));
    }

    fn entry(index: u64, data: &'static [u8]) -> Entry {
        Entry {
            term: 3,
            index,
            data: Bytes::from_static(data),
            context: Bytes::from_static(b"ctx"),
            ..Entry::default()
        }
    }

    fn append() -> Message {
        Message {
            msg_type: MessageType::MsgAppend,
            to: 2,
            from: 1,
            term: 3,
            log_term: 2,
            index: 9,
            commit: 8,
            commit_term: 2,
            entries: vec![entry(10, b"one"), entry(11, b"")].into(),
            context: Bytes::from_static(b"c"),
            priority: -4,
            ..Message::default()
        }
    }

    fn snapshot() -> Message {
        Message {
            msg_type: MessageType::MsgSnapshot,
            to: 3,
            from: 1,
            term: 5,
            snapshot: Some(Snapshot {
                data: Bytes::from_static(b"state"),
                metadata: Some(SnapshotMetadata {
                    conf_state: Some(ConfState {
                        voters: vec![1, 2, 3],
                        learners: vec![4],
                        auto_leave: true,
                        ..ConfState::default()
                    })
                    .into(),
                    index: 100,
                    term: 4,
                    ..SnapshotMetadata::default()
                })
                .into(),
                ..Snapshot::default()
            })
            .into(),
            ..Message::default()
        }
    }

    fn round_trip(group: u64, m: &Message) -> GroupMessage {
        let frame = encode(group, m).unwrap_or_else(|e| panic!("{e}"));
        decode(&frame).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn every_field_survives_the_trip() {
        for m in [append(), snapshot()] {
            let got = round_trip(77, &m);
            assert_eq!(got.group, 77);
            assert_eq!(got.message, m);
        }
        for t in MESSAGE_TYPES
            .iter()
            .filter(|t| **t != MessageType::MsgPropose)
        {
            let m = Message {
                msg_type: *t,
                reject: true,
                reject_hint: 5,
                request_snapshot: 6,
                deprecated_priority: 7,
                ..Message::default()
            };
            assert_eq!(round_trip(1, &m).message, m);
        }
    }

    #[test]
    fn a_flipped_bit_anywhere_is_detected() {
        let frame = encode(1, &append()).unwrap_or_else(|e| panic!("{e}"));
        for i in 0..frame.len() {
            for bit in [0, 3, 7] {
                let mut bad = frame.clone();
                bad[i] ^= 1 << bit;
                assert!(
                    decode(&bad).is_err(),
                    "flip of bit {bit} in byte {i} went unseen"
                );
            }
        }
        // A stored entry too: each carries its own checksum.
        let mut one = Vec::new();
        encode_entry(&mut one, &entry(10, b"payload")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(decode_entry(&one).ok(), Some(entry(10, b"payload")));
        let last = one.len() - 6;
        one[last] ^= 0x10;
        assert_eq!(
            decode_entry(&one),
            Err(FrameError::EntryChecksum { index: 10 })
        );
    }

    #[test]
    fn truncated_frames_and_lying_counts_are_refused_without_allocating() {
        let frame = encode(1, &snapshot()).unwrap_or_else(|e| panic!("{e}"));
        for cut in 0..frame.len() {
            assert!(decode(&frame[..cut]).is_err(), "cut at {cut} accepted");
        }
        // A frame that claims 2^31 voters, with a valid checksum: refused as it is.
        let mut m = Vec::new();
        m.push(VERSION);
        m.extend_from_slice(&1u64.to_le_bytes());
        m.push(MessageType::MsgSnapshot as u8);
        m.extend_from_slice(&[0; 8 * 8 + 1 + 8 * 3]);
        m.extend_from_slice(&0u32.to_le_bytes()); // context
        m.extend_from_slice(&0u32.to_le_bytes()); // entries
        m.push(1);
        m.extend_from_slice(&[0; 16]);
        m.extend_from_slice(&(1u32 << 31).to_le_bytes());
        let crc = crc32fast::hash(&m);
        m.extend_from_slice(&crc.to_le_bytes());
        assert_eq!(decode(&m), Err(FrameError::TooMany(1 << 31)));
    }

    #[test]
    fn proposals_and_configuration_changes_are_not_taken_from_peers() {
        let propose = Message {
            msg_type: MessageType::MsgPropose,
            entries: vec![entry(1, b"x")].into(),
            ..Message::default()
        };
        let frame = encode(1, &propose).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(decode(&frame), Err(FrameError::Proposal));
        let mut cc = append();
        cc.entries[0].entry_type = EntryType::EntryConfChangeV2;
        assert_eq!(encode(1, &cc), Err(FrameError::ConfChange));
        let mut version = encode(1, &append()).unwrap_or_else(|e| panic!("{e}"));
        version[0] = 9;
        assert_eq!(decode(&version), Err(FrameError::Version(9)));
    }
}
