//! The subject index: which subscriptions a published subject reaches.
//!
//! A trie keyed by subject tokens, with a `*` and a `>` branch at every level, holding
//! plain subscriptions and queue groups at the node where their subject ends. It owns
//! nothing but the trie; the entries `S` are whatever the caller uses to reach a
//! subscriber (in the broker, an `Arc` to the subscription).
//!
//! Cloning an index is O(1): nodes are shared behind `Arc`s and copied on write, one
//! node per level along the path that changes (`Arc::make_mut`), and each level's
//! children live in a persistent map (`imbl`), so copying a node with thousands of
//! children (`_INBOX.<id>` for every pending request) costs O(log n), not O(n). The
//! single writer (the account's router actor) mutates its own copy and publishes a
//! clone as a read-only snapshot; readers match against the snapshot without a lock.

use std::sync::Arc;

use crate::subject;

/// A set of entries that share a queue group name at one subject.
#[derive(Clone, Debug)]
pub struct QueueGroup<S> {
    pub name: Box<[u8]>,
    pub members: Vec<S>,
}

/// A level's literal children: a persistent map, cheap to copy on write.
type Children<S> = imbl::GenericHashMap<
    Box<[u8]>,
    Arc<Node<S>>,
    foldhash::fast::RandomState,
    imbl::shared_ptr::DefaultSharedPtr,
>;

#[derive(Clone, Debug)]
struct Node<S> {
    literal: Children<S>,
    star: Option<Arc<Node<S>>>,
    full: Option<Arc<Node<S>>>,
    plain: Vec<S>,
    queues: Vec<QueueGroup<S>>,
}

impl<S> Default for Node<S> {
    fn default() -> Self {
        Node {
            literal: Default::default(),
            star: None,
            full: None,
            plain: Vec::new(),
            queues: Vec::new(),
        }
    }
}

impl<S> Node<S> {
    fn is_empty(&self) -> bool {
        self.literal.is_empty()
            && self.star.is_none()
            && self.full.is_none()
            && self.plain.is_empty()
            && self.queues.is_empty()
    }
}

/// What one published subject reaches: every plain subscription, and per queue group
/// all members (the caller picks one).
#[derive(Clone, Debug)]
pub struct MatchResult<S> {
    pub plain: Vec<S>,
    pub queues: Vec<QueueGroup<S>>,
}

impl<S> MatchResult<S> {
    pub fn is_empty(&self) -> bool {
        self.plain.is_empty() && self.queues.is_empty()
    }
}

impl<S> Default for MatchResult<S> {
    fn default() -> Self {
        MatchResult {
            plain: Vec::new(),
            queues: Vec::new(),
        }
    }
}

/// Why an insert or removal was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IndexError {
    #[error("invalid subject")]
    InvalidSubject,
    #[error("no such subscription")]
    NotFound,
}

/// The trie. `S` is compared with `==` to find the entry to remove.
#[derive(Clone, Debug)]
pub struct SubjectIndex<S> {
    root: Arc<Node<S>>,
    count: usize,
    generation: u64,
}

impl<S> Default for SubjectIndex<S> {
    fn default() -> Self {
        SubjectIndex {
            root: Arc::new(Node::default()),
            count: 0,
            generation: 0,
        }
    }
}

impl<S: Clone + PartialEq> SubjectIndex<S> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of entries (plain and queue members).
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Bumped by every change; readers key their match caches on it.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn insert(
        &mut self,
        subject: &[u8],
        queue: Option<&[u8]>,
        entry: S,
    ) -> Result<(), IndexError> {
        if !subject::is_valid_subject(subject) {
            return Err(IndexError::InvalidSubject);
        }
        let mut node = Arc::make_mut(&mut self.root);
        for token in subject.split(|&b| b == b'.') {
            let child = match token {
                b"*" => node.star.get_or_insert_with(Default::default),
                b">" => node.full.get_or_insert_with(Default::default),
                _ => node.literal.entry(token.into()).or_default(),
            };
            node = Arc::make_mut(child);
        }
        match queue {
            None => node.plain.push(entry),
            Some(name) => match node.queues.iter_mut().find(|g| &*g.name == name) {
                Some(group) => group.members.push(entry),
                None => node.queues.push(QueueGroup {
                    name: name.into(),
                    members: vec![entry],
                }),
            },
        }
        self.count += 1;
        self.generation += 1;
        Ok(())
    }

    pub fn remove(
        &mut self,
        subject: &[u8],
        queue: Option<&[u8]>,
        entry: &S,
    ) -> Result<(), IndexError> {
        if !subject::is_valid_subject(subject) {
            return Err(IndexError::InvalidSubject);
        }
        let tokens: Vec<&[u8]> = subject.split(|&b| b == b'.').collect();
        if !remove_at(&mut self.root, &tokens, queue, entry) {
            return Err(IndexError::NotFound);
        }
        self.count -= 1;
        self.generation += 1;
        Ok(())
    }

    /// Everything a message published on the literal `subject` reaches. A subject with
    /// an empty token reaches nothing (as in the reference).
    pub fn matches(&self, subject: &[u8]) -> MatchResult<S> {
        let mut result = MatchResult::default();
        if let Some(tokens) = smallvec_tokens::split(subject) {
            collect(&self.root, tokens.as_slice(), &mut result);
        }
        result
    }

    /// Does anything at all match `subject`? Cheaper than [`Self::matches`].
    pub fn has_interest(&self, subject: &[u8]) -> bool {
        smallvec_tokens::split(subject).is_some_and(|tokens| any(&self.root, tokens.as_slice()))
    }
}

/// Tokenizing without an allocation for the common, short subject.
mod smallvec_tokens {
    pub struct Tokens<'a> {
        inline: [&'a [u8]; 16],
        len: usize,
        spill: Vec<&'a [u8]>,
    }

    impl<'a> Tokens<'a> {
        pub fn as_slice(&self) -> &[&'a [u8]] {
            if self.spill.is_empty() {
                &self.inline[..self.len]
            } else {
                &self.spill
            }
        }
    }

    /// `None` when a token is empty.
    pub fn split(subject: &[u8]) -> Option<Tokens<'_>> {
        let mut t = Tokens {
            inline: [&[][..]; 16],
            len: 0,
            spill: Vec::new(),
        };
        for token in subject.split(|&b| b == b'.') {
            if token.is_empty() {
                return None;
            }
            if t.len < 16 {
                t.inline[t.len] = token;
                t.len += 1;
            } else {
                if t.spill.is_empty() {
                    t.spill.extend_from_slice(&t.inline);
                }
                t.spill.push(token);
            }
        }
        Some(t)
    }
}

fn collect<S: Clone>(node: &Node<S>, tokens: &[&[u8]], out: &mut MatchResult<S>) {
    let Some((first, rest)) = tokens.split_first() else {
        out.plain.extend(node.plain.iter().cloned());
        for group in &node.queues {
            match out.queues.iter_mut().find(|g| g.name == group.name) {
                Some(existing) => existing.members.extend(group.members.iter().cloned()),
                None => out.queues.push(group.clone()),
            }
        }
        return;
    };
    if let Some(full) = &node.full {
        collect(full, &[], out);
    }
    // The reference's order, which a connection with several matching subscriptions
    // sees the message in: `*` before the literal token, except at the last token.
    let star = node.star.as_deref();
    let literal = node.literal.get(*first).map(|child| &**child);
    let (one, two) = if rest.is_empty() {
        (literal, star)
    } else {
        (star, literal)
    };
    for next in [one, two].into_iter().flatten() {
        collect(next, rest, out);
    }
}

fn any<S>(node: &Node<S>, tokens: &[&[u8]]) -> bool {
    let Some((first, rest)) = tokens.split_first() else {
        return !node.plain.is_empty() || !node.queues.is_empty();
    };
    if let Some(full) = &node.full {
        if !full.plain.is_empty() || !full.queues.is_empty() {
            return true;
        }
    }
    if let Some(star) = &node.star {
        if any(star, rest) {
            return true;
        }
    }
    node.literal
        .get(*first)
        .is_some_and(|child| any(child, rest))
}

/// Removes the entry under `tokens`, pruning nodes left empty. True when found.
fn remove_at<S: Clone + PartialEq>(
    node: &mut Arc<Node<S>>,
    tokens: &[&[u8]],
    queue: Option<&[u8]>,
    entry: &S,
) -> bool {
    let Some((first, rest)) = tokens.split_first() else {
        let node = Arc::make_mut(node);
        return match queue {
            None => remove_entry(&mut node.plain, entry),
            Some(name) => {
                let Some(pos) = node.queues.iter().position(|g| &*g.name == name) else {
                    return false;
                };
                let found = remove_entry(&mut node.queues[pos].members, entry);
                if node.queues[pos].members.is_empty() {
                    node.queues.swap_remove(pos);
                }
                found
            }
        };
    };
    // Look before copying: a miss must not copy nodes that a snapshot shares.
    let present = match *first {
        b"*" => node.star.is_some(),
        b">" => node.full.is_some(),
        t => node.literal.contains_key(t),
    };
    if !present {
        return false;
    }
    let parent = Arc::make_mut(node);
    let (found, emptied) = {
        let child = match *first {
            b"*" => parent.star.as_mut(),
            b">" => parent.full.as_mut(),
            t => parent.literal.get_mut(t),
        };
        let Some(child) = child else { return false };
        let found = remove_at(child, rest, queue, entry);
        (found, child.is_empty())
    };
    if emptied {
        match *first {
            b"*" => parent.star = None,
            b">" => parent.full = None,
            t => {
                parent.literal.remove(t);
            }
        }
    }
    found
}

fn remove_entry<S: PartialEq>(list: &mut Vec<S>, entry: &S) -> bool {
    match list.iter().position(|e| e == entry) {
        Some(pos) => {
            list.swap_remove(pos);
            true
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sorted(mut v: Vec<u32>) -> Vec<u32> {
        v.sort();
        v
    }

    #[test]
    fn literal_and_wildcards() {
        let mut idx = SubjectIndex::new();
        idx.insert(b"foo.bar", None, 1).unwrap();
        idx.insert(b"foo.*", None, 2).unwrap();
        idx.insert(b"foo.>", None, 3).unwrap();
        idx.insert(b">", None, 4).unwrap();
        idx.insert(b"*.bar", None, 5).unwrap();
        idx.insert(b"foo.bar.baz", None, 6).unwrap();
        assert_eq!(sorted(idx.matches(b"foo.bar").plain), vec![1, 2, 3, 4, 5]);
        assert_eq!(sorted(idx.matches(b"foo.bar.baz").plain), vec![3, 4, 6]);
        assert_eq!(sorted(idx.matches(b"foo").plain), vec![4]);
        assert!(idx.matches(b"foo..bar").plain.is_empty());
        assert!(idx.matches(b"foo.").plain.is_empty());
        assert!(idx.has_interest(b"x"));
        idx.remove(b">", None, &4).unwrap();
        assert!(!idx.has_interest(b"x"));
        assert_eq!(idx.len(), 5);
    }

    #[test]
    fn queue_groups_merge_across_nodes() {
        let mut idx = SubjectIndex::new();
        idx.insert(b"foo", Some(b"q"), 1).unwrap();
        idx.insert(b"foo", Some(b"q"), 2).unwrap();
        idx.insert(b"*", Some(b"q"), 3).unwrap();
        idx.insert(b"foo", Some(b"r"), 4).unwrap();
        let m = idx.matches(b"foo");
        assert!(m.plain.is_empty());
        assert_eq!(m.queues.len(), 2);
        let q = m.queues.iter().find(|g| &*g.name == b"q").unwrap();
        assert_eq!(sorted(q.members.clone()), vec![1, 2, 3]);
    }

    #[test]
    fn snapshots_are_unaffected_by_later_writes() {
        let mut idx = SubjectIndex::new();
        idx.insert(b"a.b", None, 1).unwrap();
        let snapshot = idx.clone();
        idx.insert(b"a.b", None, 2).unwrap();
        idx.remove(b"a.b", None, &1).unwrap();
        assert_eq!(snapshot.matches(b"a.b").plain, vec![1]);
        assert_eq!(idx.matches(b"a.b").plain, vec![2]);
        assert!(snapshot.generation() < idx.generation());
    }

    #[test]
    fn removal_prunes_and_reports_misses() {
        let mut idx = SubjectIndex::new();
        idx.insert(b"a.b.c", None, 1).unwrap();
        assert_eq!(idx.remove(b"a.b.c", None, &2), Err(IndexError::NotFound));
        assert_eq!(idx.remove(b"a.x", None, &1), Err(IndexError::NotFound));
        idx.remove(b"a.b.c", None, &1).unwrap();
        assert!(idx.root.is_empty());
        assert_eq!(
            idx.insert(b"a..b", None, 1),
            Err(IndexError::InvalidSubject)
        );
    }

    #[test]
    fn agrees_with_naive_matcher() {
        let tokens: [&[u8]; 4] = [b"a", b"b", b"*", b">"];
        let mut rng = fastrand::Rng::with_seed(7);
        let mut idx = SubjectIndex::new();
        let mut subs: Vec<(Vec<u8>, u32)> = Vec::new();
        let random_subject = |rng: &mut fastrand::Rng, literal: bool| {
            let n = rng.usize(1..5);
            let mut parts = Vec::new();
            for i in 0..n {
                let pool = if literal { &tokens[..2] } else { &tokens[..] };
                let mut t = pool[rng.usize(..pool.len())];
                if t == b">" && i + 1 != n {
                    t = b"*";
                }
                parts.push(t);
            }
            parts.join(&b'.')
        };
        for id in 0..300u32 {
            let s = random_subject(&mut rng, false);
            idx.insert(&s, None, id).unwrap();
            subs.push((s, id));
            if rng.bool() && !subs.is_empty() {
                let (s, id) = subs.swap_remove(rng.usize(..subs.len()));
                idx.remove(&s, None, &id).unwrap();
            }
        }
        for _ in 0..500 {
            let p = random_subject(&mut rng, true);
            let expect: Vec<u32> = subs
                .iter()
                .filter(|(s, _)| subject::matches(s, &p))
                .map(|(_, id)| *id)
                .collect();
            assert_eq!(sorted(idx.matches(&p).plain), sorted(expect));
        }
    }
}
