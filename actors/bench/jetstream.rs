//! JetStream scenarios of `meshbroker bench`: publishing with acks (one at a time, and
//! with a window of outstanding acks) and a pull consumer fetching with explicit acks.
//!
//! Each scenario creates its own file stream through `$JS.API` and deletes it after,
//! so rounds and servers start from the same empty state. Every ack is checked: a
//! publish that comes back with an error fails the scenario instead of counting.

use std::io::Write;
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{connect, sync, BenchResult, Incoming, MsgReader};
use crate::proto::encode;

/// How long a scenario may wait for a reply before it reports the server stuck.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// A connection that makes requests: one inbox subscription, one reply at a time.
struct Requester {
    stream: TcpStream,
    reader: MsgReader,
    inbox: String,
    out: Vec<u8>,
}

impl Requester {
    fn connect(addr: &str) -> BenchResult<Self> {
        let mut stream = connect(addr)?;
        stream
            .set_read_timeout(Some(REPLY_TIMEOUT))
            .map_err(|e| e.to_string())?;
        let inbox = format!("_INBOX.bench{}", fastrand::u64(..));
        let mut out = Vec::new();
        encode::write_sub(&mut out, format!("{inbox}.*").as_bytes(), None, b"1");
        stream.write_all(&out).map_err(|e| e.to_string())?;
        sync(&mut stream)?;
        let reader = MsgReader::keeping_data(stream.try_clone().map_err(|e| e.to_string())?);
        Ok(Requester {
            stream,
            reader,
            inbox,
            out,
        })
    }

    /// Publishes `data` on `subject` with this requester's reply subject and returns the
    /// reply's bytes (headers included).
    fn request(&mut self, subject: &str, data: &[u8]) -> BenchResult<Vec<u8>> {
        self.out.clear();
        let reply = format!("{}.r", self.inbox);
        encode::write_pub(
            &mut self.out,
            subject.as_bytes(),
            Some(reply.as_bytes()),
            None,
            data,
        );
        self.stream
            .write_all(&self.out)
            .map_err(|e| format!("request on {subject}: {e}"))?;
        loop {
            match self.reader.next()? {
                Incoming::Msg { data, .. } => return Ok(data.unwrap_or_default()),
                Incoming::Err(e) => return Err(format!("-ERR {e} after a request on {subject}")),
                _ => {}
            }
        }
    }

    /// A `$JS.API` request whose JSON answer must not be an error.
    /// `Value::Null` sends an empty body, as requests without parameters must be.
    fn api(&mut self, subject: &str, body: &Value) -> BenchResult<Value> {
        let body = if body.is_null() {
            String::new()
        } else {
            body.to_string()
        };
        let reply = self.request(subject, body.as_bytes())?;
        let value: Value = serde_json::from_slice(&reply).map_err(|e| {
            format!(
                "{subject} answered {:?}: {e}",
                String::from_utf8_lossy(&reply)
            )
        })?;
        if let Some(err) = value.get("error") {
            return Err(format!("{subject} failed: {err}"));
        }
        Ok(value)
    }
}

/// A file stream made for one scenario, deleted again by [`BenchStream::delete`].
struct BenchStream {
    name: String,
    subject: String,
}

impl BenchStream {
    fn create(api: &mut Requester, replicas: u32) -> BenchResult<Self> {
        let id = fastrand::u64(..);
        let stream = BenchStream {
            name: format!("BENCH_{id}"),
            subject: format!("benchjs.{id}"),
        };
        api.api(
            &format!("$JS.API.STREAM.CREATE.{}", stream.name),
            &json!({
                "name": stream.name,
                "subjects": [stream.subject],
                "storage": "file",
                "retention": "limits",
                "num_replicas": replicas,
            }),
        )?;
        Ok(stream)
    }

    fn delete(&self, api: &mut Requester) -> BenchResult<()> {
        api.api(
            &format!("$JS.API.STREAM.DELETE.{}", self.name),
            &Value::Null,
        )
        .map(drop)
    }
}

/// Whether a PubAck's bytes are an acknowledgement rather than an error.
fn check_ack(data: &[u8]) -> BenchResult<()> {
    if data.starts_with(b"{\"stream\"") || data.starts_with(b"{ \"stream\"") {
        Ok(())
    } else {
        Err(format!(
            "publish not acknowledged: {:?}",
            String::from_utf8_lossy(data)
        ))
    }
}

/// One publisher that waits for each PubAck before the next publish.
pub(super) fn publish_sync(addr: &str, msgs: u64, size: usize, replicas: u32) -> BenchResult<f64> {
    let mut client = Requester::connect(addr)?;
    let stream = BenchStream::create(&mut client, replicas)?;
    let payload = vec![b'x'; size];
    let start = Instant::now();
    for _ in 0..msgs {
        check_ack(&client.request(&stream.subject, &payload)?)?;
    }
    let rate = msgs as f64 / start.elapsed().as_secs_f64();
    stream.delete(&mut client)?;
    Ok(rate)
}

/// One publisher that keeps up to `window` PubAcks outstanding.
pub(super) fn publish_async(
    addr: &str,
    msgs: u64,
    size: usize,
    window: u64,
    replicas: u32,
) -> BenchResult<f64> {
    let mut client = Requester::connect(addr)?;
    let stream = BenchStream::create(&mut client, replicas)?;
    let rate = publish_window(addr, &stream.subject, msgs, size, window)?;
    stream.delete(&mut client)?;
    Ok(rate)
}

/// Publishes `msgs` messages to `subject` over a new connection, at most `window` of
/// them unacknowledged, and returns the rate at which they were acknowledged.
fn publish_window(
    addr: &str,
    subject: &str,
    msgs: u64,
    size: usize,
    window: u64,
) -> BenchResult<f64> {
    // A requester's connection and inbox; its reader goes to the ack-counting thread.
    let Requester {
        stream: mut publisher,
        reader: ack_reader,
        inbox,
        ..
    } = Requester::connect(addr)?;

    let acked = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicBool::new(false));
    let failure = Arc::new(Mutex::new(None::<String>));
    let reader = {
        let mut reader = ack_reader;
        let (acked, failed, failure) = (acked.clone(), failed.clone(), failure.clone());
        std::thread::spawn(move || loop {
            let outcome = match reader.next() {
                Ok(Incoming::Msg { data, .. }) => check_ack(&data.unwrap_or_default()),
                Ok(Incoming::Err(e)) => Err(format!("publisher got -ERR {e}")),
                Ok(_) => Ok(()),
                // The socket is shut down when the scenario is over.
                Err(_) if acked.load(Ordering::Relaxed) >= msgs => return,
                Err(e) => Err(e),
            };
            match outcome {
                Ok(()) => {
                    acked.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    if let Ok(mut slot) = failure.lock() {
                        *slot = Some(e);
                    }
                    failed.store(true, Ordering::Relaxed);
                    return;
                }
            }
        })
    };

    let payload = vec![b'x'; size];
    let reply = format!("{inbox}.a");
    let chunk = 64u64.min(window.max(1));
    let mut frames = Vec::new();
    for _ in 0..chunk {
        encode::write_pub(
            &mut frames,
            subject.as_bytes(),
            Some(reply.as_bytes()),
            None,
            &payload,
        );
    }
    let frame_len = frames.len() / chunk as usize;
    let start = Instant::now();
    let mut sent = 0u64;
    let wait_for = |target: u64, sent: u64| -> BenchResult<()> {
        let mut spins = 0u32;
        while sent.saturating_sub(acked.load(Ordering::Relaxed)) > target {
            if failed.load(Ordering::Relaxed) {
                let why = failure.lock().ok().and_then(|mut f| f.take());
                return Err(why.unwrap_or_else(|| "ack reader failed".into()));
            }
            spins += 1;
            if spins > 100 {
                std::thread::sleep(Duration::from_micros(20));
            } else {
                std::thread::yield_now();
            }
            if start.elapsed() > REPLY_TIMEOUT * 4 {
                return Err(format!(
                    "only {} of {sent} publishes acknowledged",
                    acked.load(Ordering::Relaxed)
                ));
            }
        }
        Ok(())
    };
    while sent < msgs {
        let room = window.saturating_sub(sent - acked.load(Ordering::Relaxed).min(sent));
        if room == 0 {
            wait_for(window - 1, sent)?;
            continue;
        }
        let n = room.min(chunk).min(msgs - sent);
        publisher
            .write_all(&frames[..frame_len * n as usize])
            .map_err(|e| format!("publish: {e}"))?;
        sent += n;
    }
    wait_for(0, sent)?;
    let rate = msgs as f64 / start.elapsed().as_secs_f64();
    let _ = publisher.shutdown(Shutdown::Both);
    let _ = reader.join();
    Ok(rate)
}

/// A pull consumer with explicit acks fetching `msgs` stored messages in batches of
/// `batch`, acking each one; done when the consumer has no ack pending. Returns
/// messages consumed per second.
pub(super) fn fetch(
    addr: &str,
    msgs: u64,
    size: usize,
    batch: u64,
    replicas: u32,
) -> BenchResult<f64> {
    let mut client = Requester::connect(addr)?;
    let stream = BenchStream::create(&mut client, replicas)?;
    publish_window(addr, &stream.subject, msgs, size, 256)?;
    let consumer = "bench";
    client.api(
        &format!("$JS.API.CONSUMER.CREATE.{}.{consumer}", stream.name),
        &json!({
            "stream_name": stream.name,
            "config": {
                "name": consumer,
                "durable_name": consumer,
                "ack_policy": "explicit",
                "deliver_policy": "all",
                "max_ack_pending": (batch * 10).max(1000),
            },
        }),
    )?;
    let next = format!("$JS.API.CONSUMER.MSG.NEXT.{}.{consumer}", stream.name);
    let pull = json!({ "batch": batch, "expires": 5_000_000_000u64 }).to_string();
    let reply = format!("{}.f", client.inbox);
    let mut acks = Vec::new();
    let mut received = 0u64;
    let start = Instant::now();
    while received < msgs {
        client.out.clear();
        encode::write_pub(
            &mut client.out,
            next.as_bytes(),
            Some(reply.as_bytes()),
            None,
            pull.as_bytes(),
        );
        client
            .stream
            .write_all(&client.out)
            .map_err(|e| format!("pull request: {e}"))?;
        let mut in_batch = 0;
        while in_batch < batch && received < msgs {
            match client.reader.next()? {
                Incoming::Msg {
                    reply: Some(ack), ..
                } => {
                    encode::write_pub(&mut acks, &ack, None, None, b"");
                    in_batch += 1;
                    received += 1;
                }
                // A status (408 at expiry): the request is over, make another one.
                Incoming::Msg { reply: None, .. } => break,
                Incoming::Err(e) => return Err(format!("consumer got -ERR {e}")),
                _ => {}
            }
        }
        client
            .stream
            .write_all(&acks)
            .map_err(|e| format!("ack: {e}"))?;
        acks.clear();
    }
    // The acks were sent without waiting; the run is over when the server has them all.
    let info = format!("$JS.API.CONSUMER.INFO.{}.{consumer}", stream.name);
    loop {
        let state = client.api(&info, &Value::Null)?;
        let pending = state.get("num_ack_pending").and_then(Value::as_u64);
        let floor = state
            .pointer("/ack_floor/stream_seq")
            .and_then(Value::as_u64);
        if pending == Some(0) && floor == Some(msgs) {
            break;
        }
        if start.elapsed() > REPLY_TIMEOUT * 4 {
            return Err(format!("acks never all applied: {state}"));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let rate = msgs as f64 / start.elapsed().as_secs_f64();
    stream.delete(&mut client)?;
    Ok(rate)
}
