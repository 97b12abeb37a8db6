//! Raft frames and log entries from peers and disk: whatever the bytes, decoding never
//! panics and never allocates more than the frame can back; a frame that decodes
//! re-encodes to the same bytes (every field is carried, nothing is guessed); a stored
//! group state that decodes re-encodes the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshbroker::raft::{frame, GroupState};

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = frame::decode(data) {
        let again = frame::encode(m.group, &m.message);
        assert_eq!(again.as_deref().ok(), Some(data));
    }
    if let Ok(e) = frame::decode_entry(data) {
        let mut again = Vec::new();
        assert!(frame::encode_entry(&mut again, &e).is_ok());
        assert_eq!(again, data);
    }
    if let Ok(s) = GroupState::decode(data) {
        // A state stored before compaction existed reads as never compacted and is
        // written in today's form: the value survives the trip, not the bytes.
        assert_eq!(GroupState::decode(&s.encode()).as_ref(), Ok(&s));
    }
});
