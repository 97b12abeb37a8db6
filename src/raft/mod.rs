//! Raft for replicated JetStream, the pure part: how a node is named in a group, the
//! timings every group runs with, a group's persisted state, and (in [`frame`]) the
//! encoding of messages between nodes and of log entries on disk.
//!
//! The consensus itself is tikv's raft-rs (`raft::RawNode`): a state machine with no
//! threads or timers that the group actor (`actors/raft.rs`) ticks, steps with peers'
//! messages, proposes to, and drains of its `Ready` state.

pub mod frame;
pub mod log;

use raft::eraftpb::{ConfState, HardState};

pub use frame::{FrameError, GroupMessage};
pub use log::{Compacted, GroupLog, LogError};

/// How often the node-wide ticker ticks every group.
pub const TICK_MS: u64 = 100;
/// A leader with nothing to send says it is alive every this many ticks (0.5 s).
pub const HEARTBEAT_TICKS: usize = 5;
/// A follower that hears no leader campaigns after a random number of ticks in this
/// range (1.5–3 s). nats-server waits 4–9 s; with pre-vote and check-quorum a shorter
/// timeout does not flap under load, because a node that still hears its leader
/// refuses to pre-vote for another.
pub const ELECTION_TICKS: (usize, usize) = (15, 30);

/// The meta group (stream and consumer assignments): group id 0.
pub const META_GROUP: u64 = 0;

/// A node's id in every Raft group, from its server name: the same on every node
/// (FNV-1a, 64 bits), never 0 (raft-rs reserves it for "none").
pub fn node_id(server_name: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in server_name.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h.max(1)
}

/// The raft-rs configuration every group runs with.
pub fn group_config(id: u64, applied: u64) -> raft::Config {
    raft::Config {
        id,
        applied,
        heartbeat_tick: HEARTBEAT_TICKS,
        election_tick: ELECTION_TICKS.0,
        min_election_tick: ELECTION_TICKS.0,
        max_election_tick: ELECTION_TICKS.1,
        pre_vote: true,
        check_quorum: true,
        max_size_per_msg: 1024 * 1024,
        max_inflight_msgs: 256,
        ..raft::Config::default()
    }
}

/// The leader of a stream's group proposes a compaction marker once every voter holds
/// this many entries past the last marker.
pub const COMPACT_EVERY: u64 = 4096;

/// The meta group's interval: its entries are few (stream creates, updates and
/// deletes) and its owner snapshots its whole state to compact, so it compacts soon,
/// which also lets its leaders tell a peer that lost its store (see
/// [`lost_store_notice`]) before the group has a long history.
pub const META_COMPACT_EVERY: u64 = 64;

/// How many entries past the last marker group `group` proposes the next one.
pub fn compact_every(group: u64) -> u64 {
    if group == META_GROUP {
        META_COMPACT_EVERY
    } else {
        COMPACT_EVERY
    }
}

/// The context that marks a compaction marker among a group's entries (its data: the
/// index every voter held, u64 LE). Owners never see these entries.
pub const COMPACT_MARKER: &[u8] = b"mb:compact";

/// A compaction marker the leader should propose, given what each voter holds
/// (`matched`, the leader's own log among them) and the last marker proposed or
/// committed: the index every voter holds, once it is `every` entries past the last.
///
/// The marker is what makes compaction safe without snapshots: once it commits, every
/// node knows that every voter held everything up to it, so no leader will ever need
/// to send those entries again, and each node drops them once its own owner has them
/// durable. A voter that is away holds the marker back, and the log grows until it
/// returns (or, later, until it is sent a snapshot).
pub fn compaction_marker(
    matched: impl IntoIterator<Item = u64>,
    last: u64,
    every: u64,
) -> Option<u64> {
    let held_by_all = matched.into_iter().min()?;
    (held_by_all >= last.saturating_add(every.max(1))).then_some(held_by_all)
}

/// The marker a leader should propose now (see [`compaction_marker`]); `None` when
/// this node does not lead the group or the marker is not due.
pub fn marker_due(raft: &raft::Raft<GroupLog>, last: u64, every: u64) -> Option<u64> {
    if raft.state != raft::StateRole::Leader {
        return None;
    }
    compaction_marker(raft.prs().iter().map(|(_, p)| p.matched), last, every)
}

/// The index marker entry `data` names (`None`: not a marker's data).
pub fn decode_marker(data: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(data.try_into().ok()?))
}

/// The notice a leader sends a voter that asks for entries this log compacted away:
/// a `MsgSnapshot` naming the compaction point, with no data. No leader sends any
/// other snapshot (raft-rs is never given one: [`GroupLog`] refuses to make them), so
/// the message means exactly this.
///
/// Why it is certain that voter lost its store: a log compacts only past a marker that
/// committed once every voter held the log up to it, so a voter missing entries below
/// that point held them once and no longer does.
pub fn lost_store_notice(
    from: u64,
    to: u64,
    term: u64,
    compacted: Compacted,
) -> raft::eraftpb::Message {
    use raft::eraftpb::{Message, MessageType, Snapshot, SnapshotMetadata};
    Message {
        msg_type: MessageType::MsgSnapshot,
        from,
        to,
        term,
        snapshot: Some(Snapshot {
            metadata: Some(SnapshotMetadata {
                index: compacted.index,
                term: compacted.term,
                conf_state: Some(ConfState::default()).into(),
                ..SnapshotMetadata::default()
            })
            .into(),
            ..Snapshot::default()
        })
        .into(),
        ..Message::default()
    }
}

/// What a voter whose log ends at `last` learns from a leader's [`lost_store_notice`]:
/// the point the leader compacted to, when this log does not reach it (this node lost
/// entries it held); `None` when its log reaches it (the notice is stale: the store was
/// since replaced by a copy of a replica's) or `m` is no such notice.
pub fn lost_store_told(m: &raft::eraftpb::Message, last: u64) -> Option<u64> {
    if m.msg_type != raft::eraftpb::MessageType::MsgSnapshot {
        return None;
    }
    let index = m.snapshot.as_ref()?.metadata.as_ref()?.index;
    (index > last).then_some(index)
}

/// Where a group compacts its log: no further than every voter held (`marker`) and
/// than its owner holds durably (`durable`); `None` if that is not past `compacted`.
pub fn compaction_point(marker: u64, durable: u64, compacted: u64) -> Option<u64> {
    let to = marker.min(durable);
    (to > compacted).then_some(to)
}

/// How far the owner holds the log, for compaction: everything `applied` once it
/// holds durably (`durable`) the last entry it was given (`told`): what follows are
/// only a new leader's empty entries and markers, which the owner never sees.
/// Without that an idle group whose last entries are markers would never compact
/// past its owner's last write.
pub fn owner_holds(durable: u64, told: u64, applied: u64) -> u64 {
    if durable >= told {
        applied
    } else {
        durable.min(applied)
    }
}

/// What an owner must hold for a log compacted to `to` when the last entry it was
/// given is `told`: the entries up to `to` it was given (none past `told`).
pub fn owner_floor(to: u64, told: u64) -> u64 {
    to.min(told)
}

/// What a group keeps besides its log: the vote, term and commit (raft's hard state),
/// its voters, where its log was compacted and how far its owner must hold it. Stored
/// as `term | vote | commit | n | voter*n [| compacted index | compacted term
/// [| owner floor]]` (u64 LE), a CRC-32 after it (a state written before compaction
/// existed has no point; one written before the floor existed has the point as floor).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct GroupState {
    pub hard: HardState,
    pub voters: Vec<u64>,
    pub compacted: Compacted,
    /// The owner must hold at least the log up to here to start: the entries it was
    /// given up to the compaction point (see [`owner_floor`]).
    pub owner_floor: u64,
}

/// Why a stored group state could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    #[error("raft group state is {0} bytes, not a whole record")]
    Length(usize),
    #[error("raft group state fails its checksum")]
    Checksum,
}

impl GroupState {
    pub fn conf_state(&self) -> ConfState {
        ConfState {
            voters: self.voters.clone(),
            ..ConfState::default()
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(32 + 8 * self.voters.len() + 4);
        for v in [self.hard.term, self.hard.vote, self.hard.commit] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&(self.voters.len() as u64).to_le_bytes());
        for v in &self.voters {
            out.extend_from_slice(&v.to_le_bytes());
        }
        for v in [self.compacted.index, self.compacted.term, self.owner_floor] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<GroupState, StateError> {
        let bad = || StateError::Length(bytes.len());
        let body_len = bytes.len().checked_sub(4).ok_or_else(bad)?;
        let (body, crc) = bytes.split_at(body_len);
        if body.len() < 32 || (body.len() - 32) % 8 != 0 {
            return Err(bad());
        }
        if crc32fast::hash(body).to_le_bytes() != crc {
            return Err(StateError::Checksum);
        }
        let words: Vec<u64> = body
            .chunks_exact(8)
            .map(|c| {
                let mut a = [0; 8];
                a.copy_from_slice(c);
                u64::from_le_bytes(a)
            })
            .collect();
        let n = usize::try_from(words[3]).map_err(|_| bad())?;
        let (compacted, owner_floor) = match words.len().checked_sub(4).map(|w| w.checked_sub(n)) {
            Some(Some(0)) => (Compacted::default(), 0),
            Some(Some(tail @ (2 | 3))) => {
                let c = Compacted {
                    index: words[4 + n],
                    term: words[5 + n],
                };
                (c, if tail == 3 { words[6 + n] } else { c.index })
            }
            _ => return Err(bad()),
        };
        Ok(GroupState {
            hard: HardState {
                term: words[0],
                vote: words[1],
                commit: words[2],
                ..HardState::default()
            },
            voters: words[4..4 + n].to_vec(),
            compacted,
            owner_floor,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lost_store_notice_crosses_the_wire_and_only_a_short_log_takes_it() {
        let compacted = Compacted {
            index: 8_192,
            term: 3,
        };
        let notice = lost_store_notice(1, 2, 4, compacted);
        let bytes = frame::encode(7, &notice).unwrap();
        let back = frame::decode(&bytes).unwrap();
        assert_eq!((back.group, &back.message), (7, &notice));
        assert_eq!(lost_store_told(&back.message, 0), Some(8_192));
        assert_eq!(lost_store_told(&back.message, 8_191), Some(8_192));
        // A log that reaches the point (a replaced store) is not told it lost anything.
        assert_eq!(lost_store_told(&back.message, 8_192), None);
        let heartbeat = raft::eraftpb::Message {
            msg_type: raft::eraftpb::MessageType::MsgHeartbeat,
            commit: 9_000,
            ..Default::default()
        };
        assert_eq!(lost_store_told(&heartbeat, 0), None);
    }

    #[test]
    fn node_ids_are_stable_and_distinct() {
        assert_eq!(node_id("n1"), node_id("n1"));
        assert_ne!(node_id("n1"), node_id("n2"));
        assert_ne!(node_id(""), 0);
    }

    #[test]
    fn group_state_round_trips_and_damage_is_seen() {
        let s = GroupState {
            hard: HardState {
                term: 7,
                vote: 3,
                commit: 99,
                ..HardState::default()
            },
            voters: vec![1, 2, 3],
            compacted: Compacted {
                index: 4096,
                term: 6,
            },
            owner_floor: 4000,
        };
        let bytes = s.encode();
        assert_eq!(GroupState::decode(&bytes), Ok(s));
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x04;
            assert!(GroupState::decode(&bad).is_err(), "byte {i}");
        }
        assert!(GroupState::decode(&bytes[..bytes.len() - 9]).is_err());
    }

    #[test]
    fn a_state_stored_before_compaction_reads_as_never_compacted() {
        let mut old = Vec::new();
        for w in [7u64, 3, 99, 2, 1, 2] {
            old.extend_from_slice(&w.to_le_bytes());
        }
        old.extend_from_slice(&crc32fast::hash(&old).to_le_bytes());
        let s = GroupState::decode(&old).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.voters, [1, 2]);
        assert_eq!(s.compacted, Compacted::default());
        assert_eq!(s.hard.commit, 99);
        // Compacted before the owner floor existed: the owner had to hold the point.
        let mut older = Vec::new();
        for w in [7u64, 3, 99, 1, 1, 500, 2] {
            older.extend_from_slice(&w.to_le_bytes());
        }
        older.extend_from_slice(&crc32fast::hash(&older).to_le_bytes());
        let s = GroupState::decode(&older).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((s.compacted.index, s.owner_floor), (500, 500));
    }

    #[test]
    fn markers_wait_for_every_voter_and_compaction_for_the_owner() {
        let every = COMPACT_EVERY;
        assert_eq!(compaction_marker([9000, 9000, 9000], 0, every), Some(9000));
        // One voter behind holds the marker back, however far the others are.
        assert_eq!(compaction_marker([90_000, 4000, 90_000], 0, every), None);
        assert_eq!(compaction_marker([9000, 9000], 5000, every), None);
        assert_eq!(compaction_marker([9096, 9100], 5000, every), Some(9096));
        assert_eq!(compaction_marker([], 0, every), None);
        // The meta group's interval is shorter.
        assert_eq!(compact_every(META_GROUP), META_COMPACT_EVERY);
        assert_eq!(compaction_marker([64, 70], 0, compact_every(0)), Some(64));
        assert_eq!(compaction_marker([64, 70], 0, compact_every(5)), None);
        assert_eq!(decode_marker(&9096u64.to_le_bytes()), Some(9096));
        assert_eq!(decode_marker(b"short"), None);
        assert_eq!(compaction_point(9096, 500, 0), Some(500));
        assert_eq!(compaction_point(9096, 20_000, 500), Some(9096));
        assert_eq!(compaction_point(9096, 20_000, 9096), None);
        assert_eq!(compaction_point(0, 20_000, 0), None);
        // An owner that holds the last entry it was given holds all that was applied;
        // one that does not holds what it said.
        assert_eq!(owner_holds(40, 40, 75), 75);
        assert_eq!(owner_holds(30, 40, 75), 30);
        assert_eq!(owner_holds(90, 40, 75), 75);
        assert_eq!(owner_floor(75, 40), 40);
        assert_eq!(owner_floor(75, 90), 75);
    }

    use ::raft::RawNode;
    use std::collections::VecDeque;

    /// Three raft-rs nodes with our timings and our log, every message through our
    /// frame codec, the Ready cycle the group actor runs (persist, then send persisted
    /// messages), and compaction as the group actor does it (the state machine here
    /// holds what it applied durably at once).
    struct Sim {
        nodes: Vec<RawNode<GroupLog>>,
        wire: VecDeque<Vec<u8>>,
        committed: Vec<Vec<Vec<u8>>>,
        markers: Vec<u64>,
        proposed_marker: Vec<u64>,
        down: Option<usize>,
    }

    impl Sim {
        fn new() -> Sim {
            let ids: Vec<u64> = ["a", "b", "c"].iter().map(|n| node_id(n)).collect();
            let logger = slog::Logger::root(slog::Discard, slog::o!());
            let nodes = ids
                .iter()
                .map(|id| {
                    let cs = ConfState {
                        voters: ids.clone(),
                        ..ConfState::default()
                    };
                    let log = GroupLog::new(HardState::default(), cs, Compacted::default(), vec![])
                        .unwrap_or_else(|e| panic!("{e}"));
                    RawNode::new(&group_config(*id, 0), log, &logger)
                        .unwrap_or_else(|e| panic!("{e}"))
                })
                .collect();
            Sim {
                nodes,
                wire: VecDeque::new(),
                committed: vec![Vec::new(); 3],
                markers: vec![0; 3],
                proposed_marker: vec![0; 3],
                down: None,
            }
        }

        fn index_of(&self, id: u64) -> Option<usize> {
            self.nodes.iter().position(|n| n.raft.id == id)
        }

        fn send(&mut self, msgs: Vec<::raft::eraftpb::Message>) {
            for m in msgs {
                let frame = frame::encode(META_GROUP, &m).unwrap_or_else(|e| panic!("{e}"));
                self.wire.push_back(frame);
            }
        }

        fn ready(&mut self, i: usize) {
            if !self.nodes[i].has_ready() {
                return;
            }
            let mut rd = self.nodes[i].ready();
            let msgs = rd.take_messages();
            self.send(msgs);
            if !rd.entries().is_empty() {
                let entries = rd.entries().clone();
                self.nodes[i]
                    .mut_store()
                    .append(&entries)
                    .unwrap_or_else(|e| panic!("{e}"));
            }
            if let Some(hs) = rd.hs() {
                let hs = hs.clone();
                self.nodes[i].mut_store().set_hard_state(hs);
            }
            let persisted = rd.take_persisted_messages();
            self.send(persisted);
            let committed = rd.take_committed_entries();
            self.apply(i, committed);
            let mut light = self.nodes[i].advance(rd);
            if let Some(commit) = light.commit_index() {
                self.nodes[i].mut_store().set_commit(commit);
            }
            let msgs = light.take_messages();
            self.send(msgs);
            let committed = light.take_committed_entries();
            self.apply(i, committed);
            self.nodes[i].advance_apply();
            let last = self.markers[i].max(self.proposed_marker[i]);
            if let Some(m) = marker_due(&self.nodes[i].raft, last, COMPACT_EVERY) {
                let data = m.to_le_bytes().to_vec();
                if self.nodes[i].propose(COMPACT_MARKER.to_vec(), data).is_ok() {
                    self.proposed_marker[i] = m;
                }
            }
        }

        fn apply(&mut self, i: usize, entries: Vec<::raft::eraftpb::Entry>) {
            for e in entries {
                if e.context.as_ref() == COMPACT_MARKER {
                    let m = decode_marker(&e.data).unwrap_or_else(|| panic!("marker data"));
                    self.markers[i] = self.markers[i].max(m);
                    let store = self.nodes[i].mut_store();
                    if let Some(to) = compaction_point(m, e.index, store.compacted().index) {
                        store.compact_to(to).unwrap_or_else(|e| panic!("{e}"));
                    }
                } else if !e.data.is_empty() {
                    self.committed[i].push(e.data.to_vec());
                }
            }
        }

        /// Ticks everyone `ticks` times, delivering every message in between.
        fn run(&mut self, ticks: usize) {
            for _ in 0..ticks {
                for i in 0..3 {
                    if Some(i) != self.down {
                        self.nodes[i].tick();
                    }
                }
                self.settle();
            }
        }

        fn settle(&mut self) {
            for _ in 0..100 {
                for i in 0..3 {
                    if Some(i) != self.down {
                        self.ready(i);
                    }
                }
                if self.wire.is_empty() {
                    return;
                }
                while let Some(bytes) = self.wire.pop_front() {
                    let m = frame::decode(&bytes).unwrap_or_else(|e| panic!("{e}"));
                    let Some(to) = self.index_of(m.message.to) else {
                        continue;
                    };
                    if Some(to) != self.down {
                        let _ = self.nodes[to].step(m.message);
                    }
                }
            }
        }

        fn leader(&self) -> Option<usize> {
            (0..3).find(|i| {
                Some(*i) != self.down && self.nodes[*i].raft.state == ::raft::StateRole::Leader
            })
        }
    }

    #[test]
    fn three_nodes_elect_replicate_and_survive_the_leader() {
        let mut sim = Sim::new();
        sim.run(ELECTION_TICKS.1 * 2);
        let leader = sim.leader().unwrap_or_else(|| panic!("no leader"));
        for n in 0..10u8 {
            let proposed = sim.nodes[leader].propose(vec![], vec![n]);
            assert!(proposed.is_ok(), "{proposed:?}");
        }
        sim.run(2);
        for i in 0..3 {
            assert_eq!(
                sim.committed[i],
                (0..10u8).map(|n| vec![n]).collect::<Vec<_>>()
            );
        }
        // The leader goes away: another is elected within the election timeout and
        // what it commits reaches the third node in the same order.
        sim.down = Some(leader);
        sim.run(ELECTION_TICKS.1 * 2 + 2);
        let next = sim.leader().unwrap_or_else(|| panic!("no new leader"));
        assert_ne!(next, leader);
        assert!(sim.nodes[next].propose(vec![], vec![42]).is_ok());
        sim.run(2);
        let third = (0..3)
            .find(|i| *i != leader && *i != next)
            .unwrap_or_else(|| panic!("three nodes"));
        assert_eq!(sim.committed[next].last(), Some(&vec![42]));
        assert_eq!(sim.committed[third], sim.committed[next]);
        // The old leader returns and catches up as a follower.
        sim.down = None;
        sim.run(HEARTBEAT_TICKS * 3);
        assert_eq!(sim.committed[leader], sim.committed[next]);
        assert_eq!(sim.leader(), Some(next), "the old leader must not disrupt");
    }

    #[test]
    fn logs_compact_only_what_every_voter_holds_and_a_new_leader_goes_on() {
        let mut sim = Sim::new();
        sim.run(ELECTION_TICKS.1 * 2);
        let leader = sim.leader().unwrap_or_else(|| panic!("no leader"));
        let away = (leader + 1) % 3;
        let n = (COMPACT_EVERY * 2 + 100) as usize;
        let payload = |k: usize| (k as u32).to_le_bytes().to_vec();
        // A follower is away while the others commit two markers' worth: nobody may
        // compact, since the one away will need every entry.
        sim.down = Some(away);
        for k in 0..n {
            assert!(sim.nodes[leader].propose(vec![], payload(k)).is_ok());
            if k % 200 == 0 {
                sim.settle();
            }
        }
        sim.run(2);
        assert_eq!(sim.committed[leader].len(), n);
        for i in 0..3 {
            assert_eq!(sim.nodes[i].store().compacted().index, 0, "node {i}");
        }
        // It returns, catches up, and then every log compacts.
        sim.down = None;
        sim.run(HEARTBEAT_TICKS * 4);
        assert_eq!(sim.committed[away], sim.committed[leader]);
        for k in n..n + 10 {
            assert!(sim.nodes[leader].propose(vec![], payload(k)).is_ok());
        }
        sim.run(4);
        for i in 0..3 {
            let log = sim.nodes[i].store();
            assert!(
                log.compacted().index >= n as u64,
                "node {i}: {:?}",
                log.compacted()
            );
            assert!(log.len() < 20, "node {i} holds {}", log.len());
        }
        // The leader goes: a new one is elected from compacted logs, and what it
        // commits reaches the other.
        sim.down = Some(leader);
        sim.run(ELECTION_TICKS.1 * 2 + 2);
        let next = sim.leader().unwrap_or_else(|| panic!("no new leader"));
        assert!(sim.nodes[next].propose(vec![], b"after".to_vec()).is_ok());
        sim.run(2);
        let third = (0..3)
            .find(|i| *i != leader && *i != next)
            .unwrap_or_else(|| panic!("three nodes"));
        assert_eq!(sim.committed[next].last(), Some(&b"after".to_vec()));
        assert_eq!(sim.committed[third], sim.committed[next]);
        let expected: Vec<Vec<u8>> = (0..n + 10).map(payload).collect();
        assert_eq!(&sim.committed[third][..n + 10], &expected[..]);
    }
}
