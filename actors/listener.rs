//! The client listener actor: accepts connections and owns the set of live clients.
//!
//! It spawns a client actor per connection, enforces `max_connections`, and carries
//! out the node's lifecycle commands: an immediate shutdown (close every connection and
//! wait for them), or lame-duck mode (stop accepting, tell clients with `ldm`, wait the
//! grace period, then close the rest spread over the lame-duck duration).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_lite::AsyncWriteExt;

use super::client;
use super::context::ServerContext;
use super::runtime::{self, TcpListener, TcpStream};
use super::subscription::{ClientShared, Control};
use super::transport::Via;
use crate::proto::{encode, WireError};

/// Commands the node (and its monitor) send the listener.
pub enum Command {
    Shutdown,
    LameDuck,
    /// The clients connected now (for monitoring).
    Clients(async_channel::Sender<Vec<Arc<ClientShared>>>),
    /// The authorization config changed: every client checks itself against it.
    Reauthorize,
}

/// How long a shutdown waits for connections to drain their last bytes.
const SHUTDOWN_DRAIN: Duration = Duration::from_secs(5);

pub async fn run(
    ctx: Arc<ServerContext>,
    listener: TcpListener,
    websocket: Option<TcpListener>,
    commands: async_channel::Receiver<Command>,
) {
    let (gone_tx, gone_rx) = async_channel::unbounded::<u64>();
    let mut clients: Clients = HashMap::new();
    let mut accept_backoff = Duration::from_millis(5);

    enum Event {
        Accepted(std::io::Result<(TcpStream, std::net::SocketAddr)>, Via),
        Gone(u64),
        Command(Option<Command>),
    }

    let lame_duck = loop {
        let event = futures_lite::future::or(
            async { Event::Command(commands.recv().await.ok()) },
            futures_lite::future::or(
                async { Event::Gone(gone_rx.recv().await.unwrap_or(0)) },
                futures_lite::future::or(
                    async { Event::Accepted(listener.accept().await, Via::Tcp) },
                    async {
                        match &websocket {
                            Some(ws) => Event::Accepted(ws.accept().await, Via::WebSocket),
                            None => std::future::pending().await,
                        }
                    },
                ),
            ),
        )
        .await;
        match event {
            Event::Accepted(Ok((stream, peer)), via) => {
                accept_backoff = Duration::from_millis(5);
                let _ = stream.set_nodelay(true);
                let id = ctx.next_client_id.fetch_add(1, Ordering::Relaxed);
                ctx.stats.total_connections.fetch_add(1, Ordering::Relaxed);
                if clients.len() >= ctx.config().max_connections {
                    log::warn!(
                        "connection from {peer} refused: max_connections ({}) reached",
                        ctx.config().max_connections
                    );
                    ctx.spawner
                        .spawn_detached(refuse(ctx.clone(), stream, peer, id));
                    continue;
                }
                let control = client::spawn(ctx.clone(), stream, peer, id, gone_tx.clone(), via);
                clients.insert(id, control);
                ctx.stats.connections.fetch_add(1, Ordering::Relaxed);
            }
            Event::Accepted(Err(e), _) => {
                // Out of file descriptors and the like: back off instead of spinning.
                log::error!("accept failed: {e}; retrying in {accept_backoff:?}");
                runtime::sleep(accept_backoff).await;
                accept_backoff = (accept_backoff * 2).min(Duration::from_secs(1));
            }
            Event::Gone(id) => forget(&ctx, &mut clients, id),
            Event::Command(Some(Command::Clients(reply))) => {
                let _ = reply.try_send(clients.values().cloned().collect());
            }
            Event::Command(Some(Command::Reauthorize)) => {
                for client in clients.values() {
                    client.tell(Control::Reauthorize);
                }
            }
            Event::Command(Some(Command::LameDuck)) => break true,
            Event::Command(Some(Command::Shutdown)) | Event::Command(None) => break false,
        }
    };
    drop(listener);
    drop(websocket);

    if lame_duck {
        log::info!(
            "entering lame duck mode: {} clients, grace period {:?}, closing over {:?}",
            clients.len(),
            ctx.config().lame_duck_grace_period.0,
            ctx.config().lame_duck_duration.0
        );
        for control in clients.values() {
            control.tell(Control::LameDuck);
        }
        let (grace, duration) = (
            ctx.config().lame_duck_grace_period.0,
            ctx.config().lame_duck_duration.0,
        );
        wait_for_clients(&ctx, &mut clients, &gone_rx, grace).await;
        close_spread(&ctx, &mut clients, &gone_rx, duration).await;
    } else {
        for control in clients.values() {
            control.tell(Control::Close(WireError::ServerShutdown));
        }
    }
    wait_for_clients(&ctx, &mut clients, &gone_rx, SHUTDOWN_DRAIN).await;
}

/// A client has gone: it leaves the live set and the connections gauge.
fn forget(ctx: &ServerContext, clients: &mut Clients, id: u64) {
    if clients.remove(&id).is_some() {
        ctx.stats.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

type Clients = HashMap<u64, Arc<ClientShared>>;

/// Waits until every client is gone or `limit` passed.
async fn wait_for_clients(
    ctx: &ServerContext,
    clients: &mut Clients,
    gone: &async_channel::Receiver<u64>,
    limit: Duration,
) {
    let deadline = runtime::now() + limit;
    while !clients.is_empty() {
        let left = deadline.saturating_duration_since(runtime::now());
        match runtime::timeout(left, gone.recv()).await {
            Some(Ok(id)) => forget(ctx, clients, id),
            _ => return,
        }
    }
}

/// Closes the remaining clients a few at a time so they reconnect elsewhere without a
/// thundering herd, spreading the closes over `duration`.
async fn close_spread(
    ctx: &ServerContext,
    clients: &mut Clients,
    gone: &async_channel::Receiver<u64>,
    duration: Duration,
) {
    let step = Duration::from_millis(10);
    let steps = (duration.as_millis() / step.as_millis()).max(1) as usize;
    let per_step = clients.len().div_ceil(steps).max(1);
    let ids: Vec<u64> = clients.keys().copied().collect();
    for batch in ids.chunks(per_step) {
        for id in batch {
            if let Some(control) = clients.get(id) {
                control.tell(Control::Close(WireError::ServerShutdown));
            }
        }
        while let Ok(id) = gone.try_recv() {
            forget(ctx, clients, id);
        }
        runtime::sleep(step).await;
    }
}

/// Answers a connection over the limit the way the reference does: INFO, then the
/// error, then close.
async fn refuse(
    ctx: Arc<ServerContext>,
    mut stream: TcpStream,
    peer: std::net::SocketAddr,
    id: u64,
) {
    let mut buf = Vec::new();
    encode::write_info(&mut buf, &ctx.info_for(id, peer.ip()));
    if let Some(text) = WireError::MaxConnectionsExceeded.text() {
        encode::write_err(&mut buf, text);
    }
    let _ = runtime::timeout(ctx.config().write_deadline.0, stream.write_all(&buf)).await;
    let _ = stream.close().await;
}
