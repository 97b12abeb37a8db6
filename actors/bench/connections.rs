//! Connection scenarios: a reconnect storm (thousands of clients at once) against
//! each kind of listener, and the memory an idle connection costs.
//!
//! A storm opens `conns` connections with `in_flight` handshakes under way at a time
//! and keeps every one open until all are done, as clients reconnecting after an
//! outage do. Its rate is the connections completed per second; a listener whose
//! accept queue overflows shows as SYNs retried after 1 s and 3 s.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{connect, rss, BenchResult};

/// Handshakes under way at once in a storm (as the issue that asked for it measured).
pub const IN_FLIGHT: usize = 256;

/// Which listener a storm hits, and what completes a connection there.
#[derive(Debug, Clone)]
pub enum Listener {
    /// The client port: INFO, CONNECT, PING, PONG.
    Client,
    /// The client port in operator mode: INFO, CONNECT with the user JWT and the
    /// nonce signed, PING, PONG (each login checks a signature and the JWT chain).
    Jwt(Arc<Creds>),
    /// The WebSocket port: the HTTP upgrade, then the INFO in a binary frame.
    WebSocket,
    /// The cluster port: the route INFO (the route handshake stops there: a storm of
    /// unauthenticated peers is what the listener must take).
    Route,
    /// The monitoring port: `GET /healthz` and an answer.
    Monitor,
}

/// A user JWT and its key, from a `.creds` file.
#[derive(Debug)]
pub struct Creds {
    jwt: String,
    key: nkeys::KeyPair,
}

impl Creds {
    pub fn read(path: &std::path::Path) -> BenchResult<Creds> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let (jwt, seed) = crate::auth::mint::parse_creds(&text)
            .ok_or_else(|| format!("{}: not a .creds file", path.display()))?;
        let key = nkeys::KeyPair::from_seed(&seed).map_err(|e| format!("creds seed: {e}"))?;
        Ok(Creds { jwt, key })
    }
}

/// Opens `conns` connections to `addr` with [`IN_FLIGHT`] handshakes at a time; the
/// rate in connections per second, once all are open (they are closed after).
pub fn storm(addr: &str, conns: usize, kind: Listener) -> BenchResult<f64> {
    let start = Instant::now();
    let held = open_all(addr, conns, kind)?;
    let elapsed = start.elapsed().as_secs_f64();
    drop(held);
    // Let the server see them go before the next scenario.
    std::thread::sleep(Duration::from_millis(500));
    Ok(conns as f64 / elapsed)
}

/// `conns` connections, all open, made [`IN_FLIGHT`] at a time.
fn open_all(addr: &str, conns: usize, kind: Listener) -> BenchResult<Vec<TcpStream>> {
    let held: Arc<Mutex<Vec<TcpStream>>> = Arc::new(Mutex::new(Vec::with_capacity(conns)));
    let next = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..IN_FLIGHT.min(conns))
        .map(|_| {
            let (held, next, addr, kind) =
                (held.clone(), next.clone(), addr.to_string(), kind.clone());
            std::thread::spawn(move || -> BenchResult<()> {
                while next.fetch_add(1, Ordering::Relaxed) < conns {
                    let s = handshake(&addr, &kind)?;
                    held.lock().map_err(|_| "poisoned")?.push(s);
                }
                Ok(())
            })
        })
        .collect();
    for w in workers {
        w.join().map_err(|_| "a connecting thread panicked")??;
    }
    let held = std::mem::take(&mut *held.lock().map_err(|_| "poisoned")?);
    if held.len() != conns {
        return Err(format!("{} of {conns} connections opened", held.len()));
    }
    Ok(held)
}

fn handshake(addr: &str, kind: &Listener) -> BenchResult<TcpStream> {
    let timeout = Some(Duration::from_secs(30));
    match kind {
        Listener::Client => connect(addr),
        Listener::Jwt(creds) => {
            use base64::Engine;
            let mut s = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
            s.set_read_timeout(timeout).map_err(|e| e.to_string())?;
            let info = read_until(&mut s, b"\r\n", "INFO")?;
            let info: serde_json::Value = std::str::from_utf8(&info)
                .ok()
                .and_then(|t| t.strip_prefix("INFO "))
                .and_then(|t| serde_json::from_str(t.trim_end()).ok())
                .ok_or("an unreadable INFO")?;
            let nonce = info["nonce"]
                .as_str()
                .ok_or("no nonce: not in operator mode")?;
            let sig = creds
                .key
                .sign(nonce.as_bytes())
                .map_err(|e| format!("sign: {e}"))?;
            let connect = serde_json::json!({
                "verbose": false, "pedantic": false, "protocol": 1, "headers": true,
                "jwt": creds.jwt,
                "sig": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sig),
            });
            s.write_all(format!("CONNECT {connect}\r\nPING\r\n").as_bytes())
                .map_err(|e| e.to_string())?;
            let got = read_until(&mut s, b"PONG\r\n", "the PONG")?;
            if got.starts_with(b"-ERR") {
                return Err(format!("login refused: {}", String::from_utf8_lossy(&got)));
            }
            Ok(s)
        }
        Listener::Route => {
            let mut s = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
            s.set_read_timeout(timeout).map_err(|e| e.to_string())?;
            read_until(&mut s, b"\r\n", "the route INFO")?;
            Ok(s)
        }
        Listener::Monitor => {
            let mut s = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
            s.set_read_timeout(timeout).map_err(|e| e.to_string())?;
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: bench\r\n\r\n")
                .map_err(|e| e.to_string())?;
            let head = read_until(&mut s, b"\r\n\r\n", "the HTTP answer")?;
            // Any answer counts: the reference's /healthz sometimes says 500 ("failed to
            // be ready for connections") in a storm, which is not the accept queue's doing.
            if !head.starts_with(b"HTTP/1.1 ") {
                return Err(format!(
                    "/healthz on {addr} answered {:?}",
                    String::from_utf8_lossy(&head)
                ));
            }
            Ok(s)
        }
        Listener::WebSocket => {
            let mut s = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
            s.set_read_timeout(timeout).map_err(|e| e.to_string())?;
            let request = format!(
                "GET / HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
                 Origin: http://{addr}\r\n\r\n"
            );
            s.write_all(request.as_bytes()).map_err(|e| e.to_string())?;
            let head = read_until(&mut s, b"\r\n\r\n", "the upgrade")?;
            if !head.starts_with(b"HTTP/1.1 101") {
                return Err(format!(
                    "the WebSocket upgrade answered {:?}",
                    String::from_utf8_lossy(&head[..head.len().min(40)])
                ));
            }
            // The INFO follows in the first frame (it may have come with the answer).
            let rest = head
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .map_or(0, |at| head.len() - (at + 4));
            if rest == 0 {
                let mut frame = [0u8; 1];
                s.read_exact(&mut frame).map_err(|e| e.to_string())?;
            }
            Ok(s)
        }
    }
}

/// Reads until `end` has arrived; everything read.
fn read_until(s: &mut TcpStream, end: &[u8], what: &str) -> BenchResult<Vec<u8>> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(end.len()).any(|w| w == end) {
        match s.read(&mut buf) {
            Ok(0) => return Err(format!("closed before {what}")),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => return Err(format!("reading {what}: {e}")),
        }
    }
    Ok(got)
}

/// Resident memory per idle client connection: `conns` clients connect at once
/// ([`IN_FLIGHT`] handshakes at a time), each CONNECTs and is PONGed, then they sit;
/// the server's RSS growth divided by `conns`.
pub fn idle_memory(addr: &str, conns: usize, pid: u32) -> BenchResult<f64> {
    let before = rss(pid)?;
    let held = open_all(addr, conns, Listener::Client)?;
    std::thread::sleep(Duration::from_millis(1000));
    let after = rss(pid)?;
    drop(held);
    Ok(after.saturating_sub(before) as f64 / conns as f64)
}
