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
    let subs: Vec<SubChange> = claims::subjects(trust.resolver())
        .iter()
        .map(|subject| {
            let sink = InternalSink {
                tag: 0,
                mailbox: tx.clone(),
            };
            SubChange::Add(Arc::new(
                Subscription::internal(subject, None, sink).cluster_wide(true),
            ))
        })
        .collect();
    system.send(subs);
    let mut resolver = Resolver {
        ctx: ctx.clone(),
        system,
        publisher: Publisher::default(),
        reauthorize: Box::new(reauthorize),
    };
    ctx.spawner.spawn_detached(async move {
        while let Ok(msg) = rx.recv().await {
            resolver.handle(msg).await;
        }
    });
}

struct Resolver {
    ctx: Arc<ServerContext>,
    system: Arc<Account>,
    publisher: Publisher,
    reauthorize: Box<dyn Fn() + Send + Sync>,
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
        };
        if let Some(reply) = &msg.reply {
            self.publisher.send(&self.system, reply, None, None, &body);
            self.publisher.flush();
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
