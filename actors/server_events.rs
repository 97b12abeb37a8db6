//! The server's own answers in the system account: `$SYS.REQ.SERVER.PING` (and
//! `….PING.STATSZ`, `$SYS.REQ.SERVER.<id>.STATSZ`) get this node's numbers, as
//! `nats server list` asks every server of a cluster for them. The subscriptions
//! are cluster-wide, so a ping through any node reaches every node and each answers
//! for itself. (Connect and disconnect events are the client actor's: it knows what
//! they say.)

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::context::ServerContext;
use super::publish::Publisher;
use super::router::SubChange;
use super::runtime;
use super::subscription::{InternalMsg, InternalSink, Subscription};
use crate::events::{self, DataStats, Statsz, StatszReply};

/// Starts the actor, when the node has a system account.
pub fn start(ctx: &Arc<ServerContext>) {
    let Some(system) = ctx.account(&ctx.system_account) else {
        return;
    };
    let (tx, rx) = async_channel::unbounded::<InternalMsg>();
    let subs = events::statsz_subjects(&ctx.server_id)
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
    let ctx = ctx.clone();
    ctx.spawner.clone().spawn_detached(async move {
        let mut publisher = Publisher::default();
        while let Ok(msg) = rx.recv().await {
            let (Some(reply), Ok(subject)) = (&msg.reply, std::str::from_utf8(&msg.subject)) else {
                continue;
            };
            if !events::is_statsz_request(subject, &ctx.server_id) {
                continue;
            }
            let answer = StatszReply {
                server: ctx.server_block(),
                statsz: statsz(&ctx),
            };
            match serde_json::to_vec(&answer) {
                Ok(body) => {
                    publisher.send(&system, reply, None, None, &body);
                    publisher.flush();
                }
                Err(e) => log::warn!("statsz answer not encoded: {e}"),
            }
        }
    });
}

fn statsz(ctx: &ServerContext) -> Statsz {
    let s = &ctx.stats;
    let uptime = ctx.started.elapsed().unwrap_or_default();
    let (mem, cpu_secs) = runtime::process_usage();
    let started_ns = ctx
        .started
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64);
    let load = |counter: &std::sync::atomic::AtomicU64| counter.load(Ordering::Relaxed);
    Statsz {
        start: crate::jetstream::api::format_time(started_ns),
        mem,
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        // Average since start, percent of one core (as /varz says it).
        cpu: if uptime.as_secs_f64() > 0.0 {
            (cpu_secs / uptime.as_secs_f64() * 1000.0).round() / 10.0
        } else {
            0.0
        },
        connections: load(&s.connections),
        total_connections: load(&s.total_connections),
        active_accounts: ctx.accounts().values().filter(|a| a.clients() > 0).count(),
        subscriptions: ctx.subscriptions(),
        sent: DataStats {
            msgs: load(&s.out_msgs),
            bytes: load(&s.out_bytes),
        },
        received: DataStats {
            msgs: load(&s.in_msgs),
            bytes: load(&s.in_bytes),
        },
        slow_consumers: load(&s.slow_consumers),
        active_servers: 1 + ctx.peers.routes().len(),
    }
}
