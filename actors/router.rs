//! The account router: the single writer of an account's subject index.
//!
//! Client actors send it subscription changes in batches; it applies every batch waiting
//! in its mailbox to its own copy of the index, publishes one read-only snapshot
//! (`arc-swap`), and only then acknowledges the batches that asked. Publishers match
//! against the snapshot without a hop or a lock, so a client that needs its own changes
//! to be visible (before a PUB of its own, or before answering PING) waits for the ack.

use std::sync::Arc;

use arc_swap::ArcSwap;

use super::publish::Subscription;
use super::runtime::Spawner;
use crate::subject_index::SubjectIndex;

/// The index type every account publishes.
pub type Index = SubjectIndex<Arc<Subscription>>;

pub enum SubChange {
    Add(Arc<Subscription>),
    Remove(Arc<Subscription>),
}

pub struct Batch {
    pub changes: Vec<SubChange>,
    /// Signalled once the changes are visible in the published snapshot.
    pub applied: Option<async_channel::Sender<()>>,
}

/// An account: its name, its published index and its router's mailbox.
pub struct Account {
    pub name: String,
    snapshot: ArcSwap<Index>,
    router: async_channel::Sender<Batch>,
}

impl Account {
    /// Creates the account and spawns its router on `spawner`.
    pub fn start(name: &str, spawner: &Spawner) -> Arc<Account> {
        let (tx, rx) = async_channel::unbounded();
        let account = Arc::new(Account {
            name: name.to_string(),
            snapshot: ArcSwap::from_pointee(Index::new()),
            router: tx,
        });
        spawner.spawn_detached(run_router(Arc::downgrade(&account), rx));
        account
    }

    /// The current read-only index.
    #[inline]
    pub fn index(&self) -> arc_swap::Guard<Arc<Index>> {
        self.snapshot.load()
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

async fn run_router(account: std::sync::Weak<Account>, mailbox: async_channel::Receiver<Batch>) {
    let mut index: Index = match account.upgrade() {
        Some(a) => Index::clone(&a.index()),
        None => return,
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
                        if let Err(e) = index.insert(&sub.subject, queue.as_deref(), sub.clone()) {
                            log::debug!("subscription not indexed: {e}");
                        }
                    }
                    SubChange::Remove(sub) => {
                        // A subscription removed twice (auto-unsubscribe racing an
                        // UNSUB) is not an error.
                        let _ = index.remove(&sub.subject, sub.queue.as_deref(), &sub);
                    }
                }
            }
            if let Some(ack) = batch.applied {
                acks.push(ack);
            }
        }
        let Some(account) = account.upgrade() else {
            return;
        };
        account.snapshot.store(Arc::new(index.clone()));
        drop(account);
        for ack in acks.drain(..) {
            let _ = ack.try_send(());
        }
    }
}
