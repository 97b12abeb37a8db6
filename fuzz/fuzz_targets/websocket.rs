//! The WebSocket path a browser's bytes take: a handshake followed by frames, read
//! through the adapter the client actor reads from. Arbitrary frame bytes never panic
//! or hang it; well-formed masked binary frames come out as exactly their payloads,
//! in order, however they are split.
#![no_main]

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use arbitrary::Arbitrary;
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite};
use libfuzzer_sys::fuzz_target;
use meshbroker::actors::websocket;
use meshbroker::websocket::OriginPolicy;

#[derive(Arbitrary, Debug)]
enum Input {
    /// Raw bytes after a valid handshake.
    Raw(Vec<u8>),
    /// Payloads sent as well-formed masked binary frames.
    Frames {
        payloads: Vec<Vec<u8>>,
        mask: [u8; 4],
    },
    /// Raw bytes as the handshake itself.
    Handshake(Vec<u8>),
}

const HANDSHAKE: &[u8] = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUpgrade: websocket\r\n\
Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
Sec-WebSocket-Version: 13\r\nOrigin: http://127.0.0.1:8080\r\n\r\n";

/// A connection whose peer sends `input` and then closes. Like a real client, it sends
/// nothing past the handshake request (the first `gate` bytes) until the server has
/// answered it.
struct Scripted {
    input: Vec<u8>,
    at: usize,
    gate: usize,
    answered: bool,
}

impl AsyncRead for Scripted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let end = if self.answered {
            self.input.len()
        } else {
            self.gate
        };
        if self.at == end && end < self.input.len() {
            // Waiting for the server's answer before sending more.
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        // Small reads, to split frames at every possible place over a run.
        let n = buf.len().min(end - self.at).min(7);
        let at = self.at;
        buf[..n].copy_from_slice(&self.input[at..at + n]);
        self.at += n;
        Poll::Ready(Ok(n))
    }
}

impl AsyncWrite for Scripted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.answered = true;
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

fn masked_binary_frame(payload: &[u8], mask: [u8; 4], out: &mut Vec<u8>) {
    out.push(0x82);
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= 0xffff => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
}

fuzz_target!(|input: Input| {
    let gate = match &input {
        Input::Handshake(raw) => raw.len(),
        _ => HANDSHAKE.len(),
    };
    let (bytes, expected) = match input {
        Input::Raw(raw) => ([HANDSHAKE, &raw].concat(), None),
        Input::Handshake(raw) => (raw, None),
        Input::Frames { payloads, mask } => {
            let mut bytes = HANDSHAKE.to_vec();
            for p in &payloads {
                masked_binary_frame(p, mask, &mut bytes);
            }
            (bytes, Some(payloads.concat()))
        }
    };
    let policy = OriginPolicy::new(&[]).expect("empty policy");
    let peer = "127.0.0.1:1".parse().expect("addr");
    let stream = Scripted {
        input: bytes,
        at: 0,
        gate,
        answered: false,
    };
    futures_lite::future::block_on(async {
        let accepted = websocket::accept(stream, &policy, false, 1 << 20, peer).await;
        let (mut reader, _writer) = match accepted {
            Ok(halves) => halves,
            Err(e) => {
                assert!(expected.is_none(), "a valid handshake was refused: {e}");
                return;
            }
        };
        let mut got = Vec::new();
        let result = reader.read_to_end(&mut got).await;
        if let Some(expected) = expected {
            assert!(result.is_ok(), "{result:?}");
            assert_eq!(got, expected);
        }
    });
});
