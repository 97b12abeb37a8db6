//! The subject index against a naive model: any sequence of inserts, removals and
//! snapshots, then every match agrees with `subject::matches` over the model.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use meshbroker::subject;
use meshbroker::subject_index::SubjectIndex;

#[derive(Arbitrary, Debug)]
enum Step {
    Insert {
        tokens: Vec<u8>,
        queue: Option<bool>,
    },
    Remove {
        pick: u16,
    },
    Snapshot,
    Match {
        tokens: Vec<u8>,
    },
}

/// The model: (filter, queue group, id) of every entry the index should hold.
type Model = Vec<(Vec<u8>, Option<Vec<u8>>, u32)>;

const WORDS: [&[u8]; 5] = [b"a", b"b", b"c", b"*", b">"];

fn subject_from(tokens: &[u8], literal: bool) -> Vec<u8> {
    let words = if literal { &WORDS[..3] } else { &WORDS[..] };
    let parts: Vec<&[u8]> = tokens
        .iter()
        .take(6)
        .map(|t| words[usize::from(*t) % words.len()])
        .collect();
    parts.join(&b'.')
}

fuzz_target!(|steps: Vec<Step>| {
    let mut index: SubjectIndex<u32> = SubjectIndex::new();
    let mut model: Model = Vec::new();
    let mut snapshots: Vec<(SubjectIndex<u32>, Model)> = Vec::new();
    let mut next_id = 0u32;
    for step in steps.into_iter().take(200) {
        match step {
            Step::Insert { tokens, queue } => {
                let s = subject_from(&tokens, false);
                let q = queue.map(|b| if b { b"q1".to_vec() } else { b"q2".to_vec() });
                let valid = subject::is_valid_subject(&s);
                assert_eq!(index.insert(&s, q.as_deref(), next_id).is_ok(), valid);
                if valid {
                    model.push((s, q, next_id));
                }
                next_id += 1;
            }
            Step::Remove { pick } => {
                if !model.is_empty() {
                    let (s, q, id) = model.swap_remove(usize::from(pick) % model.len());
                    assert!(index.remove(&s, q.as_deref(), &id).is_ok());
                }
            }
            Step::Snapshot => snapshots.push((index.clone(), model.clone())),
            Step::Match { tokens } => {
                let s = subject_from(&tokens, true);
                check(&index, &model, &s);
            }
        }
        assert_eq!(index.len(), model.len());
    }
    // Snapshots taken earlier still answer as the model did then.
    for (snap, then) in &snapshots {
        for t in 0..27u8 {
            let s = subject_from(&[t % 3, (t / 3) % 3, t / 9], true);
            check(snap, then, &s);
        }
    }
});

fn check(index: &SubjectIndex<u32>, model: &Model, s: &[u8]) {
    let result = index.matches(s);
    let mut plain = result.plain.clone();
    plain.sort();
    let mut want: Vec<u32> = model
        .iter()
        .filter(|(f, q, _)| q.is_none() && subject::matches(f, s))
        .map(|(_, _, id)| *id)
        .collect();
    want.sort();
    assert_eq!(
        plain,
        want,
        "plain matches for {:?}",
        String::from_utf8_lossy(s)
    );
    let mut queued: Vec<u32> = result
        .queues
        .iter()
        .flat_map(|g| g.members.iter().copied())
        .collect();
    queued.sort();
    let mut want_q: Vec<u32> = model
        .iter()
        .filter(|(f, q, _)| q.is_some() && subject::matches(f, s))
        .map(|(_, _, id)| *id)
        .collect();
    want_q.sort();
    assert_eq!(queued, want_q);
    assert_eq!(
        index.has_interest(s),
        !plain.is_empty() || !queued.is_empty()
    );
}
