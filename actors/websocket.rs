//! NATS over WebSocket: the handshake (with the origin check) and the byte-stream view
//! of a WebSocket connection that the client actor reads and writes.
//!
//! A browser's NATS client sends protocol bytes in binary messages, and a message may
//! hold several operations or part of one: the client actor does not care about
//! message boundaries, so [`WsReader`] is an `AsyncRead` over the messages' payloads
//! and [`WsWriter`] an `AsyncWrite` that sends each write as one binary message.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use async_tungstenite::tungstenite::error::ProtocolError;
use async_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use async_tungstenite::tungstenite::http;
use async_tungstenite::tungstenite::protocol::WebSocketConfig;
use async_tungstenite::tungstenite::{Error as WsError, Message};
use async_tungstenite::{WebSocketReceiver, WebSocketSender};
use bytes::{Buf, Bytes};
use futures_lite::{AsyncRead, AsyncWrite, Stream};
use futures_sink::Sink;

use crate::websocket::OriginPolicy;

/// The largest WebSocket message accepted: room for a maximal NATS message and its
/// control line, well short of tungstenite's 64 MiB default.
fn max_message(max_payload: usize) -> usize {
    max_payload.saturating_mul(2).max(1024 * 1024)
}

/// What tungstenite reads into at a time (it grows for larger messages).
const WS_READ_BUFFER: usize = 4 * 1024;

/// Runs the server side of the WebSocket handshake on `stream`, refusing (403) an
/// origin `policy` does not allow.
pub async fn accept<S>(
    stream: S,
    policy: &OriginPolicy,
    tls: bool,
    max_payload: usize,
    peer: std::net::SocketAddr,
) -> Result<(WsReader<S>, WsWriter<S>), String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // The error type is tungstenite's callback signature, not ours to shrink.
    #[allow(clippy::result_large_err)]
    let check = |request: &Request, response: Response| -> Result<Response, ErrorResponse> {
        let header = |name: &str| request.headers().get(name).and_then(|v| v.to_str().ok());
        match policy.check(header("origin"), header("host"), tls) {
            Ok(()) => Ok(response),
            Err(reason) => {
                log::warn!("{peer} - websocket refused: {reason}");
                let mut refusal = http::Response::new(Some(reason));
                *refusal.status_mut() = http::StatusCode::FORBIDDEN;
                Err(refusal)
            }
        }
    };
    let mut config = WebSocketConfig::default();
    config.max_message_size = Some(max_message(max_payload));
    config.max_frame_size = Some(max_message(max_payload));
    // tungstenite's defaults (128 KiB to read, 128 KiB to gather writes) cost every
    // browser connection a quarter of a megabyte; the connection's writer already
    // hands over whole batches, one message each, and flushes them.
    config.read_buffer_size = WS_READ_BUFFER;
    config.write_buffer_size = 0;
    let ws = async_tungstenite::accept_hdr_async_with_config(stream, check, Some(config))
        .await
        .map_err(|e| e.to_string())?;
    let (sender, receiver) = ws.split();
    Ok((
        WsReader {
            receiver,
            pending: Bytes::new(),
        },
        WsWriter { sender },
    ))
}

/// The payloads of the binary (and text) messages a client sends, as one byte stream.
pub struct WsReader<S> {
    receiver: WebSocketReceiver<S>,
    pending: Bytes,
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsReader<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        loop {
            if !this.pending.is_empty() {
                let n = out.len().min(this.pending.len());
                out[..n].copy_from_slice(&this.pending[..n]);
                this.pending.advance(n);
                return Poll::Ready(Ok(n));
            }
            match ready!(Pin::new(&mut this.receiver).poll_next(cx)) {
                Some(Ok(Message::Binary(data))) => this.pending = data,
                Some(Ok(Message::Text(text))) => {
                    this.pending = Bytes::copy_from_slice(text.as_bytes())
                }
                // Pings are answered by tungstenite itself.
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                // A client that drops the connection without a close frame has
                // ended it as surely as one that sends one.
                None
                | Some(Ok(Message::Close(_)))
                | Some(Err(
                    WsError::ConnectionClosed
                    | WsError::AlreadyClosed
                    | WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake),
                )) => return Poll::Ready(Ok(0)),
                Some(Err(e)) => return Poll::Ready(Err(io::Error::other(e))),
            }
        }
    }
}

/// Sends each write as one binary message.
pub struct WsWriter<S> {
    sender: WebSocketSender<S>,
}

fn io_error(e: WsError) -> io::Error {
    match e {
        WsError::Io(e) => e,
        e => io::Error::other(e),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsWriter<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let sender = &mut self.get_mut().sender;
        ready!(Pin::new(&mut *sender).poll_ready(cx)).map_err(io_error)?;
        Pin::new(sender)
            .start_send(Message::Binary(Bytes::copy_from_slice(buf)))
            .map_err(io_error)?;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().sender)
            .poll_flush(cx)
            .map_err(io_error)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().sender)
            .poll_close(cx)
            .map_err(io_error)
    }
}
