//! The system account's services. So far the account resolver of operator mode: the
//! claims requests (`$SYS.REQ.CLAIMS.UPDATE`, `$SYS.REQ.ACCOUNT.<key>.CLAIMS.UPDATE`,
//! `…LOOKUP`, `$SYS.REQ.CLAIMS.LIST`) answered as the reference's resolvers answer
//! them (the subjects and replies: `src/auth/claims.rs`; the decision:
//! `Trust::update`).
//!
//! One actor takes the requests in order. An update that passes is stored first (the
//! full resolver's directory, fsynced), then the node's authenticator is swapped for
//! one trusting it, the account is started if it is new, and every connection checks
//! its credentials again (a revoked user is closed with `User Authentication
//! Revoked`); only then is "jwt updated" sent. The subscriptions are cluster-wide:
//! a push through any node reaches every node, and each answers for itself, as
//! `nsc push` expects.

use std::sync::Arc;

use super::context::ServerContext;
use super::publish::Publisher;
use super::router::{Account, SubChange};
use super::runtime;
use super::subscription::{InternalMsg, InternalSink, Subscription};
use crate::auth::claims::{self, ClaimsRequest};
use crate::auth::operator::{ClaimsError, ResolverKind};

/// The account `name`, started now if this node did not have it (a pushed account,
/// or one a route names): with JetStream on, its `$JS.API` requests are answered as
/// not enabled (JetStream serves the one account it started with).
pub fn activate_account(ctx: &ServerContext, name: &str) -> Arc<Account> {
    let (account, added) = ctx.add_account(name);
    if added && ctx.config().jetstream.enabled && name != ctx.system_account {
        super::jetstream::serve_disabled(account.clone(), &ctx.spawner);
    }
    account
}

/// Starts the resolver's service in the system account, in operator mode;
/// `reauthorize` makes every connection check its credentials again.
pub fn start_resolver(ctx: &Arc<ServerContext>, reauthorize: impl Fn() + Send + Sync + 'static) {
    let Some(trust) = ctx.auth().trust().cloned() else {
        return;
    };
    let Some(system) = ctx.account(&ctx.system_account) else {
        log::warn!(
            "the system account {} is not started: account JWTs cannot be pushed",
            ctx.system_account
        );
        return;
    };
    let (tx, rx) = async_channel::unbounded::<InternalMsg>();
    let full = matches!(trust.resolver(), ResolverKind::Full { .. });
    // A full resolver also asks its peers for what it lacks, and answers their asks.
    let pack_inbox = format!("$SYS._MB.PACK.{}", ctx.server_id);
    let mut subjects: Vec<(&str, u64)> = claims::subjects(trust.resolver())
        .iter()
        .map(|s| (*s, TAG_REQUEST))
        .collect();
    if full {
        subjects.push((claims::PACK, TAG_REQUEST));
        subjects.push((&pack_inbox, TAG_PACK_ANSWER));
    }
    let subs: Vec<SubChange> = subjects
        .into_iter()
        .map(|(subject, tag)| {
            let sink = InternalSink {
                tag,
                mailbox: tx.clone(),
            };
            SubChange::Add(Arc::new(
                Subscription::internal(subject, None, sink).cluster_wide(true),
            ))
        })
        .collect();
    system.send(subs);
    let interval = ctx
        .config()
        .resolver
        .as_ref()
        .map_or(crate::auth::operator::PACK_INTERVAL, |r| r.pack_interval());
    let mut resolver = Resolver {
        ctx: ctx.clone(),
        system,
        publisher: Publisher::default(),
        reauthorize: Box::new(reauthorize),
        pack_inbox,
    };
    ctx.spawner.spawn_detached(async move {
        enum Event {
            Msg(Option<InternalMsg>),
            Ask,
        }
        // The first ask soon after the start (a node that was down during a push
        // catches up once its routes are up), then every `interval`.
        let mut next = runtime::now() + interval.min(std::time::Duration::from_secs(2));
        loop {
            let event = if full {
                futures_lite::future::or(async { Event::Msg(rx.recv().await.ok()) }, async {
                    runtime::sleep_until(next).await;
                    Event::Ask
                })
                .await
            } else {
                Event::Msg(rx.recv().await.ok())
            };
            match event {
                Event::Msg(Some(msg)) if msg.tag == TAG_PACK_ANSWER => {
                    resolver.pack_answer(&msg).await
                }
                Event::Msg(Some(msg)) => resolver.handle(msg).await,
                Event::Msg(None) => break,
                Event::Ask => {
                    resolver.ask_peers();
                    next = runtime::now() + interval;
                }
            }
        }
    });
}

/// The resolver's subscriptions: the claims requests, and the answers to its asks.
const TAG_REQUEST: u64 = 0;
const TAG_PACK_ANSWER: u64 = 1;

struct Resolver {
    ctx: Arc<ServerContext>,
    system: Arc<Account>,
    publisher: Publisher,
    reauthorize: Box<dyn Fn() + Send + Sync>,
    /// Where the answers to this node's PACK asks come.
    pack_inbox: String,
}

impl Resolver {
    async fn handle(&mut self, msg: InternalMsg) {
        let Ok(subject) = std::str::from_utf8(&msg.subject) else {
            return;
        };
        let Some(request) = ClaimsRequest::parse(subject) else {
            return;
        };
        let body = match request {
            ClaimsRequest::Update { account } => {
                let token = String::from_utf8_lossy(msg.payload()).into_owned();
                let result = self.update(&token, account).await;
                if let Err(e) = &result {
                    log::error!(
                        "jwt update resulted in error - {} - {}",
                        e.account,
                        e.description
                    );
                }
                claims::update_reply(&self.ctx.server_block(), result.as_deref())
            }
            ClaimsRequest::Lookup { account } => self
                .ctx
                .auth()
                .trust()
                .and_then(|t| t.lookup(account).map(|jwt| jwt.as_bytes().to_vec()))
                // An empty reply: no such account, as the reference.
                .unwrap_or_default(),
            ClaimsRequest::List => {
                let auth = self.ctx.auth();
                let keys = auth.trust().map(|t| t.account_keys()).unwrap_or_default();
                claims::list_reply(&self.ctx.server_block(), &keys)
            }
            ClaimsRequest::Pack => return self.answer_pack(&msg),
        };
        if let Some(reply) = &msg.reply {
            self.publisher.send(&self.system, reply, None, None, &body);
            self.publisher.flush();
        }
    }

    /// Every JWT this node holds, by account key.
    fn held(&self) -> Vec<(String, String)> {
        let auth = self.ctx.auth();
        let Some(trust) = auth.trust() else {
            return Vec::new();
        };
        trust
            .account_keys()
            .into_iter()
            .filter_map(|k| Some((k.to_string(), trust.lookup(k)?.to_string())))
            .collect()
    }

    fn hash(held: &[(String, String)]) -> String {
        let pairs: Vec<(&str, &str)> = held.iter().map(|(k, j)| (k.as_str(), j.as_str())).collect();
        claims::pack_hash(&pairs)
    }

    /// Asks every peer for the JWTs this node lacks, with its store's hash.
    fn ask_peers(&mut self) {
        let hash = Self::hash(&self.held());
        let inbox = self.pack_inbox.clone();
        self.publisher.send(
            &self.system,
            claims::PACK.as_bytes(),
            Some(inbox.as_bytes()),
            None,
            hash.as_bytes(),
        );
        self.publisher.flush();
    }

    /// A peer's ask: what this node holds, unless the hashes agree, then an empty
    /// message (the end). Its own asks are not answered.
    fn answer_pack(&mut self, msg: &InternalMsg) {
        let Some(reply) = msg
            .reply
            .clone()
            .filter(|r| **r != *self.pack_inbox.as_bytes())
        else {
            return;
        };
        let held = self.held();
        if msg.payload() != Self::hash(&held).as_bytes() {
            for (key, jwt) in &held {
                let body = claims::pack_reply(key, jwt);
                self.publisher.send(&self.system, &reply, None, None, &body);
            }
        }
        self.publisher.send(&self.system, &reply, None, None, b"");
        self.publisher.flush();
    }

    /// A peer's answer: each JWT this node lacks or holds older is taken as a push
    /// would be (checked against the trusted operators, never replacing a newer one).
    async fn pack_answer(&mut self, msg: &InternalMsg) {
        for (key, jwt) in claims::parse_pack(msg.payload()) {
            let held = self
                .ctx
                .auth()
                .trust()
                .and_then(|t| t.lookup(&key).map(str::to_string));
            if held.as_deref() == Some(jwt.as_str()) {
                continue;
            }
            match self.update(&jwt, Some(&key)).await {
                Ok(account) => log::debug!("account {account}: taken from a peer's resolver"),
                // An older JWT from a peer that is behind, or one it should not hold.
                Err(e) => log::debug!("a peer's JWT for {key} not taken: {}", e.description),
            }
        }
    }

    /// Decides, stores and applies one pushed account JWT; the account's key.
    async fn update(
        &self,
        token: &str,
        subject_account: Option<&str>,
    ) -> Result<String, ClaimsError> {
        let now_secs = runtime::now_unix_ns() / 1_000_000_000;
        loop {
            let current = self.ctx.auth.load_full();
            let Some(trust) = current.trust() else {
                return Err(ClaimsError {
                    account: "n/a".into(),
                    description: "not in operator mode".into(),
                });
            };
            let (trust, update) = trust.update(token, subject_account, now_secs)?;
            if update.unchanged {
                return Ok(update.account);
            }
            if let ResolverKind::Full { dir } = trust.resolver() {
                let (dir, name, text) = (
                    std::path::PathBuf::from(dir),
                    format!("{}.jwt", update.account),
                    update.token.clone(),
                );
                let stored =
                    runtime::unblock(move || runtime::write_file_durably(&dir, &name, &text)).await;
                if let Err(e) = stored {
                    return Err(ClaimsError {
                        account: update.account,
                        description: format!("cannot store the account JWT: {e}"),
                    });
                }
            }
            let next = Arc::new(current.with_trust(trust));
            let before = self.ctx.auth.compare_and_swap(&current, next);
            if !Arc::ptr_eq(&before, &current) {
                // A reload swapped the authenticator meanwhile: decide again on it.
                continue;
            }
            activate_account(&self.ctx, &update.account);
            log::info!(
                "account {} {}",
                update.account,
                if update.new_account {
                    "added"
                } else {
                    "updated"
                }
            );
            if update.shape_changed || update.jetstream_changed {
                log::warn!(
                    "account {}: its exports, imports or JetStream changed; they apply when the node restarts",
                    update.account
                );
            }
            (self.reauthorize)();
            return Ok(update.account);
        }
    }
}
