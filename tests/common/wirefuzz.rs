//! A differential fuzzer for the client protocol: generated sessions (valid operations,
//! odd CONNECTs, junk, stray line ends, fragmentation at random byte boundaries, a second
//! connection that watches) sent to meshbroker and to nats-server 2.15.1, what comes back
//! normalised (INFO lines, which carry ids and ports, become `INFO`) and compared; a
//! differing session is shrunk to a short reproducer.
//!
//! `tests/wire_fuzz.rs` runs a bounded number of cases; `scripts/wire-fuzz.sh` runs
//! longer ones. Reproducers that found a bug live on in `tests/common/scripts.rs`.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use fastrand::Rng;

/// One generated client session.
#[derive(Clone, Debug)]
pub struct Session {
    /// Subscriptions of a second, well-behaved connection made before the session
    /// starts (`None`: no watcher). Each entry is a `SUB` argument list.
    pub watcher: Option<Vec<String>>,
    /// What the fuzzed connection sends, operation by operation.
    pub ops: Vec<Chunked>,
}

/// The bytes of one operation and where its writes are cut.
#[derive(Clone, Debug)]
pub struct Chunked {
    pub bytes: Vec<u8>,
    /// Offsets inside `bytes` where a write ends (and the fuzzer pauses).
    pub cuts: Vec<usize>,
    /// Whether a write ends after this operation.
    pub flush: bool,
}

/// What one server did with a session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// What the fuzzed connection received, INFO lines normalised.
    pub received: Vec<u8>,
    /// How its connection ended after the final PING.
    pub end: End,
    /// What the watcher received after its own set-up, INFO lines normalised.
    pub watched: Vec<u8>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// The final PING was answered and the connection stayed open.
    Open,
    /// The server closed the connection.
    Closed,
    /// Neither a PONG nor a close (the server waits for more bytes).
    Stalled,
}

impl Session {
    /// Everything the fuzzed connection sends, as one byte string.
    pub fn bytes(&self) -> Vec<u8> {
        self.ops.iter().flat_map(|op| op.bytes.clone()).collect()
    }

    /// A Rust-ish rendering for a reproducer: the watcher and the writes.
    pub fn describe(&self) -> String {
        let mut writes = Vec::new();
        let mut pending = Vec::new();
        for op in &self.ops {
            let mut last = 0;
            for &cut in &op.cuts {
                pending.extend_from_slice(&op.bytes[last..cut]);
                writes.push(std::mem::take(&mut pending));
                last = cut;
            }
            pending.extend_from_slice(&op.bytes[last..]);
            if op.flush {
                writes.push(std::mem::take(&mut pending));
            }
        }
        if !pending.is_empty() {
            writes.push(pending);
        }
        let writes: Vec<String> = writes.iter().map(|w| shown(w)).collect();
        format!(
            "watcher: {:?}\nwrites: [{}]",
            self.watcher,
            writes.join(", ")
        )
    }
}

/// A write as a byte string literal, long runs of one byte written `<N x 'a'>`.
fn shown(write: &[u8]) -> String {
    let mut out = String::from("b\"");
    let mut i = 0;
    while i < write.len() {
        let run = write[i..].iter().take_while(|&&b| b == write[i]).count();
        if run > 16 {
            out.push_str(&format!("<{run} x {:?}>", write[i] as char));
        } else {
            for &b in &write[i..i + run] {
                out.extend(std::ascii::escape_default(b).map(char::from));
            }
        }
        i += run;
    }
    out.push('"');
    out
}

const SUBJECTS: &[&str] = &[
    "a", "a", "a.b", "a.b", "b.c", "_INBOX.x", "_INBOX.x", "q", "a.*", "a.>", "a..b", ".a",
];
const REPLIES: &[&str] = &["_INBOX.x", "_INBOX.y", "a", "a.*", "r"];
const SIDS: &[&str] = &["1", "1", "2", "2", "3", "x", "0", "-1"];
const WATCHES: &[&str] = &[
    "a 91",
    "a.* 92",
    "a.> 93",
    "b.c g 94",
    "_INBOX.x 95",
    "q w 96",
];

/// Generates the session for one case number of one seed.
pub fn generate(seed: u64, case: u64) -> Session {
    let mut rng = Rng::with_seed(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ case);
    let watcher = rng.bool().then(|| {
        WATCHES
            .iter()
            .filter(|_| rng.u8(..3) == 0)
            .map(|w| w.to_string())
            .collect()
    });
    let mut ops = Vec::new();
    if rng.u8(..10) < 8 {
        ops.push(connect(&mut rng));
    }
    // A CONNECT after a SUB is not generated: what happens to the subscriptions
    // is a documented difference (README).
    let mut subscribed = false;
    for _ in 0..rng.usize(1..9) {
        let op = operation(&mut rng);
        let named =
            |name: &[u8]| op.len() >= name.len() && op[..name.len()].eq_ignore_ascii_case(name);
        if subscribed && named(b"CONNECT") {
            continue;
        }
        subscribed |= named(b"SUB");
        ops.push(op);
    }
    let ops = ops
        .into_iter()
        .map(|bytes| {
            let cuts = if bytes.len() > 1 && rng.u8(..4) == 0 {
                let mut cuts: Vec<usize> = (0..rng.usize(1..3))
                    .map(|_| rng.usize(1..bytes.len()))
                    .collect();
                cuts.sort_unstable();
                cuts.dedup();
                cuts
            } else {
                Vec::new()
            };
            Chunked {
                bytes,
                cuts,
                flush: rng.u8(..3) == 0,
            }
        })
        .collect();
    Session { watcher, ops }
}

fn pick<'a>(rng: &mut Rng, from: &[&'a str]) -> &'a str {
    from[rng.usize(..from.len())]
}

/// A line end: mostly CRLF, sometimes LF alone.
fn eol(rng: &mut Rng) -> &'static str {
    if rng.u8(..8) == 0 {
        "\n"
    } else {
        "\r\n"
    }
}

/// The space between arguments: mostly one space, sometimes tabs or several.
fn gap(rng: &mut Rng) -> &'static str {
    match rng.u8(..12) {
        0 => "\t",
        1 => "  ",
        2 => " \t ",
        _ => " ",
    }
}

/// An operation name, sometimes in lower or mixed case.
fn name(rng: &mut Rng, op: &str) -> String {
    match rng.u8(..10) {
        0 => op.to_lowercase(),
        1 => {
            let mut s = op.to_lowercase();
            s.replace_range(..1, &op[..1]);
            s
        }
        _ => op.to_string(),
    }
}

fn json_value(rng: &mut Rng) -> String {
    match rng.u8(..7) {
        0 => "true".into(),
        1 => "false".into(),
        2 => rng.u32(..5).to_string(),
        3 => "\"x\"".into(),
        4 => "null".into(),
        5 => "[1,\"a\"]".into(),
        _ => "{\"k\":1}".into(),
    }
}

fn connect(rng: &mut Rng) -> Vec<u8> {
    let mut fields: Vec<(String, String)> = Vec::new();
    for key in ["verbose", "pedantic", "headers", "echo", "no_responders"] {
        match rng.u8(..4) {
            0 => {}
            1 => fields.push((key.into(), "true".into())),
            _ => fields.push((key.into(), "false".into())),
        }
    }
    if rng.bool() {
        fields.push(("protocol".into(), rng.u8(..3).to_string()));
    }
    if rng.bool() {
        fields.push(("lang".into(), "\"rust\"".into()));
        fields.push(("version".into(), "\"0.1\"".into()));
    }
    if rng.u8(..4) == 0 {
        fields.push(("name".into(), "\"fuzz\"".into()));
    }
    // The odd ones: a repeated key (last wins in Go), an unknown or empty key of any
    // type, a known key of the wrong type.
    match rng.u8(..10) {
        0 if !fields.is_empty() => {
            let (key, _) = fields[rng.usize(..fields.len())].clone();
            fields.push((key, json_value(rng)));
        }
        1 => fields.push(("zzz".into(), json_value(rng))),
        2 => fields.push((String::new(), json_value(rng))),
        3 => {
            let key = pick(rng, &["verbose", "headers", "echo", "protocol", "name"]);
            fields.push((key.into(), json_value(rng)));
        }
        _ => {}
    }
    rng.shuffle(&mut fields);
    let sep = if rng.u8(..8) == 0 { ", " } else { "," };
    let body: Vec<String> = fields.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
    let json = match rng.u8(..30) {
        0 => String::new(),
        1 => "{bad".into(),
        2 => format!("{{{}}} x", body.join(sep)),
        _ => format!("{{{}}}", body.join(sep)),
    };
    format!("{}{}{json}{}", name(rng, "CONNECT"), gap(rng), eol(rng)).into_bytes()
}

fn payload(rng: &mut Rng) -> Vec<u8> {
    let len = match rng.u8(..20) {
        0 => rng.usize(1000..2100),
        1..=3 => 0,
        _ => rng.usize(1..12),
    };
    (0..len).map(|i| b"hello world\r\n"[i % 13]).collect()
}

/// A declared size: mostly true, sometimes off by a little.
fn declared(rng: &mut Rng, len: usize) -> String {
    match rng.u8(..14) {
        0 => (len + rng.usize(1..4)).to_string(),
        1 if len > 0 => (len - 1).to_string(),
        2 => "x".into(),
        _ => len.to_string(),
    }
}

fn publish(rng: &mut Rng) -> Vec<u8> {
    let subject = pick(rng, SUBJECTS);
    let reply = if rng.u8(..3) == 0 {
        format!("{}{}", gap(rng), pick(rng, REPLIES))
    } else {
        String::new()
    };
    let body = payload(rng);
    let end = eol(rng);
    let mut out = format!(
        "{}{}{subject}{reply}{}{}{end}",
        name(rng, "PUB"),
        gap(rng),
        gap(rng),
        declared(rng, body.len())
    )
    .into_bytes();
    out.extend_from_slice(&body);
    out.extend_from_slice(if rng.u8(..15) == 0 { b"XX" } else { b"\r\n" });
    out
}

fn hpublish(rng: &mut Rng) -> Vec<u8> {
    let subject = pick(rng, SUBJECTS);
    let reply = if rng.u8(..3) == 0 {
        format!(" {}", pick(rng, REPLIES))
    } else {
        String::new()
    };
    let headers = match rng.u8(..8) {
        0 => "NATS/1.0 503\r\n\r\n".to_string(),
        1 => "HTTP/1.0\r\nA: b\r\n\r\n".to_string(),
        2 => "NATS/1.0\r\nA: b\r\nA: c\r\n\r\n".to_string(),
        3 => "NATS/1.0\r\nBad header\r\n\r\n".to_string(),
        _ => "NATS/1.0\r\nA: b\r\n\r\n".to_string(),
    };
    let body = payload(rng);
    let total = headers.len() + body.len();
    let header_len = match rng.u8(..12) {
        0 => total + 1,
        1 => headers.len() - 1,
        _ => headers.len(),
    };
    let mut out = format!(
        "{} {subject}{reply} {header_len} {}{}",
        name(rng, "HPUB"),
        declared(rng, total),
        eol(rng)
    )
    .into_bytes();
    out.extend_from_slice(headers.as_bytes());
    out.extend_from_slice(&body);
    out.extend_from_slice(b"\r\n");
    out
}

fn operation(rng: &mut Rng) -> Vec<u8> {
    let end = eol(rng);
    match rng.u8(..40) {
        0..=7 => publish(rng),
        8..=10 => hpublish(rng),
        11..=16 => {
            let queue = if rng.u8(..4) == 0 { " g" } else { "" };
            format!(
                "{}{}{}{queue}{}{}{end}",
                name(rng, "SUB"),
                gap(rng),
                pick(rng, SUBJECTS),
                gap(rng),
                pick(rng, SIDS)
            )
            .into_bytes()
        }
        17..=18 => {
            let max = match rng.u8(..3) {
                0 => format!(" {}", rng.u8(..3)),
                _ => String::new(),
            };
            format!("{} {}{max}{end}", name(rng, "UNSUB"), pick(rng, SIDS)).into_bytes()
        }
        19..=22 => format!("{}{end}", name(rng, "PING")).into_bytes(),
        23 => format!("{}{end}", name(rng, "PONG")).into_bytes(),
        24 => connect(rng),
        25 => format!("INFO {{}}{end}").into_bytes(),
        26 => end.as_bytes().to_vec(),
        27 => b"\r".to_vec(),
        28 => format!("PING\r{end}").into_bytes(),
        29 => format!("FOO bar{end}").into_bytes(),
        30 => {
            let long = "a".repeat(rng.usize(4000..4200));
            format!("PUB {long} 1{end}x\r\n").into_bytes()
        }
        31 => {
            let long = "a".repeat(rng.usize(4000..4200));
            format!("SUB {long} 1{end}").into_bytes()
        }
        32 => format!("PUB a 2000000{end}").into_bytes(),
        33 => format!(
            "{}{end}",
            pick(rng, &["SUB", "PUB", "UNSUB", "HPUB", "PI", "P"])
        )
        .into_bytes(),
        34 => format!(" PING{end}").into_bytes(),
        35 => format!("PING x{end}").into_bytes(),
        36 => {
            let junk: Vec<u8> = (0..rng.usize(1..6)).map(|_| rng.u8(..)).collect();
            junk
        }
        _ => publish(rng),
    }
}

/// INFO lines (ids, ports, nonces differ by nature) become `INFO\r\n`.
pub fn normalise(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut rest = bytes;
    loop {
        let at_info = rest.starts_with(b"INFO ");
        match rest.iter().position(|&b| b == b'\n') {
            Some(end) if at_info => {
                out.extend_from_slice(b"INFO\r\n");
                rest = &rest[end + 1..];
            }
            Some(end) => {
                out.extend_from_slice(&rest[..=end]);
                rest = &rest[end + 1..];
            }
            None => {
                out.extend_from_slice(rest);
                return out;
            }
        }
    }
}

const WATCH_CONNECT: &[u8] =
    b"CONNECT {\"verbose\":false,\"headers\":true,\"no_responders\":true}\r\n";
/// How long a quiet connection that has answered the final PING is watched for more.
const QUIET: Duration = Duration::from_millis(15);
/// How long a connection with no PONG and no close is given.
const STALL: Duration = Duration::from_millis(400);

struct Conn {
    stream: TcpStream,
    received: Vec<u8>,
    /// The server closed (read side: EOF or reset).
    closed: bool,
    /// A write failed: the server is gone, but what it sent before may still be
    /// there to read.
    unwritable: bool,
}

impl Conn {
    fn open(addr: SocketAddr) -> Conn {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_nodelay(true).ok();
        Conn {
            stream,
            received: Vec::new(),
            closed: false,
            unwritable: false,
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        if !self.closed && !self.unwritable && self.stream.write_all(bytes).is_err() {
            self.unwritable = true;
        }
    }

    /// Reads what is there within `wait`; false once nothing came.
    fn read_for(&mut self, wait: Duration) -> bool {
        if self.closed {
            return false;
        }
        let mut buf = [0u8; 65536];
        self.stream.set_read_timeout(Some(wait)).ok();
        match self.stream.read(&mut buf) {
            Ok(0) => {
                self.closed = true;
                false
            }
            Ok(n) => {
                self.received.extend_from_slice(&buf[..n]);
                true
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => false,
            Err(_) => {
                self.closed = true;
                false
            }
        }
    }

    /// Sends PING and reads until its PONG has come and the line is quiet, the peer
    /// closes, or nothing useful came within [`STALL`].
    fn sync(&mut self) -> End {
        let pongs = count(&self.received, b"PONG\r\n");
        self.send(b"PING\r\n");
        let deadline = Instant::now() + STALL;
        loop {
            if self.closed {
                return End::Closed;
            }
            if count(&self.received, b"PONG\r\n") > pongs && self.received.ends_with(b"PONG\r\n") {
                if !self.read_for(QUIET) {
                    if self.closed {
                        return End::Closed;
                    }
                    return End::Open;
                }
                continue;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return End::Stalled;
            }
            self.read_for(left);
        }
    }
}

fn count(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .filter(|w| *w == needle)
        .count()
}

/// Runs `session` against the server at `addr`.
pub fn run(addr: SocketAddr, session: &Session) -> Outcome {
    let mut watcher = session.watcher.as_ref().map(|subs| {
        let mut conn = Conn::open(addr);
        let mut setup = WATCH_CONNECT.to_vec();
        for sub in subs {
            setup.extend_from_slice(format!("SUB {sub}\r\n").as_bytes());
        }
        conn.send(&setup);
        let end = conn.sync();
        assert_eq!(end, End::Open, "the watcher's set-up is answered");
        conn.received.clear();
        conn
    });
    let mut conn = Conn::open(addr);
    let mut pending = Vec::new();
    for op in &session.ops {
        let mut last = 0;
        for &cut in &op.cuts {
            pending.extend_from_slice(&op.bytes[last..cut]);
            conn.send(&std::mem::take(&mut pending));
            conn.read_for(Duration::from_millis(1));
            last = cut;
        }
        pending.extend_from_slice(&op.bytes[last..]);
        if op.flush {
            conn.send(&std::mem::take(&mut pending));
            conn.read_for(Duration::from_millis(1));
        }
    }
    conn.send(&pending);
    let end = conn.sync();
    let watched = watcher
        .as_mut()
        .map(|w| {
            let end = w.sync();
            assert_eq!(end, End::Open, "the watcher stays open");
            normalise(&w.received)
        })
        .unwrap_or_default();
    Outcome {
        received: normalise(&conn.received),
        end,
        watched,
    }
}

const PEDANTIC: &[u8] = b"-ERR 'Invalid Publish Subject'\r\n";
const UNKNOWN: &[u8] = b"-ERR 'Unknown Protocol Operation'\r\n";

/// Splits what a connection received into items: a line, or a whole MSG/HMSG with
/// its payload.
fn items(received: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = received;
    while !rest.is_empty() {
        let line_end = rest
            .iter()
            .position(|&b| b == b'\n')
            .map_or(rest.len(), |i| i + 1);
        let line = &rest[..line_end];
        let mut len = line_end;
        if line.starts_with(b"MSG ") || line.starts_with(b"HMSG ") {
            let size = std::str::from_utf8(line)
                .ok()
                .and_then(|l| l.split_whitespace().last())
                .and_then(|n| n.parse::<usize>().ok());
            if let Some(size) = size {
                len = (line_end + size + 2).min(rest.len());
            }
        }
        out.push(&rest[..len]);
        rest = &rest[len..];
    }
    out
}

/// A delivered message without its sid: deliveries of one message to several
/// subscriptions of a connection have the same key.
fn delivery_key(item: &[u8]) -> Option<Vec<u8>> {
    let line_end = item.iter().position(|&b| b == b'\n')?;
    let line = std::str::from_utf8(&item[..line_end]).ok()?;
    let mut words: Vec<&str> = line.split_whitespace().collect();
    if !matches!(words.first(), Some(&"MSG") | Some(&"HMSG")) || words.len() < 4 {
        return None;
    }
    words.remove(2);
    let mut key = words.join(" ").into_bytes();
    key.extend_from_slice(&item[line_end..]);
    Some(key)
}

/// Removes the documented, deliberate differences (README, "Where meshbroker differs
/// on the wire") from what a connection received; both sides get the same treatment.
///
/// - The reference sends its pedantic `Invalid Publish Subject` when it parses a
///   PUB's control line, and once more each time the payload arrives split over
///   reads; meshbroker sends it once, when the whole message is there, so none at all
///   when the payload then turns out malformed. Repeats become one, and one right
///   before the error for a malformed payload is dropped.
/// - One message delivered to several subscriptions of one connection: the
///   reference's order depends on its match cache's history, meshbroker's on the
///   subjects alone. Such runs are sorted.
pub fn without_deliberate(received: &[u8]) -> Vec<u8> {
    let mut items = items(received);
    let mut i = 0;
    while i < items.len() {
        let key = delivery_key(items[i]);
        let mut j = i + 1;
        while key.is_some() && j < items.len() && delivery_key(items[j]) == key {
            j += 1;
        }
        items[i..j].sort_unstable();
        i = j;
    }
    let mut out = Vec::with_capacity(received.len());
    for (i, item) in items.iter().enumerate() {
        let next = items.get(i + 1).copied();
        if *item == PEDANTIC && (next == Some(PEDANTIC) || next == Some(UNKNOWN)) {
            continue;
        }
        out.extend_from_slice(item);
    }
    out
}

/// What kind of difference two outcomes show: the first line where they part, with
/// digits masked, and how each connection ended. Outcomes equal but for the
/// deliberate differences have no kind.
pub fn kind(theirs: &Outcome, ours: &Outcome) -> Option<String> {
    let comparable = |o: &Outcome| Outcome {
        received: without_deliberate(&o.received),
        watched: without_deliberate(&o.watched),
        ..o.clone()
    };
    let (theirs, ours) = (&comparable(theirs), &comparable(ours));
    if theirs == ours {
        return None;
    }
    let first_difference = |a: &[u8], b: &[u8]| -> (String, String) {
        let al: Vec<&[u8]> = a.split_inclusive(|&c| c == b'\n').collect();
        let bl: Vec<&[u8]> = b.split_inclusive(|&c| c == b'\n').collect();
        let n = al.iter().zip(&bl).take_while(|(x, y)| x == y).count();
        let show = |l: Option<&&[u8]>| {
            l.map(|l| {
                String::from_utf8_lossy(&l[..l.len().min(48)])
                    .chars()
                    .map(|c| if c.is_ascii_digit() { '#' } else { c })
                    .collect::<String>()
            })
            .unwrap_or_else(|| "<end>".into())
        };
        (show(al.get(n)), show(bl.get(n)))
    };
    let (place, (t, o)) = if theirs.received != ours.received {
        ("client", first_difference(&theirs.received, &ours.received))
    } else if theirs.watched != ours.watched {
        ("watcher", first_difference(&theirs.watched, &ours.watched))
    } else {
        ("client", ("=".into(), "=".into()))
    };
    Some(format!(
        "{place}: reference {t:?} {:?} / meshbroker {o:?} {:?}",
        theirs.end, ours.end
    ))
}

/// Shrinks a session while `still_differs` holds: operations removed one by one, then
/// write cuts and flushes dropped, then the watcher's subscriptions.
pub fn minimise(mut session: Session, still_differs: impl Fn(&Session) -> bool) -> Session {
    let mut i = 0;
    while i < session.ops.len() {
        let mut smaller = session.clone();
        smaller.ops.remove(i);
        if !smaller.ops.is_empty() && still_differs(&smaller) {
            session = smaller;
        } else {
            i += 1;
        }
    }
    for i in 0..session.ops.len() {
        if !session.ops[i].cuts.is_empty() {
            let mut smaller = session.clone();
            smaller.ops[i].cuts.clear();
            if still_differs(&smaller) {
                session = smaller;
            }
        }
        if session.ops[i].flush {
            let mut smaller = session.clone();
            smaller.ops[i].flush = false;
            if still_differs(&smaller) {
                session = smaller;
            }
        }
    }
    if let Some(subs) = session.watcher.clone() {
        let mut smaller = session.clone();
        smaller.watcher = None;
        if still_differs(&smaller) {
            session = smaller;
        } else {
            let mut i = 0;
            while i < subs.len() {
                let mut smaller = session.clone();
                if let Some(w) = smaller.watcher.as_mut() {
                    if i >= w.len() {
                        break;
                    }
                    w.remove(i);
                }
                if still_differs(&smaller) {
                    session = smaller;
                } else {
                    i += 1;
                }
            }
        }
    }
    session
}
