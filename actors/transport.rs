//! Setting up a client connection's transport: plain TCP, TLS on the client port
//! (INFO first in plain text, or the handshake first), ws:// and wss://, each within
//! its handshake timeout, then handing the ready byte stream to whoever serves the
//! connection.
//!
//! Each transport's handshake state is boxed on its own: inline, the largest (wss://,
//! ~48 KiB of future) would make every plain connection's task that large.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_lite::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::context::{ServerContext, TlsSetup, WsSetup};
use super::outbound::{drain, Drained};
use super::runtime::{self, TcpStream};
use super::subscription::{ClientShared, Control};
use super::websocket;
use crate::proto::WireError;

/// What serves a connection once its transport is up.
pub trait Serve {
    /// The INFO line sent before a TLS handshake (when the handshake is not first).
    fn first_info(&self) -> Vec<u8>;
    /// The plain-text INFO went out.
    fn info_sent(&mut self);
    /// The session's TLS version and cipher suite (for `/connz`).
    fn tls_details(&mut self, details: (String, String));
    /// The connection speaks WebSocket.
    fn websocket(&mut self);
    /// Serves the connection over these halves until it ends.
    fn serve(
        &mut self,
        reader: impl AsyncRead + Unpin,
        writer: impl AsyncWrite + Unpin + Send + 'static,
    ) -> impl std::future::Future<Output = ()>;
}

/// How a connection arrived.
pub enum Setup {
    Plain,
    Tls(Arc<TlsSetup>),
    WebSocket(Arc<WsSetup>),
}

/// Which listener a connection came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// The client listener: plain TCP, or TLS when `[tls]` is set.
    Tcp,
    /// The WebSocket listener: ws://, or wss:// with its own certificate.
    WebSocket,
}

impl Setup {
    /// How connections through `via` are set up on this node.
    pub fn for_listener(ctx: &ServerContext, via: Via) -> Setup {
        match via {
            Via::Tcp => ctx.tls().map_or(Setup::Plain, Setup::Tls),
            Via::WebSocket => ctx.websocket().map_or(Setup::Plain, Setup::WebSocket),
        }
    }
}

/// Sets up `stream` as `setup` says and serves it with `host`; returns when the
/// connection ended (or its handshake failed, which is logged at debug).
pub async fn open(host: &mut impl Serve, stream: TcpStream, setup: Setup, peer: SocketAddr) {
    match setup {
        Setup::Plain => host.serve(stream.clone(), stream).await,
        Setup::Tls(tls) => Box::pin(tls_session(host, stream, &tls, peer)).await,
        Setup::WebSocket(ws) => match &ws.acceptor {
            None => Box::pin(ws_session(host, stream, &ws, peer)).await,
            Some(acceptor) => Box::pin(wss_session(host, stream, &ws, acceptor, peer)).await,
        },
    }
}

/// TLS on the client port: INFO in plain text (unless the handshake comes first), the
/// handshake, then the session inside it.
async fn tls_session(host: &mut impl Serve, stream: TcpStream, tls: &TlsSetup, peer: SocketAddr) {
    if !tls.handshake_first {
        let line = host.first_info();
        let mut raw = stream.clone();
        if !matches!(
            runtime::timeout(tls.timeout, raw.write_all(&line)).await,
            Some(Ok(()))
        ) {
            return;
        }
        host.info_sent();
    }
    let accept = async { tls.acceptor.accept(stream).await.map_err(|e| e.to_string()) };
    if let Some(session) = handshake("TLS", tls.timeout, accept, peer).await {
        host.tls_details(tls_details(session.get_ref().1));
        let (reader, writer) = futures_lite::io::split(session);
        host.serve(reader, writer).await;
    }
}

/// ws://: the WebSocket handshake (with the origin check), then the session in binary
/// messages.
async fn ws_session(host: &mut impl Serve, stream: TcpStream, ws: &WsSetup, peer: SocketAddr) {
    host.websocket();
    let accept = websocket::accept(stream, &ws.policy, false, ws.max_payload, peer);
    if let Some((r, w)) = handshake("websocket", ws.handshake_timeout, accept, peer).await {
        host.serve(r, w).await;
    }
}

/// wss://: TLS with the WebSocket listener's certificate, then as [`ws_session`].
async fn wss_session(
    host: &mut impl Serve,
    stream: TcpStream,
    ws: &WsSetup,
    acceptor: &futures_rustls::TlsAcceptor,
    peer: SocketAddr,
) {
    host.websocket();
    let handshakes = async {
        let tls = acceptor.accept(stream).await.map_err(|e| e.to_string())?;
        let details = tls_details(tls.get_ref().1);
        websocket::accept(tls, &ws.policy, true, ws.max_payload, peer)
            .await
            .map(|halves| (halves, details))
    };
    if let Some(((r, w), details)) =
        handshake("websocket", ws.handshake_timeout, handshakes, peer).await
    {
        host.tls_details(details);
        host.serve(r, w).await;
    }
}

/// Waits for a transport's handshakes; `None` (logged) if they failed or took too long.
async fn handshake<T>(
    what: &str,
    limit: Duration,
    handshakes: impl std::future::Future<Output = Result<T, String>>,
    peer: SocketAddr,
) -> Option<T> {
    match runtime::timeout(limit, handshakes).await {
        Some(Ok(done)) => Some(done),
        Some(Err(e)) => {
            log::debug!("{peer} - {what} handshake failed: {e}");
            None
        }
        None => {
            log::debug!("{peer} - {what} handshake timeout");
            None
        }
    }
}

/// A TLS session's version and cipher suite as the reference's `/connz` names them
/// (`1.3`, `TLS_AES_128_GCM_SHA256`).
fn tls_details(conn: &rustls::ServerConnection) -> (String, String) {
    let version = match conn.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "1.3".to_string(),
        Some(rustls::ProtocolVersion::TLSv1_2) => "1.2".to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    };
    let suite = conn
        .negotiated_cipher_suite()
        .map(|s| {
            let name = s
                .suite()
                .as_str()
                .map_or_else(|| format!("{:?}", s.suite()), str::to_string);
            // rustls names the TLS 1.3 suites TLS13_…; IANA (and Go) TLS_….
            name.strip_prefix("TLS13_")
                .map_or(name.clone(), |rest| format!("TLS_{rest}"))
        })
        .unwrap_or_default();
    (version, suite)
}

/// Drains the connection's outbound queue into `out`; tells the actor when a write
/// fails or misses its deadline (logged as the reference logs it).
pub async fn write_loop(
    out: impl futures_lite::AsyncWrite + Unpin,
    socket: TcpStream,
    shared: Arc<ClientShared>,
    deadline: Duration,
    peer: SocketAddr,
) {
    match drain(out, socket, &shared.out, deadline).await {
        Drained::Closed => {}
        Drained::WriteFailed => {
            shared.tell(Control::WriteFailed);
        }
        Drained::Deadline { bytes, chunks } => {
            log::info!(
                "{peer} - cid:{} - Slow Consumer Detected: WriteDeadline of {} exceeded with {chunks} chunks of {bytes} total bytes.",
                shared.id,
                humantime::format_duration(deadline)
            );
            shared.tell(Control::Close(WireError::SlowConsumerWriteDeadline));
        }
    }
}
