//! The account router: the single writer of an account's subject index.
//!
//! Client actors send it subscription changes in batches; it applies every batch waiting
//! in its mailbox to its own copy of the index, publishes one read-only snapshot
//! (`arc-swap`), and only then acknowledges the batches that asked. Publishers match
//! against the snapshot without a hop or a lock, so a client that needs its own changes
//! to be visible (before a PUB of its own, or before answering PING) waits for the ack.
//!
//! It also tells the cluster what this node wants: it counts the account's local
//! client interest per subject and queue group, and writes `RS+`/`RS-` into every
//! attached route's outbound queue when a count starts, changes (a queue group's
//! weight) or ends, before acknowledging the batch that caused it. So a client whose
//! SUB was acknowledged (PING answered) has its interest queued on every route ahead
//! of anything it publishes next. A route attaching gets the whole interest at once.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use std::collections::HashMap;

use super::outbound::Wake;
use super::runtime::Spawner;
pub use super::subscription::Index;
use super::subscription::{AccountIndex, InterestKey, RouteShared, Subscription, Target};
use crate::auth::permissions::ReplyLog;
use crate::proto::route::{write_sub, write_unsub};

pub enum SubChange {
    Add(Arc<Subscription>),
    Remove(Arc<Subscription>),
    /// A route is up: send it this account's interest, and every change from now on.
    AttachRoute(Arc<RouteShared>),
    /// A route is gone (its own subscriptions are removed with `Remove`).
    DetachRoute(u64),
}

/// A client connection's subscriptions by sid, and the changes the router has not
/// been sent yet.
#[derive(Default)]
pub struct SubscriptionTable {
    by_sid: HashMap<Box<[u8]>, Arc<Subscription>>,
    changes: Vec<SubChange>,
}

impl SubscriptionTable {
    pub fn add(&mut self, sub: Subscription) {
        let sub = Arc::new(sub);
        self.by_sid.insert(sub.sid.clone(), sub.clone());
        self.changes.push(SubChange::Add(sub));
    }

    pub fn get(&self, sid: &[u8]) -> Option<&Arc<Subscription>> {
        self.by_sid.get(sid)
    }

    /// `sub` is the one this table holds under its sid (not one it replaced).
    pub fn holds(&self, sub: &Arc<Subscription>) -> bool {
        self.get(&sub.sid).is_some_and(|s| Arc::ptr_eq(s, sub))
    }

    /// Ends the subscription `sid`, if there is one.
    pub fn remove(&mut self, sid: &[u8]) -> bool {
        let Some(sub) = self.by_sid.remove(sid) else {
            return false;
        };
        sub.close();
        self.changes.push(SubChange::Remove(sub));
        true
    }

    pub fn sids(&self) -> Vec<Box<[u8]>> {
        self.by_sid.keys().cloned().collect()
    }

    /// Gives every subscription the delivery filter `filter` says for its subject:
    /// each whose filter changed is replaced, the new one added with the old one's
    /// counts and the old one removed in the same batch, so no message falls between
    /// them. Returns the old ones, to close once the batch is visible.
    pub fn refilter(
        &mut self,
        filter: impl Fn(&[u8]) -> (Vec<Box<[u8]>>, Option<Arc<ReplyLog>>),
    ) -> Vec<Arc<Subscription>> {
        let mut replaced = Vec::new();
        for slot in self.by_sid.values_mut() {
            let (deny, replies) = filter(&slot.subject);
            let Some(new) = slot.refiltered(deny, replies) else {
                continue;
            };
            let old = std::mem::replace(slot, Arc::new(new));
            self.changes.push(SubChange::Add(slot.clone()));
            self.changes.push(SubChange::Remove(old.clone()));
            replaced.push(old);
        }
        replaced
    }

    /// The changes not yet sent to the router.
    pub fn take_changes(&mut self) -> Option<Vec<SubChange>> {
        (!self.changes.is_empty()).then(|| std::mem::take(&mut self.changes))
    }

    /// What `/connz` shows of them.
    pub fn snapshot(&self, cid: u64) -> Vec<crate::monitor::SubSnapshot> {
        self.by_sid.values().map(|s| s.snapshot(cid)).collect()
    }
}

pub struct Batch {
    pub changes: Vec<SubChange>,
    /// Signalled once the changes are visible in the published snapshot.
    pub applied: Option<async_channel::Sender<()>>,
}

/// An account: its name, its published index and its router's mailbox.
pub struct Account {
    view: Arc<AccountIndex>,
    router: async_channel::Sender<Batch>,
    /// Client connections of the account open on this node (see [`AccountSeat`]).
    clients: AtomicUsize,
}

/// A client's place among its account's connections on this node, given back when
/// the client ends (the count a JWT's `conn` limit is checked against).
pub struct AccountSeat(Arc<Account>);

impl Drop for AccountSeat {
    fn drop(&mut self) {
        self.0.clients.fetch_sub(1, Ordering::AcqRel);
    }
}

impl std::ops::Deref for Account {
    type Target = AccountIndex;
    fn deref(&self) -> &AccountIndex {
        &self.view
    }
}

impl Account {
    /// Creates the account and spawns its router on `spawner`.
    pub fn start(name: &str, spawner: &Spawner) -> Arc<Account> {
        let (tx, rx) = async_channel::unbounded();
        let account = Arc::new(Account {
            view: Arc::new(AccountIndex::new(name)),
            router: tx,
            clients: AtomicUsize::new(0),
        });
        spawner.spawn_detached(run_router(Arc::downgrade(&account), rx));
        account
    }

    /// A seat for one more client, unless `limit` clients of the account are
    /// connected to this node already.
    pub fn take_seat(self: &Arc<Self>, limit: Option<usize>) -> Option<AccountSeat> {
        let limit = limit.unwrap_or(usize::MAX);
        self.clients
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()
            .map(|_| AccountSeat(self.clone()))
    }

    /// Client connections of the account open on this node.
    pub fn clients(&self) -> usize {
        self.clients.load(Ordering::Acquire)
    }

    /// What publishers (and imports from other accounts) read.
    pub fn view(&self) -> &Arc<AccountIndex> {
        &self.view
    }

    /// Sends changes without waiting for them to be applied.
    pub fn send(&self, changes: Vec<SubChange>) {
        let _ = self.router.try_send(Batch {
            changes,
            applied: None,
        });
    }

    /// Sends changes (possibly none) and waits until they, and everything sent before
    /// them, are visible to publishers.
    pub async fn apply(&self, changes: Vec<SubChange>) {
        let (tx, rx) = async_channel::bounded(1);
        if self
            .router
            .send(Batch {
                changes,
                applied: Some(tx),
            })
            .await
            .is_ok()
        {
            let _ = rx.recv().await;
        }
    }
}

/// (subject, queue group) → how many local subscriptions share it.
type InterestCounts = HashMap<InterestKey, u32>;

/// What the router knows besides the index: local interest, for the routes.
struct Interest {
    account: Box<[u8]>,
    counts: InterestCounts,
    routes: Vec<Arc<RouteShared>>,
    /// Routes written to during this batch, woken once at its end.
    touched: Vec<Arc<RouteShared>>,
}

impl Interest {
    /// Is this subscription interest the cluster should hear about? Client
    /// subscriptions, and the internal ones marked cluster-wide (a clustered
    /// JetStream's); not what other nodes told us (theirs to announce), nor a node's
    /// own JetStream (it serves this node's clients only).
    fn announced(sub: &Subscription) -> bool {
        matches!(sub.target, Target::Client(_)) || sub.cluster_wide
    }

    fn changed(&mut self, sub: &Subscription, added: bool) {
        use std::collections::hash_map::Entry;
        let (before, after) = match self.counts.entry((sub.subject.clone(), sub.queue.clone())) {
            Entry::Occupied(mut e) => {
                let before = *e.get();
                let after = if added { before + 1 } else { before - 1 };
                if after == 0 {
                    e.remove();
                } else {
                    *e.get_mut() = after;
                }
                (before, after)
            }
            Entry::Vacant(e) if added => {
                e.insert(1);
                (0, 1)
            }
            Entry::Vacant(_) => return,
        };
        if self.routes.is_empty() {
            return;
        }
        let queue = sub.queue.as_deref();
        let account = &self.account;
        // Plain interest is announced when it starts and withdrawn when it ends; a
        // queue group's weight is announced on every change.
        let line = match (queue, before, after) {
            (None, 0, _) | (Some(_), _, 1..) => Some(true),
            (_, _, 0) => Some(false),
            _ => None,
        };
        let Some(add) = line else {
            return;
        };
        for route in &self.routes {
            let written = route.out.push_control(|buf| {
                if add {
                    write_sub(buf, account, &sub.subject, queue.map(|q| (q, after)));
                } else {
                    write_unsub(buf, account, &sub.subject, queue);
                }
            });
            if written.is_ok() && !self.touched.iter().any(|r| Arc::ptr_eq(r, route)) {
                self.touched.push(route.clone());
            }
        }
    }

    fn attach(&mut self, route: Arc<RouteShared>) {
        if self.routes.iter().any(|r| r.id == route.id) {
            return;
        }
        let account = &self.account;
        let _ = route.out.push_control(|buf| {
            for ((subject, queue), count) in &self.counts {
                write_sub(buf, account, subject, queue.as_deref().map(|q| (q, *count)));
            }
        });
        self.touched.push(route.clone());
        self.routes.push(route);
    }

    fn wake_routes(&mut self) {
        for route in self.touched.drain(..) {
            route.wake_writer();
        }
    }
}

async fn run_router(account: std::sync::Weak<Account>, mailbox: async_channel::Receiver<Batch>) {
    let (mut index, name): (Index, Box<[u8]>) = match account.upgrade() {
        Some(a) => (Index::clone(&a.index()), a.name.as_bytes().into()),
        None => return,
    };
    let mut interest = Interest {
        account: name,
        counts: HashMap::new(),
        routes: Vec::new(),
        touched: Vec::new(),
    };
    let mut acks = Vec::new();
    while let Ok(first) = mailbox.recv().await {
        let mut next = Some(first);
        // Take everything already waiting: one snapshot for the lot.
        while let Some(batch) = next.take().or_else(|| mailbox.try_recv().ok()) {
            for change in batch.changes {
                match change {
                    SubChange::Add(sub) => {
                        let queue = sub.queue.clone();
                        let mut added = true;
                        for _ in 0..sub.weight {
                            if let Err(e) =
                                index.insert(&sub.subject, queue.as_deref(), sub.clone())
                            {
                                log::debug!("subscription not indexed: {e}");
                                added = false;
                                break;
                            }
                        }
                        if added && Interest::announced(&sub) {
                            interest.changed(&sub, true);
                        }
                    }
                    SubChange::Remove(sub) => {
                        // A subscription removed twice (auto-unsubscribe racing an
                        // UNSUB) is not an error, and is counted once.
                        let mut removed = false;
                        for _ in 0..sub.weight {
                            removed |= index
                                .remove(&sub.subject, sub.queue.as_deref(), &sub)
                                .is_ok();
                        }
                        if removed && Interest::announced(&sub) {
                            interest.changed(&sub, false);
                        }
                    }
                    SubChange::AttachRoute(route) => interest.attach(route),
                    SubChange::DetachRoute(id) => interest.routes.retain(|r| r.id != id),
                }
            }
            if let Some(ack) = batch.applied {
                acks.push(ack);
            }
        }
        let Some(account) = account.upgrade() else {
            return;
        };
        account.store(index.clone());
        drop(account);
        interest.wake_routes();
        for ack in acks.drain(..) {
            let _ = ack.try_send(());
        }
    }
}

/// Subscribes every import of `plan` in `accounts`: a stream import in its exporter
/// (heard by the cluster, so the exporter's messages reach every node that imports
/// them), a service import in its importer (this node's clients only), and the
/// service's way back in its exporter on `_R_.<tag>.>` (heard by the cluster: a
/// responder on another node answers there). `node_tag` is unique to this node's run
/// and `secret` its key for mapped replies.
pub fn install_imports(
    plan: &crate::auth::accounts::AccountPlan,
    accounts: &HashMap<String, Arc<Account>>,
    node_tag: &str,
    secret: &[u8],
) {
    use super::subscription::{ImportKind, ImportLink};
    use crate::auth::accounts::ResponseRoute;
    let mut n = 0;
    for spec in &plan.accounts {
        let Some(importer) = accounts.get(&spec.name) else {
            continue;
        };
        for import in &spec.streams {
            let Some(exporter) = accounts.get(&import.exporter) else {
                continue;
            };
            let link = ImportLink {
                into: importer.view().clone(),
                kind: ImportKind::Stream {
                    to: import.to.clone(),
                },
            };
            let sub = Subscription::import(&import.subject, link).cluster_wide(true);
            exporter.send(vec![SubChange::Add(Arc::new(sub))]);
        }
        for import in &spec.services {
            let Some(exporter) = accounts.get(&import.exporter) else {
                continue;
            };
            n += 1;
            let replies = Arc::new(ResponseRoute::new(
                &format!("{node_tag}{n}"),
                secret,
                import.response,
            ));
            let back = ImportLink {
                into: importer.view().clone(),
                kind: ImportKind::Response {
                    replies: replies.clone(),
                },
            };
            let back = Subscription::import(&replies.subject(), back).cluster_wide(true);
            exporter.send(vec![SubChange::Add(Arc::new(back))]);
            let link = ImportLink {
                into: exporter.view().clone(),
                kind: ImportKind::Service {
                    transform: import.transform.clone(),
                    replies,
                    importer: spec.name.clone(),
                },
            };
            importer.send(vec![SubChange::Add(Arc::new(Subscription::import(
                &import.local,
                link,
            )))]);
        }
    }
}
