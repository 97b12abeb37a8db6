//! `meshbroker auth push`'s client: one plain connection to a node, logged in as a
//! (temporary) user of the system account, sending each account JWT to
//! `$SYS.REQ.ACCOUNT.<key>.CLAIMS.UPDATE` and collecting every node's answer until
//! the wait is over (in a cluster, every node answers for itself), as `nsc push` does.
//! Blocking and small: it runs once from the command line.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use base64::Engine;

use super::runtime;

/// One node's answer to one account's push.
#[derive(Debug, Clone)]
pub struct Answer {
    /// `server NAME: jwt updated` or the error's description.
    pub text: String,
    pub failed: bool,
}

/// Pushes `jwts` (name, public key, JWT) through the node at `url`; the answers by
/// account name, in the order they came.
pub fn push(
    url: &str,
    user_jwt: &str,
    user: &nkeys::KeyPair,
    jwts: &[(String, String, String)],
    wait: Duration,
) -> Result<Vec<(String, Answer)>, String> {
    let addr = url
        .strip_prefix("nats://")
        .unwrap_or(url)
        .trim_end_matches('/');
    let stream = TcpStream::connect(addr).map_err(|e| format!("{url}: {e}"))?;
    stream.set_nodelay(true).ok();
    let mut wire = Wire {
        stream,
        buf: Vec::new(),
    };
    let info = wire.line(runtime::now() + Duration::from_secs(5))?;
    let info: serde_json::Value = info
        .strip_prefix("INFO ")
        .and_then(|j| serde_json::from_str(j).ok())
        .ok_or_else(|| format!("{url}: not a NATS server (no INFO)"))?;
    let nonce = info["nonce"]
        .as_str()
        .ok_or_else(|| format!("{url}: the node is not in operator mode (no nonce)"))?;
    let sig = user
        .sign(nonce.as_bytes())
        .map_err(|e| format!("signing the nonce: {e}"))?;
    let connect = serde_json::json!({
        "verbose": false, "pedantic": false, "protocol": 1, "headers": false,
        "name": "meshbroker auth push", "lang": "rust",
        "jwt": user_jwt,
        "sig": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sig),
    });
    let inbox = format!("_INBOX.push{:x}", fastrand::u64(..));
    let mut out = format!("CONNECT {connect}\r\nSUB {inbox}.> 1\r\nPING\r\n");
    wire.send(out.as_bytes())?;
    let deadline = runtime::now() + Duration::from_secs(5);
    loop {
        let line = wire.line(deadline)?;
        if line == "PONG" {
            break;
        }
        if let Some(e) = line.strip_prefix("-ERR ") {
            return Err(format!("{url}: {e}"));
        }
    }
    out.clear();
    for (n, (_, key, jwt)) in jwts.iter().enumerate() {
        out.push_str(&format!(
            "PUB $SYS.REQ.ACCOUNT.{key}.CLAIMS.UPDATE {inbox}.{n} {}\r\n{jwt}\r\n",
            jwt.len()
        ));
    }
    wire.send(out.as_bytes())?;
    let mut answers = Vec::new();
    let until = runtime::now() + wait;
    while let Some((subject, payload)) = wire.message(until)? {
        let Some(n) = subject
            .rsplit('.')
            .next()
            .and_then(|n| n.parse::<usize>().ok())
        else {
            continue;
        };
        let Some((name, _, _)) = jwts.get(n) else {
            continue;
        };
        answers.push((name.clone(), describe(&payload)));
    }
    Ok(answers)
}

/// What a node said, in a line.
fn describe(payload: &[u8]) -> Answer {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(payload) else {
        return Answer {
            text: format!("unreadable answer {:?}", String::from_utf8_lossy(payload)),
            failed: true,
        };
    };
    let server = v["server"]["name"].as_str().unwrap_or("?");
    if let Some(msg) = v["data"]["message"].as_str() {
        return Answer {
            text: format!("server {server}: {msg}"),
            failed: false,
        };
    }
    Answer {
        text: format!(
            "server {server}: {}",
            v["error"]["description"].as_str().unwrap_or("an error")
        ),
        failed: true,
    }
}

struct Wire {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Wire {
    fn send(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.stream
            .write_all(bytes)
            .map_err(|e| format!("sending: {e}"))
    }

    /// Reads more bytes, or `false` once `deadline` passed.
    fn fill(&mut self, deadline: Instant) -> Result<bool, String> {
        let left = deadline.saturating_duration_since(runtime::now());
        if left.is_zero() {
            return Ok(false);
        }
        self.stream.set_read_timeout(Some(left)).ok();
        let mut chunk = [0u8; 16384];
        match self.stream.read(&mut chunk) {
            Ok(0) => Err("the node closed the connection".into()),
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(true)
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                Ok(false)
            }
            Err(e) => Err(format!("reading: {e}")),
        }
    }

    /// The next protocol line (without CRLF); PINGs are answered on the way.
    fn line(&mut self, deadline: Instant) -> Result<String, String> {
        loop {
            if let Some(at) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..at]).into_owned();
                self.buf.drain(..at + 2);
                if line == "PING" {
                    self.send(b"PONG\r\n")?;
                    continue;
                }
                return Ok(line);
            }
            if !self.fill(deadline)? {
                return Err("no answer in time".into());
            }
        }
    }

    /// The next MSG (subject, payload), or `None` at `deadline`.
    fn message(&mut self, deadline: Instant) -> Result<Option<(String, Vec<u8>)>, String> {
        loop {
            let line = match self.line(deadline) {
                Ok(line) => line,
                Err(_) if runtime::now() >= deadline => return Ok(None),
                Err(e) => return Err(e),
            };
            if let Some(e) = line.strip_prefix("-ERR ") {
                return Err(e.to_string());
            }
            let Some(rest) = line.strip_prefix("MSG ") else {
                continue;
            };
            let parts: Vec<&str> = rest.split(' ').collect();
            let (Some(subject), Some(len)) = (
                parts.first(),
                parts.last().and_then(|l| l.parse::<usize>().ok()),
            ) else {
                return Err(format!("unreadable MSG line {line:?}"));
            };
            while self.buf.len() < len + 2 {
                if !self.fill(deadline + Duration::from_secs(5))? {
                    return Err("a message was cut short".into());
                }
            }
            let payload = self.buf[..len].to_vec();
            self.buf.drain(..len + 2);
            return Ok(Some((subject.to_string(), payload)));
        }
    }
}
