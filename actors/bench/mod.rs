//! `meshbroker bench`: a load generator for any NATS server, like `nats bench`.
//!
//! It runs each scenario against `--url` and, when given, against `--compare-url` right
//! after, and prints both results and their ratio, so a comparison with the reference
//! server is made in one run on the same machine. The client speaks the protocol
//! directly over blocking sockets (one thread per connection) with this crate's
//! parser, so it is the same client whatever the server.
//!
//! Publishers stay at most a window of messages ahead of the slowest subscriber, so
//! neither server has to cut a subscriber off as a slow consumer on a busy machine.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use argh::FromArgs;

use crate::proto::{encode, Op, Parsed, Parser};

mod connections;
mod jetstream;

/// run a benchmark against a NATS server (and optionally compare with another)
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "bench")]
pub struct BenchArgs {
    /// server to measure, e.g. nats://127.0.0.1:4222
    #[argh(option, default = "String::from(\"nats://127.0.0.1:4222\")")]
    pub url: String,
    /// a second server to run the same scenarios against, for a ratio
    #[argh(option)]
    pub compare_url: Option<String>,
    /// the node subscribers connect to in the cross-node scenario (routepubsub): a node
    /// clustered with --url
    #[argh(option)]
    pub sub_url: Option<String>,
    /// the same for --compare-url
    #[argh(option)]
    pub compare_sub_url: Option<String>,
    /// label for --url in the report
    #[argh(option, default = "String::from(\"meshbroker\")")]
    pub name: String,
    /// label for --compare-url in the report
    #[argh(option, default = "String::from(\"nats-server\")")]
    pub compare_name: String,
    /// comma-separated scenarios: pub16,pub128,pubsub1,pubsub4,queue4,reqrep,oldreq,idle,
    /// storm, jspub,jspubasync,jsfetch, with --tls-ca tlspub,tlspubsub, and with --sub-url
    /// routepubsub (publisher on --url, subscriber on --sub-url) or stormws, stormroute,
    /// stormhttp (--sub-url is the WebSocket, cluster or monitoring listener), and with
    /// --creds stormjwt (a storm of JWT logins)
    #[argh(
        option,
        default = "String::from(\"pub16,pub128,pubsub1,pubsub4,queue4,reqrep\")"
    )]
    pub scenarios: String,
    /// a .creds file (user JWT and seed) for the stormjwt scenario: every connection
    /// logs in with it, the nonce signed (operator mode on both servers)
    #[argh(option)]
    pub creds: Option<std::path::PathBuf>,
    /// user and password every scenario connection logs in with (accounts and
    /// permissions on both servers; not the connection storms)
    #[argh(option)]
    pub user: Option<String>,
    /// the password of --user
    #[argh(option)]
    pub password: Option<String>,
    /// messages per throughput scenario
    #[argh(option, default = "2_000_000")]
    pub msgs: u64,
    /// round trips for the request/reply scenario
    #[argh(option, default = "20_000")]
    pub requests: u64,
    /// connections for the idle-memory and storm scenarios
    #[argh(option, default = "5000")]
    pub conns: usize,
    /// pid of the --url server (for the idle-memory scenario)
    #[argh(option)]
    pub pid: Option<u32>,
    /// pid of the --compare-url server (for the idle-memory scenario)
    #[argh(option)]
    pub compare_pid: Option<u32>,
    /// messages per JetStream scenario (the synchronous publish sends a tenth)
    #[argh(option, default = "200_000")]
    pub js_msgs: u64,
    /// outstanding acks an asynchronous JetStream publisher allows
    #[argh(option, default = "256")]
    pub js_window: u64,
    /// messages per pull request in the JetStream fetch scenario
    #[argh(option, default = "100")]
    pub js_batch: u64,
    /// replicas of the JetStream scenarios' stream (3 or 5 against clusters)
    #[argh(option, default = "1")]
    pub js_replicas: u32,
    /// how many times each scenario runs on each server (the best run counts; the
    /// idle-memory scenario runs once)
    #[argh(option, default = "3")]
    pub rounds: u32,
    /// CA certificate (PEM) that signs both servers' certificates: the tlspub and
    /// tlspubsub scenarios connect with TLS, trusting it (server name `localhost`)
    #[argh(option)]
    pub tls_ca: Option<std::path::PathBuf>,
}

pub(crate) type BenchResult<T> = Result<T, String>;

/// Where a scenario connects, and whether with TLS.
pub(crate) struct Endpoint {
    addr: String,
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl Endpoint {
    fn plain(addr: &str) -> Endpoint {
        Endpoint {
            addr: addr.to_string(),
            tls: None,
        }
    }

    fn tls(addr: &str, ca: Option<&std::path::Path>) -> BenchResult<Endpoint> {
        use rustls::pki_types::pem::PemObject;
        let ca = ca.ok_or("TLS scenarios need --tls-ca")?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca)
            .map_err(|e| format!("{}: {e}", ca.display()))?
        {
            let cert = cert.map_err(|e| format!("{}: {e}", ca.display()))?;
            roots
                .add(cert)
                .map_err(|e| format!("{}: {e}", ca.display()))?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Endpoint {
            addr: addr.to_string(),
            tls: Some(Arc::new(config)),
        })
    }
}

/// A benchmark client's connection: plain TCP, or TLS over it.
pub(crate) enum Conn {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Conn::Plain(s) => s.read(buf),
            Conn::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Conn::Plain(s) => s.write(buf),
            Conn::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Conn::Plain(s) => s.flush(),
            Conn::Tls(s) => s.flush(),
        }
    }
}

/// One measured number and whether more is better.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Measure {
    value: f64,
    higher_is_better: bool,
}

pub fn run(args: BenchArgs) -> BenchResult<()> {
    if let Some(user) = &args.user {
        let login = (user.clone(), args.password.clone().unwrap_or_default());
        let _ = LOGIN.set(login);
    }
    type Target = (String, String, Option<u32>, Option<String>);
    let targets: Vec<Target> = std::iter::once((
        args.name.clone(),
        args.url.clone(),
        args.pid,
        args.sub_url.clone(),
    ))
    .chain(args.compare_url.clone().map(|u| {
        (
            args.compare_name.clone(),
            u,
            args.compare_pid,
            args.compare_sub_url.clone(),
        )
    }))
    .collect();
    println!(
        "{:<34} {:>16} {:>16} {:>8}",
        "scenario",
        targets[0].0,
        targets.get(1).map_or("", |t| t.0.as_str()),
        "ratio"
    );
    for scenario in args
        .scenarios
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        let mut rows: Vec<Vec<(String, Measure)>> = Vec::new();
        for (_, url, pid, sub_url) in &targets {
            let addr = url_to_addr(url)?;
            let sub_addr = sub_url.as_deref().map(url_to_addr).transpose()?;
            let mut best: Option<Vec<(String, Measure)>> = None;
            // Memory is measured once, on a server that has not served load yet: a
            // later round would reuse what the first one freed and read as nothing.
            let rounds = if scenario == "idle" {
                1
            } else {
                args.rounds.max(1)
            };
            for _ in 0..rounds {
                let measured = run_scenario(scenario, &addr, sub_addr.as_deref(), &args, *pid)?;
                best = Some(match best {
                    None => measured,
                    Some(prev) => prev
                        .into_iter()
                        .zip(measured)
                        .map(|((label, a), (_, b))| {
                            let better = if a.higher_is_better {
                                a.value.max(b.value)
                            } else {
                                a.value.min(b.value)
                            };
                            (label, Measure { value: better, ..a })
                        })
                        .collect(),
                });
            }
            rows.push(best.unwrap_or_default());
        }
        for (i, (label, first)) in rows[0].iter().enumerate() {
            let second = rows.get(1).map(|r| r[i].1);
            let ratio = second.map(|s| {
                if first.higher_is_better {
                    first.value / s.value
                } else {
                    s.value / first.value
                }
            });
            println!(
                "{:<34} {:>16} {:>16} {:>8}",
                format!("{scenario} {label}"),
                fmt_num(first.value),
                second.map_or(String::new(), |s| fmt_num(s.value)),
                ratio.map_or(String::new(), |r| format!("{r:.2}x")),
            );
        }
    }
    println!("(ratio > 1 means {} is better)", targets[0].0);
    Ok(())
}

fn fmt_num(v: f64) -> String {
    if v >= 1000.0 {
        format!("{:.0}", v)
    } else {
        format!("{:.2}", v)
    }
}

fn url_to_addr(url: &str) -> BenchResult<String> {
    let rest = url
        .strip_prefix("nats://")
        .or_else(|| url.strip_prefix("tls://"))
        .unwrap_or(url);
    if rest.is_empty() || !rest.contains(':') {
        return Err(format!("{url:?} is not host:port or nats://host:port"));
    }
    Ok(rest.trim_end_matches('/').to_string())
}

fn run_scenario(
    scenario: &str,
    addr: &str,
    sub_addr: Option<&str>,
    args: &BenchArgs,
    pid: Option<u32>,
) -> BenchResult<Vec<(String, Measure)>> {
    let throughput = |v: f64| Measure {
        value: v,
        higher_is_better: true,
    };
    let lower = |v: f64| Measure {
        value: v,
        higher_is_better: false,
    };
    let plain = Endpoint::plain(addr);
    let tls = || Endpoint::tls(addr, args.tls_ca.as_deref());
    Ok(match scenario {
        "pub16" => vec![(
            "msgs/s".into(),
            throughput(pub_sub(&plain, &plain, args.msgs, 16, 0, false)?),
        )],
        "pub128" => vec![(
            "msgs/s".into(),
            throughput(pub_sub(&plain, &plain, args.msgs, 128, 0, false)?),
        )],
        "pubsub1" => vec![(
            "msgs/s".into(),
            throughput(pub_sub(&plain, &plain, args.msgs, 128, 1, false)?),
        )],
        "pubsub4" => vec![(
            "msgs/s delivered".into(),
            throughput(pub_sub(&plain, &plain, args.msgs / 2, 128, 4, false)? * 4.0),
        )],
        "queue4" => vec![(
            "msgs/s".into(),
            throughput(pub_sub(&plain, &plain, args.msgs, 128, 4, true)?),
        )],
        "routepubsub" => {
            let sub = sub_addr.ok_or("routepubsub needs --sub-url (and --compare-sub-url)")?;
            vec![(
                "msgs/s".into(),
                throughput(pub_sub(
                    &plain,
                    &Endpoint::plain(sub),
                    args.msgs,
                    128,
                    1,
                    false,
                )?),
            )]
        }
        "tlspub" => vec![(
            "msgs/s".into(),
            throughput(pub_sub(&tls()?, &tls()?, args.msgs, 128, 0, false)?),
        )],
        "tlspubsub" => vec![(
            "msgs/s".into(),
            throughput(pub_sub(&tls()?, &tls()?, args.msgs, 128, 1, false)?),
        )],
        "reqrep" => {
            let (p50, p99) = req_rep(addr, args.requests)?;
            vec![("p50 us".into(), lower(p50)), ("p99 us".into(), lower(p99))]
        }
        "oldreq" => {
            let (rate, p99) = old_style_requests(addr, args.requests / 4, 2_000)?;
            vec![
                ("req/s".into(), throughput(rate)),
                ("p99 us".into(), lower(p99)),
            ]
        }
        "jspub" => vec![(
            "msgs/s".into(),
            throughput(jetstream::publish_sync(
                addr,
                args.js_msgs / 10,
                128,
                args.js_replicas,
            )?),
        )],
        "jspubasync" => vec![(
            "msgs/s".into(),
            throughput(jetstream::publish_async(
                addr,
                args.js_msgs,
                128,
                args.js_window,
                args.js_replicas,
            )?),
        )],
        "jsfetch" => vec![(
            "msgs/s".into(),
            throughput(jetstream::fetch(
                addr,
                args.js_msgs,
                128,
                args.js_batch,
                args.js_replicas,
            )?),
        )],
        "idle" => {
            let pid = pid.ok_or("the idle scenario needs --pid (and --compare-pid)")?;
            vec![(
                "bytes/conn".into(),
                lower(connections::idle_memory(addr, args.conns, pid)?),
            )]
        }
        "storm" | "stormws" | "stormroute" | "stormhttp" | "stormjwt" => {
            use connections::Listener;
            let creds = match (scenario, &args.creds) {
                ("stormjwt", Some(path)) => Some(Arc::new(connections::Creds::read(path)?)),
                ("stormjwt", None) => return Err("stormjwt needs --creds FILE".into()),
                _ => None,
            };
            let (kind, at) = match scenario {
                "storm" => (Listener::Client, Some(addr)),
                "stormjwt" => (Listener::Jwt(creds.clone().ok_or("creds")?), Some(addr)),
                "stormws" => (Listener::WebSocket, sub_addr),
                "stormroute" => (Listener::Route, sub_addr),
                _ => (Listener::Monitor, sub_addr),
            };
            let at = at.ok_or(
                "this storm needs the listener's address in --sub-url (and --compare-sub-url)",
            )?;
            vec![(
                "conns/s".into(),
                throughput(connections::storm(at, args.conns, kind)?),
            )]
        }
        other => return Err(format!("unknown scenario {other:?}")),
    })
}

/// A connected, CONNECTed and PONGed client socket.
pub(crate) fn connect(addr: &str) -> BenchResult<TcpStream> {
    match connect_to(&Endpoint::plain(addr))? {
        Conn::Plain(s) => Ok(s),
        Conn::Tls(_) => Err("a plain endpoint gave a TLS connection".into()),
    }
}

/// The user and password of `--user` / `--password`, set once at the start of a run.
static LOGIN: std::sync::OnceLock<(String, String)> = std::sync::OnceLock::new();

/// Connects to `endpoint`: INFO, the TLS handshake if it wants one, CONNECT, PING.
pub(crate) fn connect_to(endpoint: &Endpoint) -> BenchResult<Conn> {
    let addr = &endpoint.addr;
    let stream = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    let _ = stream.set_nodelay(true);
    // Byte by byte up to the end of INFO: nothing the TLS session needs is consumed.
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while !line.ends_with(b"\r\n") {
        match (&stream).read(&mut byte) {
            Ok(1) => line.push(byte[0]),
            Ok(_) => return Err(format!("{addr} closed before INFO")),
            Err(e) => return Err(e.to_string()),
        }
    }
    if !line.starts_with(b"INFO") {
        return Err(format!(
            "expected INFO from {addr}, got {:?}",
            String::from_utf8_lossy(&line)
        ));
    }
    let mut s = match &endpoint.tls {
        None => Conn::Plain(stream),
        Some(config) => {
            let name =
                rustls::pki_types::ServerName::try_from("localhost").map_err(|e| e.to_string())?;
            let session =
                rustls::ClientConnection::new(config.clone(), name).map_err(|e| e.to_string())?;
            Conn::Tls(Box::new(rustls::StreamOwned::new(session, stream)))
        }
    };
    let mut line = String::new();
    let mut connect = serde_json::json!({
        "verbose": false, "pedantic": false, "headers": true, "no_responders": true,
        "protocol": 1, "name": "bench",
    });
    if let Some((user, pass)) = LOGIN.get() {
        connect["user"] = user.as_str().into();
        connect["pass"] = pass.as_str().into();
    }
    s.write_all(format!("CONNECT {connect}\r\nPING\r\n").as_bytes())
        .map_err(|e| e.to_string())?;
    let mut reader = BufReader::new(&mut s);
    loop {
        line.clear();
        if reader.read_line(&mut line).map_err(|e| e.to_string())? == 0 {
            return Err("server closed during CONNECT".into());
        }
        if line.starts_with("PONG") {
            break;
        }
        if line.starts_with("-ERR") {
            return Err(format!("server refused CONNECT: {}", line.trim()));
        }
    }
    // What may follow the PONG here is the server's second INFO; it needs no answer.
    Ok(s)
}

/// Sends PING and reads until PONG, discarding anything else.
pub(crate) fn sync(stream: &mut (impl Read + Write)) -> BenchResult<()> {
    stream.write_all(encode::PING).map_err(|e| e.to_string())?;
    let mut reader = MsgReader::new(stream);
    loop {
        match reader.next()? {
            Incoming::Pong => return Ok(()),
            Incoming::Err(e) => return Err(e),
            _ => {}
        }
    }
}

pub(crate) enum Incoming {
    /// A message; `data` (headers and payload) only from a reader made to keep it.
    Msg {
        reply: Option<Vec<u8>>,
        data: Option<Vec<u8>>,
    },
    Pong,
    Ping,
    Err(String),
    Other,
}

/// Reads server operations from a socket with the crate's parser.
pub(crate) struct MsgReader<S: Read + Write = TcpStream> {
    stream: S,
    keep_data: bool,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    parser: Parser,
}

impl<S: Read + Write> MsgReader<S> {
    pub(crate) fn new(stream: S) -> Self {
        MsgReader {
            stream,
            keep_data: false,
            buf: vec![0; 256 * 1024],
            start: 0,
            end: 0,
            parser: Parser::new(64 * 1024, 64 * 1024 * 1024),
        }
    }

    /// A reader that hands out each message's bytes, for clients that read replies.
    pub(crate) fn keeping_data(stream: S) -> Self {
        MsgReader {
            keep_data: true,
            ..MsgReader::new(stream)
        }
    }

    pub(crate) fn next(&mut self) -> BenchResult<Incoming> {
        loop {
            match self
                .parser
                .parse(&self.buf[self.start..self.end])
                .map_err(|e| format!("bad bytes from server: {e}"))?
            {
                Parsed::Op(op, n) => {
                    let incoming = match op {
                        Op::Msg { reply, data, .. } => Incoming::Msg {
                            reply: reply.map(<[u8]>::to_vec),
                            data: self.keep_data.then(|| data.to_vec()),
                        },
                        Op::Pong => Incoming::Pong,
                        Op::Ping => Incoming::Ping,
                        Op::Err(e) => Incoming::Err(String::from_utf8_lossy(e).into_owned()),
                        _ => Incoming::Other,
                    };
                    self.start += n;
                    if let Incoming::Ping = incoming {
                        self.stream
                            .write_all(encode::PONG)
                            .map_err(|e| e.to_string())?;
                        continue;
                    }
                    return Ok(incoming);
                }
                Parsed::Incomplete { need } => {
                    self.buf.copy_within(self.start..self.end, 0);
                    self.end -= self.start;
                    self.start = 0;
                    if need > self.buf.len() {
                        self.buf.resize(need, 0);
                    }
                    let n = self
                        .stream
                        .read(&mut self.buf[self.end..])
                        .map_err(|e| e.to_string())?;
                    if n == 0 {
                        return Err("server closed the connection".into());
                    }
                    self.end += n;
                }
            }
        }
    }
}

/// One publisher and `subs` subscribers (a queue group when `queue`), `msgs` messages
/// of `size` bytes. Returns messages per second published and fully delivered.
fn pub_sub(
    endpoint: &Endpoint,
    sub_endpoint: &Endpoint,
    msgs: u64,
    size: usize,
    subs: usize,
    queue: bool,
) -> BenchResult<f64> {
    let subject = format!("bench.{}", fastrand::u64(..));
    let received: Arc<Vec<AtomicU64>> = Arc::new((0..subs).map(|_| AtomicU64::new(0)).collect());
    let mut handles = Vec::new();
    for i in 0..subs {
        let mut stream = connect_to(sub_endpoint)?;
        let mut frame = Vec::new();
        let q = queue.then_some(&b"workers"[..]);
        encode::write_sub(&mut frame, subject.as_bytes(), q, b"1");
        stream.write_all(&frame).map_err(|e| e.to_string())?;
        sync(&mut stream)?;
        let received = received.clone();
        handles.push(std::thread::spawn(move || -> BenchResult<()> {
            let mut reader = MsgReader::new(stream);
            loop {
                match reader.next()? {
                    Incoming::Msg { .. } => {
                        received[i].fetch_add(1, Ordering::Relaxed);
                    }
                    Incoming::Err(e) => return Err(format!("subscriber got -ERR {e}")),
                    _ => {}
                }
            }
        }));
    }
    let mut publisher = connect_to(endpoint)?;
    let payload = vec![b'x'; size];
    let batch = 256u64;
    let mut frames = Vec::new();
    for _ in 0..batch {
        encode::write_pub(&mut frames, subject.as_bytes(), None, None, &payload);
    }
    // How far the publisher may run ahead of the slowest subscriber.
    let window = (16 * 1024 * 1024 / (size as u64 + 64)).max(batch * 4);
    // Subscribers on another node: their interest crosses the route after their
    // PONG; probe until each has received one, then count from there.
    let mut baseline = vec![0u64; subs];
    if sub_endpoint.addr != endpoint.addr && subs > 0 {
        let mut probe = Vec::new();
        encode::write_pub(&mut probe, subject.as_bytes(), None, None, &payload);
        let deadline = Instant::now() + Duration::from_secs(10);
        while received.iter().any(|r| r.load(Ordering::Relaxed) == 0) {
            if Instant::now() > deadline {
                return Err("the subscribers' interest never reached the publisher's node".into());
            }
            publisher.write_all(&probe).map_err(|e| e.to_string())?;
            std::thread::sleep(Duration::from_millis(10));
        }
        sync(&mut publisher)?;
        std::thread::sleep(Duration::from_millis(100));
        for (b, r) in baseline.iter_mut().zip(received.iter()) {
            *b = r.load(Ordering::Relaxed);
        }
    }
    let delivered = |received: &[AtomicU64]| -> u64 {
        let counts = received
            .iter()
            .zip(&baseline)
            .map(|(r, b)| r.load(Ordering::Relaxed).saturating_sub(*b));
        if queue {
            counts.sum()
        } else {
            counts.min().unwrap_or(u64::MAX)
        }
    };
    let start = Instant::now();
    let mut sent = 0;
    while sent < msgs {
        let n = batch.min(msgs - sent);
        let bytes = frames.len() / batch as usize * n as usize;
        publisher
            .write_all(&frames[..bytes])
            .map_err(|e| format!("publish: {e}"))?;
        sent += n;
        if subs > 0 {
            let mut spins = 0u32;
            while sent.saturating_sub(delivered(&received)) > window {
                spins += 1;
                if spins > 100 {
                    std::thread::sleep(Duration::from_micros(50));
                } else {
                    std::thread::yield_now();
                }
                if start.elapsed() > Duration::from_secs(120) {
                    return Err("subscribers stopped receiving".into());
                }
            }
        }
    }
    sync(&mut publisher)?;
    if subs > 0 {
        while delivered(&received) < msgs {
            if handles.iter().any(|h| h.is_finished()) {
                break;
            }
            if start.elapsed() > Duration::from_secs(120) {
                return Err(format!(
                    "only {} of {msgs} messages delivered",
                    delivered(&received)
                ));
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    if subs > 0 && delivered(&received) < msgs {
        for h in handles {
            if let Ok(Err(e)) = h.join() {
                return Err(e);
            }
        }
        return Err("a subscriber stopped early".into());
    }
    // Subscriber threads end when their sockets close with this function's return.
    Ok(msgs as f64 / elapsed)
}

/// Starts a responder that answers every request with `pong`; returns its subject.
fn spawn_responder(addr: &str) -> BenchResult<String> {
    let subject = format!("bench.svc.{}", fastrand::u64(..));
    let mut responder = connect(addr)?;
    let mut frame = Vec::new();
    encode::write_sub(&mut frame, subject.as_bytes(), None, b"1");
    responder.write_all(&frame).map_err(|e| e.to_string())?;
    sync(&mut responder)?;
    let mut writer = responder.try_clone().map_err(|e| e.to_string())?;
    std::thread::spawn(move || -> BenchResult<()> {
        let mut reader = MsgReader::new(responder);
        let mut out = Vec::new();
        loop {
            if let Incoming::Msg {
                reply: Some(reply), ..
            } = reader.next()?
            {
                out.clear();
                encode::write_pub(&mut out, &reply, None, None, b"pong");
                writer.write_all(&out).map_err(|e| e.to_string())?;
            }
        }
    });
    Ok(subject)
}

/// Reads until the next message (the reply), failing on `-ERR`.
fn wait_reply(reader: &mut MsgReader) -> BenchResult<()> {
    loop {
        match reader.next()? {
            Incoming::Msg { .. } => return Ok(()),
            Incoming::Err(e) => return Err(format!("requester got -ERR {e}")),
            _ => {}
        }
    }
}

/// The `p` quantile of `samples` (sorted in place).
fn percentile(samples: &mut [f64], p: f64) -> f64 {
    samples.sort_by(f64::total_cmp);
    let at = ((samples.len() as f64 * p) as usize).min(samples.len().saturating_sub(1));
    samples.get(at).copied().unwrap_or(f64::NAN)
}

/// Sequential request/reply round trips; returns (p50, p99) in microseconds.
fn req_rep(addr: &str, requests: u64) -> BenchResult<(f64, f64)> {
    let subject = spawn_responder(addr)?;
    let mut requester = connect(addr)?;
    let inbox = format!("_INBOX.{}", fastrand::u64(..));
    let mut frame = Vec::new();
    encode::write_sub(&mut frame, format!("{inbox}.*").as_bytes(), None, b"1");
    requester.write_all(&frame).map_err(|e| e.to_string())?;
    sync(&mut requester)?;
    let mut reader = MsgReader::new(requester.try_clone().map_err(|e| e.to_string())?);
    let mut samples = Vec::with_capacity(requests as usize);
    let mut out = Vec::new();
    for i in 0..requests {
        out.clear();
        let reply = format!("{inbox}.{i}");
        encode::write_pub(
            &mut out,
            subject.as_bytes(),
            Some(reply.as_bytes()),
            None,
            b"ping",
        );
        let start = Instant::now();
        requester.write_all(&out).map_err(|e| e.to_string())?;
        wait_reply(&mut reader)?;
        samples.push(start.elapsed().as_secs_f64() * 1e6);
    }
    Ok((
        percentile(&mut samples, 0.50),
        percentile(&mut samples, 0.99),
    ))
}

/// Requests the old way, a new inbox subscription per request (SUB, PUB, reply,
/// UNSUB), with `background` other inboxes pending: what the subject index pays for
/// subscription churn. Returns (requests per second, p99 in microseconds).
fn old_style_requests(addr: &str, requests: u64, background: usize) -> BenchResult<(f64, f64)> {
    let subject = spawn_responder(addr)?;
    let mut requester = connect(addr)?;
    let inbox = format!("_INBOX.{}", fastrand::u64(..));
    let mut frames = Vec::new();
    for i in 0..background {
        encode::write_sub(
            &mut frames,
            format!("{inbox}.idle{i}").as_bytes(),
            None,
            format!("b{i}").as_bytes(),
        );
    }
    requester.write_all(&frames).map_err(|e| e.to_string())?;
    sync(&mut requester)?;
    let mut reader = MsgReader::new(requester.try_clone().map_err(|e| e.to_string())?);
    let mut samples = Vec::with_capacity(requests as usize);
    let mut out = Vec::new();
    let started = Instant::now();
    for i in 0..requests {
        out.clear();
        let reply = format!("{inbox}.{i}");
        encode::write_sub(&mut out, reply.as_bytes(), None, b"r");
        encode::write_pub(
            &mut out,
            subject.as_bytes(),
            Some(reply.as_bytes()),
            None,
            b"ping",
        );
        let start = Instant::now();
        requester.write_all(&out).map_err(|e| e.to_string())?;
        wait_reply(&mut reader)?;
        requester
            .write_all(b"UNSUB r\r\n")
            .map_err(|e| e.to_string())?;
        samples.push(start.elapsed().as_secs_f64() * 1e6);
    }
    let rate = requests as f64 / started.elapsed().as_secs_f64();
    Ok((rate, percentile(&mut samples, 0.99)))
}

pub(crate) fn rss(pid: u32) -> BenchResult<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("cannot read /proc/{pid}/status: {e}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .ok_or_else(|| format!("no VmRSS for pid {pid}"))
}
