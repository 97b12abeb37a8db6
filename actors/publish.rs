//! The publish path: how a message reaches a subscription, and the [`Publisher`] that
//! matches a subject against an account's index and delivers to every subscriber (one
//! member per queue group).
//!
//! Client actors publish what their connections send; internal actors (JetStream's API,
//! streams, consumers) publish their replies and deliveries through the same code. A
//! subscription belongs either to a client connection (frames go into its outbound
//! queue) or to an internal actor (an owned copy goes into that actor's mailbox), so
//! JetStream captures messages from the subject index like any subscriber, without a
//! second matching step.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;

use super::context::Stats;
use super::outbound::{FlushSet, PushError};
use super::router::Account;
use super::runtime;
use super::subscription::{AccountIndex, ImportKind, ImportLink};
use super::subscription::{Control, InternalMsg, Message, RouteShared, Subscription, Target};
use crate::jetstream::advisory::Advisory;
use crate::jetstream::headers;
use crate::proto::{encode, WireError};
use crate::subject;
use crate::subject_index::MatchResult;

/// Delivers `msg` to `sub` unless it is closed or past its auto-unsubscribe count.
/// Returns whether it was queued.
pub fn deliver(sub: &Arc<Subscription>, msg: &Message<'_>, flush: &mut FlushSet) -> bool {
    if sub.is_closed() {
        return false;
    }
    if !sub.deny.is_empty() && sub.deny.iter().any(|d| subject::matches(d, msg.subject)) {
        return false;
    }
    // Every delivery counts, so an UNSUB with a maximum counts earlier ones too.
    let n = sub.delivered.fetch_add(1, Ordering::AcqRel) + 1;
    let max = sub.max.load(Ordering::Acquire);
    if n > max {
        return false;
    }
    let client = match &sub.target {
        Target::Client(client) => client,
        // Routes are collected by the publisher and sent one RMSG each; imports are
        // published in their account once this account's delivery is done.
        Target::Route(_) | Target::Import(_) => return false,
        Target::Internal(sink) => {
            return sink
                .mailbox
                .try_send(InternalMsg {
                    tag: sink.tag,
                    subject: Bytes::copy_from_slice(msg.subject),
                    reply: msg.reply.map(Bytes::copy_from_slice),
                    headers: msg.headers,
                    data: Bytes::copy_from_slice(msg.data),
                    from: msg.from.cloned(),
                })
                .is_ok();
        }
    };
    if n == max {
        client.tell(Control::AutoUnsubscribed(sub.clone()));
    }
    if let (Some(log), Some(reply)) = (&sub.replies, msg.reply) {
        log.note(reply, runtime::now());
    }
    let (headers, data) = match msg.headers {
        Some(h) if !sub.headers => (None, msg.data.get(h..).unwrap_or_default()),
        other => (other, msg.data),
    };
    let len = encode::msg_len(msg.subject, &sub.sid, msg.reply, data.len());
    let pushed = client.out.push(len, data.len(), |buf| {
        encode::write_msg(buf, msg.subject, &sub.sid, msg.reply, headers, data)
    });
    match pushed {
        Ok(pushed) => {
            if pushed.wake {
                flush.add(client.clone());
            }
            if pushed.stalled {
                flush.stall(client.clone());
            }
            true
        }
        Err(PushError::SlowConsumer) => {
            client.tell(Control::Close(WireError::SlowConsumerPendingBytes));
            false
        }
        Err(PushError::Closed) => false,
    }
}

/// What a published subject reaches, shared between the cache and a publish.
pub type Matches = Arc<MatchResult<Arc<Subscription>>>;

/// A small cache of subject → matches, valid for one index generation.
pub struct MatchCache {
    /// Whose index the entries are from: the account (by address: accounts live as
    /// long as the node) and its index's generation. The generation alone is not
    /// enough: each account counts its own, so two accounts can be at the same one
    /// (a publisher that sent in one account then in another delivered to the
    /// first's subscribers: the system account's copy of an advisory reached the
    /// stream's account in its place).
    owner: usize,
    generation: u64,
    entries: HashMap<Box<[u8]>, Matches, foldhash::fast::RandomState>,
}

const MATCH_CACHE_MAX: usize = 1024;

impl Default for MatchCache {
    fn default() -> Self {
        MatchCache {
            owner: 0,
            generation: u64::MAX,
            entries: HashMap::default(),
        }
    }
}

impl MatchCache {
    pub fn get(&mut self, account: &AccountIndex, subject: &[u8]) -> Matches {
        let index = account.index();
        let owner = std::ptr::from_ref(account) as usize;
        if self.generation != index.generation() || self.owner != owner {
            self.entries.clear();
            self.generation = index.generation();
            self.owner = owner;
        }
        if let Some(found) = self.entries.get(subject) {
            return found.clone();
        }
        let result = Arc::new(index.matches(subject));
        if self.entries.len() >= MATCH_CACHE_MAX {
            self.entries.clear();
        }
        self.entries.insert(subject.into(), result.clone());
        result
    }
}

/// What a publish reached.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reach {
    /// Deliveries made.
    pub delivered: u64,
    /// No subscription matched at all (not even a closed or excluded one).
    pub no_interest: bool,
}

/// Matches and delivers messages for one publisher (a client actor, a route actor or
/// an internal actor). Touched outbound queues are woken by [`Publisher::flush`].
#[derive(Default)]
pub struct Publisher {
    pub cache: MatchCache,
    pub flush: FlushSet,
    rng: fastrand::Rng,
    /// Routes the current publish reaches (kept to reuse the allocation).
    routes: Vec<Arc<RouteShared>>,
    /// Queue groups picked on a route: (index in `routes`, index of the group).
    route_queues: Vec<(usize, usize)>,
    /// How many imports deep the current delivery is.
    import_depth: u8,
}

/// Where a message being delivered came from.
#[derive(Clone, Copy)]
pub enum Origin<'a> {
    /// A local connection or internal actor (id 0): it goes to local subscribers and to
    /// every route with interest; `echo` false skips the origin's own subscriptions.
    Local { id: u64, echo: bool },
    /// Another node, over a route: it goes to local subscribers only (never to a
    /// route again), and to one local member of each queue group the sender named.
    Route { queues: &'a [u8] },
    /// A stream import: to local subscribers only (every node imports for its own), one
    /// local member of each queue group.
    Imported,
}

/// How many imports deep a message may travel (accounts importing from each other in
/// a circle would otherwise pass it round forever).
const MAX_IMPORT_DEPTH: u8 = 4;

impl Publisher {
    /// Delivers `msg` to every matching subscription of `account` (one member per
    /// queue group). With `echo` false, subscriptions of connection `origin` are
    /// skipped.
    pub fn publish(
        &mut self,
        account: &Account,
        msg: &Message<'_>,
        origin: u64,
        echo: bool,
    ) -> Reach {
        self.publish_via(account, msg.subject, msg, origin, echo)
    }

    /// Delivers `msg` to the subscriptions matching `to` (JetStream delivers a stored
    /// message, under its own subject, to a consumer's deliver subject or inbox).
    pub fn publish_via(
        &mut self,
        account: &Account,
        to: &[u8],
        msg: &Message<'_>,
        origin: u64,
        echo: bool,
    ) -> Reach {
        self.deliver_all(account, to, msg, Origin::Local { id: origin, echo })
    }

    /// Delivers a message that arrived over a route; `queues` is the RMSG's queue list
    /// (space-separated group names).
    pub fn publish_routed(&mut self, account: &Account, msg: &Message<'_>, queues: &[u8]) -> Reach {
        self.deliver_all(account, msg.subject, msg, Origin::Route { queues })
    }

    /// Delivers to `to`'s local subscribers, under `msg.subject`, a message a route
    /// brought as another node's delivery.
    pub fn publish_routed_via(&mut self, account: &Account, to: &[u8], msg: &Message<'_>) -> Reach {
        self.deliver_all(account, to, msg, Origin::Route { queues: b"" })
    }

    fn deliver_all(
        &mut self,
        account: &AccountIndex,
        to: &[u8],
        msg: &Message<'_>,
        origin: Origin<'_>,
    ) -> Reach {
        // An import's account has its own index: the cache holds one account's
        // (the publisher's own, not the accounts its imports lead to in turn).
        let result = if self.import_depth == 0 {
            self.cache.get(account, to)
        } else {
            Arc::new(account.index().matches(to))
        };
        let (skip, from_route) = match origin {
            Origin::Local { id, echo } => ((!echo).then_some(id), false),
            Origin::Route { .. } | Origin::Imported => (None, true),
        };
        let mut delivered = 0u64;
        // Whether the publisher's own subscriptions (skipped with `echo: false`) are
        // all that matched: then nobody is interested, and a request gets the 503, as
        // at the reference.
        let mut only_own = skip.is_some();
        let mut imports: Vec<Arc<ImportLink>> = Vec::new();
        for sub in &result.plain {
            if let Target::Route(route) = &sub.target {
                only_own = false;
                if !from_route && !sub.is_closed() {
                    self.route_index(route);
                }
                continue;
            }
            if let Target::Import(link) = &sub.target {
                if !sub.is_closed() {
                    imports.push(link.clone());
                }
                continue;
            }
            if skip.is_some_and(|id| sub.client_id() == id) {
                continue;
            }
            only_own = false;
            if deliver(sub, msg, &mut self.flush) {
                delivered += 1;
            }
        }
        for (g, group) in result.queues.iter().enumerate() {
            if let Origin::Route { queues } = origin {
                let named = crate::proto::route::queue_names(queues).any(|q| q == &*group.name);
                if !named {
                    continue;
                }
            }
            let members = &group.members;
            only_own &= skip.is_some_and(|id| members.iter().all(|m| m.client_id() == id));
            let start = self.rng.usize(..members.len());
            for i in 0..members.len() {
                let sub = &members[(start + i) % members.len()];
                if skip.is_some_and(|id| sub.client_id() == id) {
                    continue;
                }
                if let Target::Route(route) = &sub.target {
                    // A message from a route goes to local members only.
                    if from_route || sub.is_closed() {
                        continue;
                    }
                    let r = self.route_index(route);
                    self.route_queues.push((r, g));
                    break;
                }
                if deliver(sub, msg, &mut self.flush) {
                    delivered += 1;
                    break;
                }
            }
        }
        if !self.routes.is_empty() {
            if to == msg.subject {
                delivered += self.send_to_routes(account, msg, &result);
            } else {
                // A delivery under another subject (a JetStream consumer's): routed by
                // `to`, its own subject in a header line the other node takes out.
                let (data, headers) =
                    crate::proto::route::wrap_delivery(msg.subject, msg.headers, msg.data);
                let routed = Message {
                    subject: to,
                    reply: msg.reply,
                    headers: Some(headers),
                    data: &data,
                    from: msg.from,
                };
                delivered += self.send_to_routes(account, &routed, &result);
            }
        }
        let mut no_interest = result.is_empty() || (only_own && imports.is_empty());
        if !imports.is_empty() && self.import_depth < MAX_IMPORT_DEPTH {
            let only_imports = result.queues.is_empty()
                && result
                    .plain
                    .iter()
                    .all(|s| matches!(s.target, Target::Import(_)));
            let mut reached = false;
            self.import_depth += 1;
            for link in imports {
                if let Some(r) = self.import(&link, to, msg) {
                    delivered += r.delivered;
                    reached |= !r.no_interest;
                }
            }
            self.import_depth -= 1;
            no_interest |= only_imports && !reached;
        }
        Reach {
            delivered,
            no_interest,
        }
    }

    /// Carries a message matched on `to` through an import into its other account.
    fn import(&mut self, link: &ImportLink, to: &[u8], msg: &Message<'_>) -> Option<Reach> {
        let mapped = |t: &Option<crate::subject_transform::SubjectTransform>| -> Option<Vec<u8>> {
            match t {
                None => Some(to.to_vec()),
                Some(t) => t
                    .apply(std::str::from_utf8(to).ok()?)
                    .map(String::into_bytes),
            }
        };
        match &link.kind {
            ImportKind::Stream { to: transform } => {
                let subject = mapped(transform)?;
                let m = Message {
                    subject: &subject,
                    ..*msg
                };
                Some(self.deliver_all(&link.into, &subject, &m, Origin::Imported))
            }
            ImportKind::Service {
                transform,
                replies,
                importer,
            } => {
                let subject = mapped(transform)?;
                let reply = msg.reply.map(|r| replies.map(r));
                // The exporter learns which account asked, as from the reference.
                let info = format!(
                    "{{\"acc\":{},\"rtt\":0}}",
                    serde_json::Value::from(importer.as_str())
                );
                let block = msg
                    .headers
                    .and_then(|h| msg.data.get(..h))
                    .unwrap_or_default();
                let payload = msg.data.get(msg.headers.unwrap_or(0)..).unwrap_or_default();
                let mut data = headers::HeaderBuilder::extend(block)
                    .add("Nats-Request-Info", &info)
                    .finish();
                let headers = data.len();
                data.extend_from_slice(payload);
                let m = Message {
                    subject: &subject,
                    reply: reply.as_deref(),
                    headers: Some(headers),
                    data: &data,
                    from: msg.from,
                };
                Some(self.deliver_all(
                    &link.into,
                    &subject,
                    &m,
                    Origin::Local { id: 0, echo: true },
                ))
            }
            ImportKind::Response { replies } => {
                let reply = replies.accept(to)?;
                let m = Message {
                    subject: reply,
                    ..*msg
                };
                Some(self.deliver_all(&link.into, reply, &m, Origin::Local { id: 0, echo: true }))
            }
        }
    }

    /// The position of `route` among the routes this publish reaches.
    fn route_index(&mut self, route: &Arc<RouteShared>) -> usize {
        match self.routes.iter().position(|r| Arc::ptr_eq(r, route)) {
            Some(i) => i,
            None => {
                self.routes.push(route.clone());
                self.routes.len() - 1
            }
        }
    }

    /// One RMSG per route reached, naming the queue groups picked there.
    fn send_to_routes(
        &mut self,
        account: &AccountIndex,
        msg: &Message<'_>,
        result: &MatchResult<Arc<Subscription>>,
    ) -> u64 {
        let mut sent = 0;
        for (r, route) in self.routes.drain(..).enumerate() {
            let queues = self
                .route_queues
                .iter()
                .filter(|(at, _)| *at == r)
                .filter_map(|&(_, g)| result.queues.get(g).map(|q| &*q.name));
            if route.send_msg(account.name.as_bytes(), msg, queues, &mut self.flush) {
                sent += 1;
            }
        }
        self.route_queues.clear();
        sent
    }

    /// Sends a message of an internal actor (a reply, a status, a delivery) to whoever
    /// listens on `to`; `headers` is the length of the header block leading `data`.
    pub fn send(
        &mut self,
        account: &Account,
        to: &[u8],
        reply: Option<&[u8]>,
        headers: Option<usize>,
        data: &[u8],
    ) {
        let msg = Message {
            subject: to,
            reply,
            headers,
            data,
            from: None,
        };
        self.publish(account, &msg, 0, true);
    }

    /// Sends a status-only message (a header block such as `NATS/1.0 404 ...`).
    pub fn send_status(
        &mut self,
        account: &Account,
        to: &[u8],
        reply: Option<&[u8]>,
        block: &[u8],
    ) {
        self.send(account, to, reply, Some(block.len()), block);
    }

    /// Waits at the queues this publisher found stalled (at most
    /// [`super::outbound::STALL_TOTAL`] per read batch), counting the waits in
    /// `stats`, and warns as the reference does ("Producer was stalled"), when the
    /// wait was long enough and no warning went out in the last second, node-wide.
    /// Returns whether a subscriber's queue was still over its mark after the wait:
    /// the publisher should then read little until it is relieved.
    pub async fn wait_stalled(&mut self, stats: &Stats, who: &impl std::fmt::Display) -> bool {
        use super::outbound::{STALL_MAX, STALL_TOTAL};
        let stalled = self.flush.wait_stalled(STALL_TOTAL).await;
        stats.stalls.fetch_add(stalled.waits, Ordering::Relaxed);
        if stalled.spent < STALL_MAX {
            return stalled.unrelieved;
        }
        let now_ms = (runtime::now_unix_ns() / 1_000_000).max(0) as u64;
        let last = stats.stall_logged_ms.load(Ordering::Relaxed);
        let due = last == 0 || now_ms.saturating_sub(last) >= 1000;
        let claimed = due
            && stats
                .stall_logged_ms
                .compare_exchange(last, now_ms.max(1), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok();
        if claimed {
            let ms = stalled.spent.as_millis();
            log::warn!("{who} - Producer was stalled for a total of {ms}ms");
        }
        stalled.unrelieved
    }

    /// The sid of one of connection `me`'s own subscriptions matching `reply`, where
    /// a no-responders status goes.
    pub fn own_subscription(
        &mut self,
        account: &Account,
        me: u64,
        reply: &[u8],
    ) -> Option<Box<[u8]>> {
        let found = self.cache.get(account, reply);
        found
            .plain
            .iter()
            .chain(found.queues.iter().flat_map(|g| g.members.iter()))
            .find(|s| s.client_id() == me && !s.is_closed())
            .map(|s| s.sid.clone())
    }

    /// Whether anyone listens on `subject` (events nobody reads are never built).
    pub fn has_interest(&mut self, account: &Account, subject: &[u8]) -> bool {
        !self.cache.get(account, subject).is_empty()
    }

    /// Publishes a JetStream advisory, if anyone listens for it, with a fresh id and
    /// the time `now`.
    pub fn advise(&mut self, account: &Account, advisory: &Advisory, now: i64) {
        self.advise_with_system(account, None, advisory, now);
    }

    /// Publishes an advisory about a replicated asset as the reference does: in its
    /// account, and (naming the account, with the same id) in the system account.
    pub fn advise_with_system(
        &mut self,
        account: &Account,
        system: Option<&Account>,
        advisory: &Advisory,
        now: i64,
    ) {
        let id = crate::events::event_id(&mut self.rng);
        let subject = advisory.subject();
        if self.has_interest(account, subject.as_bytes()) {
            let body = advisory.encode(&id, now);
            self.send(account, subject.as_bytes(), None, None, &body);
        }
        let copy = advisory.for_system(&account.name);
        if let (Some(system), Some(copy)) = (system.filter(|s| s.name != account.name), copy) {
            if self.has_interest(system, subject.as_bytes()) {
                let body = copy.encode(&id, now);
                self.send(system, subject.as_bytes(), None, None, &body);
            }
        }
    }

    /// Wakes every outbound queue touched since the last flush. For publishers that
    /// never wait at a stalled queue (routes, internal actors): the stalls are dropped.
    pub fn flush(&mut self) {
        self.flush.flush();
        self.flush.forget_stalled();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actors::subscription::{Index, InternalSink};

    /// Two accounts whose indexes are at the same generation: one cache, used for
    /// both, answers each with its own subscribers.
    #[test]
    fn a_match_cache_keeps_accounts_apart() {
        let (tx, _rx) = async_channel::unbounded();
        let with_sub = |name: &str| {
            let account = AccountIndex::new(name);
            let mut index = Index::new();
            let sink = InternalSink {
                tag: 0,
                mailbox: tx.clone(),
            };
            let sub = Arc::new(Subscription::internal("adv.>", None, sink));
            index
                .insert(b"adv.>", None, sub)
                .unwrap_or_else(|e| panic!("{e:?}"));
            account.store(index);
            account
        };
        let app = with_sub("APP");
        let empty = AccountIndex::new("SYS");
        let mut other = Index::new();
        let sink = InternalSink {
            tag: 0,
            mailbox: tx.clone(),
        };
        // The same number of changes, so the same generation, and no match.
        other
            .insert(
                b"other",
                None,
                Arc::new(Subscription::internal("other", None, sink)),
            )
            .unwrap_or_else(|e| panic!("{e:?}"));
        empty.store(other);
        assert_eq!(app.index().generation(), empty.index().generation());
        let mut cache = MatchCache::default();
        assert_eq!(cache.get(&app, b"adv.x").plain.len(), 1);
        assert!(cache.get(&empty, b"adv.x").plain.is_empty());
        assert_eq!(cache.get(&app, b"adv.x").plain.len(), 1);
    }
}
