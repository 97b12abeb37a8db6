//! A connection's outbound queue: the mailbox of bytes its writer drains.
//!
//! Many publishers append frames; one writer takes everything queued in one swap and
//! writes it with one syscall. This is a channel, not shared broker state: the lock
//! inside guards only the append/swap of a byte buffer and is never held across an
//! await or any other work (the same shape as the lock inside any MPSC channel).
//!
//! The queue is bounded in bytes: an append that would take the pending bytes (queued
//! plus being written) past the limit is refused and the connection is marked a slow
//! consumer. Before that, a queue past three quarters of its bound is *stalled*: a
//! client publishing to it waits a few milliseconds at the end of its read batch (at
//! most [`STALL_TOTAL`] per batch) for the writer to bring it back under, as the
//! reference's producer stall does, so a subscriber that pauses for a moment slows
//! the publisher (whose socket then fills, which TCP pushes back to its sender) instead
//! of losing its connection. Appends themselves never block. Wake-ups are deferred: a publisher appends
//! many frames, collects the queues it touched ([`FlushSet`]), and at the end of its
//! read batch flushes each one: if no one is writing to that socket, the publisher
//! writes the queued bytes itself with one non-blocking write (no task hop on the
//! delivery path, as the reference's producer-side flush); whatever does not fit is
//! left to the connection's writer task, which waits for the socket and applies the
//! write deadline.

use std::io::Write;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Poll;
use std::time::Duration;

use atomic_waker::AtomicWaker;
use event_listener::Event;

/// The shortest wait of a publisher at a stalled queue (the reference's
/// `stallClientMinDuration`), and the wait at a queue already at its bound.
pub const STALL_MIN: Duration = Duration::from_millis(2);
pub const STALL_MAX: Duration = Duration::from_millis(5);
/// The most a publisher waits at stalled queues per read batch (`stallTotalAllowed`).
pub const STALL_TOTAL: Duration = Duration::from_millis(10);

/// The writer reports progress (and may release a stall) after each chunk this size.
const WRITE_CHUNK: usize = 256 * 1024;

/// Why an append was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushError {
    /// Over the byte bound: the connection has just become a slow consumer (reported
    /// once, to the appender that crossed the bound).
    SlowConsumer,
    /// The connection is closing or already a slow consumer; nothing more is written.
    Closed,
}

#[derive(Default)]
struct State {
    buf: Vec<u8>,
    /// Bytes the writer has taken and not finished writing.
    in_flight: usize,
    closed: bool,
    slow: bool,
    /// Set by the first append after a take: that appender schedules the wake. Kept
    /// under the lock with the buffer, so "data queued" and "a wake is due" never
    /// disagree (a flag outside the lock can lose a wake-up).
    wake_scheduled: bool,
    /// Someone (the writer task, or a publisher flushing inline) is writing taken
    /// bytes to the socket; nobody else may until it is done.
    writing: bool,
    /// Past three quarters of the bound: publishers wait at [`OutboundQueue::stall`].
    stalled: bool,
    /// Messages and payload bytes queued for the client since it connected (kept
    /// under the lock the append takes anyway).
    msgs: u64,
    payload_bytes: u64,
    /// An empty buffer kept for the next swap, so steady traffic does not allocate.
    scratch: Vec<u8>,
}

/// Buffers larger than this are freed rather than kept for reuse.
const KEEP_CAPACITY: usize = 64 * 1024;

pub struct OutboundQueue {
    state: Mutex<State>,
    writer: AtomicWaker,
    /// Notified when a stall ends (the queue drained under the mark, or closed).
    unstalled: Event,
    max_pending: usize,
    /// Pending bytes above which the queue is stalled.
    stall_at: usize,
}

/// An append that was queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pushed {
    /// The caller must schedule a wake of the writer.
    pub wake: bool,
    /// The queue is stalled: a client publisher should wait at it ([`FlushSet::stall`]).
    pub stalled: bool,
}

impl OutboundQueue {
    pub fn new(max_pending: usize) -> Self {
        OutboundQueue {
            state: Mutex::new(State::default()),
            writer: AtomicWaker::new(),
            unstalled: Event::new(),
            max_pending,
            stall_at: max_pending / 4 * 3,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the buffer inconsistent in a
        // way that matters more than losing the connection; keep serving.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Appends a message that `write` produces, if it fits in the bound (`len` is its
    /// size on the wire, `payload` its headers and payload).
    pub fn push(
        &self,
        len: usize,
        payload: usize,
        write: impl FnOnce(&mut Vec<u8>),
    ) -> Result<Pushed, PushError> {
        let mut state = self.lock();
        if state.closed || state.slow {
            return Err(PushError::Closed);
        }
        let pending = state.buf.len() + state.in_flight + len;
        if pending > self.max_pending {
            state.slow = true;
            drop(state);
            self.writer.wake();
            self.unstalled.notify(usize::MAX);
            return Err(PushError::SlowConsumer);
        }
        write(&mut state.buf);
        state.msgs += 1;
        state.payload_bytes += payload as u64;
        if pending > self.stall_at {
            state.stalled = true;
        }
        Ok(Pushed {
            wake: !std::mem::replace(&mut state.wake_scheduled, true),
            stalled: state.stalled,
        })
    }

    /// Ends a stall once the pending bytes are back under the mark (or when the
    /// writer wrote everything it took: it is keeping up). Under the lock.
    fn release_stall(&self, state: &mut State, wrote_all: bool) {
        if state.stalled
            && (wrote_all || state.buf.len() + state.in_flight <= self.stall_at || state.closed)
        {
            state.stalled = false;
            self.unstalled.notify(usize::MAX);
        }
    }

    /// Waits until the queue is no longer stalled, for at most `limit`; returns how
    /// long it waited. A publisher calls this (through [`FlushSet::wait_stalled`])
    /// after flushing, never while appending.
    pub async fn stall(&self, limit: Duration) -> Duration {
        let start = super::runtime::now();
        let wait = async {
            loop {
                let listener = self.unstalled.listen();
                if !self.lock().stalled {
                    return;
                }
                listener.await;
            }
        };
        super::runtime::timeout(limit, wait).await;
        super::runtime::now().duration_since(start)
    }

    /// The bound in bytes.
    pub fn max_pending(&self) -> usize {
        self.max_pending
    }

    /// Whether publishers would wait at this queue now.
    pub fn is_stalled(&self) -> bool {
        self.lock().stalled
    }

    /// The wait a publisher owes this queue: longer once it is at its bound.
    pub fn stall_limit(&self) -> Duration {
        let state = self.lock();
        if state.buf.len() + state.in_flight >= self.max_pending / 100 * 99 {
            STALL_MAX
        } else {
            STALL_MIN
        }
    }

    /// Messages and payload bytes queued for the client so far.
    pub fn delivered(&self) -> (u64, u64) {
        let state = self.lock();
        (state.msgs, state.payload_bytes)
    }

    /// Appends a frame produced by the connection itself (replies, errors, INFO);
    /// these are never refused for the bound, only when closed.
    pub fn push_control(&self, write: impl FnOnce(&mut Vec<u8>)) -> Result<bool, PushError> {
        let mut state = self.lock();
        if state.closed {
            return Err(PushError::Closed);
        }
        let before = state.buf.len();
        write(&mut state.buf);
        if state.buf.len() == before {
            // Nothing queued: no wake is due (a wake scheduled for nothing would
            // never be taken, and every later append would count on it).
            return Ok(false);
        }
        Ok(!std::mem::replace(&mut state.wake_scheduled, true))
    }

    /// Wakes the writer now.
    pub fn wake(&self) {
        self.writer.wake();
    }

    /// No more appends; the writer drains what is queued and stops.
    pub fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        self.release_stall(&mut state, false);
        drop(state);
        self.writer.wake();
    }

    pub fn is_slow(&self) -> bool {
        self.lock().slow
    }

    /// Bytes queued and in flight.
    pub fn pending(&self) -> usize {
        let state = self.lock();
        state.buf.len() + state.in_flight
    }

    /// Waits for queued bytes and swaps them into `spare` (which must be empty); the
    /// writer then owns the socket until [`Self::done_writing`]. `false`: the queue is
    /// closed and drained (or the connection is a slow consumer); the writer stops.
    pub async fn take(&self, spare: &mut Vec<u8>) -> bool {
        std::future::poll_fn(|cx| {
            if let Some(taken) = self.try_take(spare) {
                return Poll::Ready(taken);
            }
            self.writer.register(cx.waker());
            match self.try_take(spare) {
                Some(taken) => Poll::Ready(taken),
                None => Poll::Pending,
            }
        })
        .await
    }

    fn try_take(&self, spare: &mut Vec<u8>) -> Option<bool> {
        let mut state = self.lock();
        if state.slow {
            // A slow consumer's backlog is dropped, not written.
            state.buf = Vec::new();
            return Some(false);
        }
        if state.writing {
            // A publisher is writing inline; it wakes us when it is done.
            return None;
        }
        if !state.buf.is_empty() {
            std::mem::swap(&mut state.buf, spare);
            state.in_flight = spare.len();
            state.wake_scheduled = false;
            state.writing = true;
            return Some(true);
        }
        if state.closed {
            return Some(false);
        }
        None
    }

    /// The writer task wrote `n` more bytes of what it took (it keeps writing).
    pub fn wrote(&self, n: usize) {
        let mut state = self.lock();
        state.in_flight = state.in_flight.saturating_sub(n);
        self.release_stall(&mut state, false);
    }

    /// The writer task finished writing what it took.
    pub fn done_writing(&self) {
        let mut state = self.lock();
        state.writing = false;
        state.in_flight = 0;
        self.release_stall(&mut state, true);
    }

    /// Writes what is queued straight to `socket` (non-blocking) when nobody else is
    /// writing; hands the rest, or the whole job, to the writer task.
    pub fn flush_inline(&self, socket: &std::net::TcpStream) {
        let mut data = {
            let mut state = self.lock();
            if state.writing || state.buf.is_empty() || state.slow || state.closed {
                drop(state);
                self.writer.wake();
                return;
            }
            state.writing = true;
            state.wake_scheduled = false;
            let scratch = std::mem::take(&mut state.scratch);
            let data = std::mem::replace(&mut state.buf, scratch);
            state.in_flight = data.len();
            data
        };
        // WouldBlock and real errors alike leave the bytes to the writer task, which
        // waits for the socket, applies the deadline and reports failures.
        let written = (&*socket).write(&data).unwrap_or(0);
        let mut state = self.lock();
        state.writing = false;
        state.in_flight = 0;
        let wrote_all = written == data.len();
        if written < data.len() {
            // Put the unwritten tail back in front of what was queued meanwhile.
            data.drain(..written);
            data.extend_from_slice(&state.buf);
            std::mem::swap(&mut state.buf, &mut data);
        }
        data.clear();
        if data.capacity() <= KEEP_CAPACITY {
            if state.buf.is_empty() && state.buf.capacity() == 0 {
                // Nothing was queued meanwhile: the written buffer takes the queue's
                // place, so an idle connection keeps one buffer, not two.
                state.buf = data;
            } else if state.scratch.capacity() == 0 {
                state.scratch = data;
            }
        }
        self.release_stall(&mut state, wrote_all);
        let handoff = !state.buf.is_empty() || state.closed;
        drop(state);
        if handoff {
            self.writer.wake();
        }
    }
}

/// Why [`drain`] stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drained {
    /// The queue closed and everything in it was written (or it was a slow consumer).
    Closed,
    WriteFailed,
    /// A write took longer than the deadline, with this many bytes (in this many
    /// chunks) taken for it.
    Deadline {
        bytes: usize,
        chunks: usize,
    },
}

/// The writer task of a connection: drains `queue` into `out` (the socket, or the
/// write half of its TLS or WebSocket session) until the queue closes or a write
/// fails, then closes `out` and shuts the socket down (which also ends a read the
/// connection's actor may be waiting on).
pub async fn drain(
    out: impl futures_lite::AsyncWrite + Unpin,
    socket: super::runtime::TcpStream,
    queue: &OutboundQueue,
    deadline: std::time::Duration,
) -> Drained {
    use futures_lite::AsyncWriteExt;
    let mut out = out;
    let mut spare = Vec::new();
    let mut end = Drained::Closed;
    while queue.take(&mut spare).await {
        // In chunks, each reported, so that a stall ends as soon as the queue is back
        // under its mark rather than when a large backlog is all written. Flushed too:
        // TLS and WebSocket layers may hold bytes until asked.
        let write = async {
            let mut chunks = spare.chunks(WRITE_CHUNK).peekable();
            while let Some(chunk) = chunks.next() {
                out.write_all(chunk).await?;
                if chunks.peek().is_some() {
                    queue.wrote(chunk.len());
                }
            }
            out.flush().await
        };
        match super::runtime::timeout(deadline, write).await {
            Some(Ok(())) => {}
            Some(Err(_)) => {
                end = Drained::WriteFailed;
                break;
            }
            None => {
                end = Drained::Deadline {
                    bytes: spare.len(),
                    chunks: spare.len().div_ceil(WRITE_CHUNK),
                };
                break;
            }
        }
        queue.done_writing();
        spare.clear();
        if spare.capacity() > KEEP_CAPACITY {
            spare = Vec::new();
        }
    }
    let _ = super::runtime::timeout(deadline, out.close()).await;
    let _ = socket.shutdown(std::net::Shutdown::Both);
    end
}

/// The queues a publisher touched during one read batch, woken once at its end, and
/// those it found stalled.
#[derive(Default)]
pub struct FlushSet {
    queues: Vec<Arc<dyn Wake + Send + Sync>>,
    stalled: Vec<Arc<dyn Wake + Send + Sync>>,
}

/// What a publisher's wait at stalled queues took.
#[derive(Debug, Clone, Copy, Default)]
pub struct Stalled {
    /// Queues waited at.
    pub waits: u64,
    pub spent: Duration,
    /// A queue was still stalled when its wait ran out: its subscriber is not reading.
    pub unrelieved: bool,
}

/// Something with an outbound queue to wake.
pub trait Wake {
    fn wake_writer(&self);
    fn outbound(&self) -> &OutboundQueue;
}

impl FlushSet {
    pub fn add(&mut self, target: Arc<dyn Wake + Send + Sync>) {
        self.queues.push(target);
    }

    /// Notes a queue that was stalled when this publisher appended to it.
    pub fn stall(&mut self, target: Arc<dyn Wake + Send + Sync>) {
        let seen = self
            .stalled
            .iter()
            .any(|q| std::ptr::eq(q.outbound(), target.outbound()));
        if !seen {
            self.stalled.push(target);
        }
    }

    pub fn flush(&mut self) {
        for q in self.queues.drain(..) {
            q.wake_writer();
        }
    }

    /// Whether a queue this publisher appended to was stalled.
    pub fn has_stalled(&self) -> bool {
        !self.stalled.is_empty()
    }

    /// Waits at the stalled queues (after [`Self::flush`]): at each one still stalled
    /// until it drains under its mark or its limit passes, all of them together for
    /// at most `budget`. Returns the time spent. Only client publishers wait; routes
    /// and internal actors drop the list.
    pub async fn wait_stalled(&mut self, budget: Duration) -> Stalled {
        let mut stalled = Stalled::default();
        for q in self.stalled.drain(..) {
            let queue = q.outbound();
            if stalled.spent >= budget {
                break;
            }
            if !queue.is_stalled() {
                continue;
            }
            let limit = queue.stall_limit().min(budget - stalled.spent);
            stalled.spent += queue.stall(limit).await;
            stalled.waits += 1;
            stalled.unrelieved |= queue.is_stalled();
        }
        self.stalled.clear();
        stalled
    }

    /// Forgets the stalled queues (for publishers that never wait).
    pub fn forget_stalled(&mut self) {
        self.stalled.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_in_bytes_and_marks_slow() {
        let q = OutboundQueue::new(10);
        let pushed = |wake, stalled| Ok(Pushed { wake, stalled });
        assert_eq!(
            q.push(6, 6, |b| b.extend_from_slice(b"abcdef")),
            pushed(true, false)
        );
        assert_eq!(
            q.push(2, 2, |b| b.extend_from_slice(b"gh")),
            pushed(false, true)
        );
        assert_eq!(
            q.push(3, 3, |b| b.extend_from_slice(b"ijk")),
            Err(PushError::SlowConsumer)
        );
        assert!(q.is_slow());
        assert_eq!(q.push(1, 1, |b| b.push(b'x')), Err(PushError::Closed));
        assert_eq!(q.pending(), 8);
        assert_eq!(q.delivered(), (2, 8), "refused appends are not counted");
        let mut spare = Vec::new();
        assert!(!futures_lite::future::block_on(q.take(&mut spare)));
        assert!(spare.is_empty());
    }

    #[test]
    fn an_empty_control_append_schedules_no_wake() {
        let q = OutboundQueue::new(100);
        assert_eq!(q.push_control(|_| {}), Ok(false));
        // The next real append is the one that must wake the writer.
        assert_eq!(
            q.push_control(|b| b.extend_from_slice(b"PING\r\n")),
            Ok(true)
        );
    }

    #[test]
    fn a_queue_past_three_quarters_stalls_until_the_writer_brings_it_under() {
        let q = OutboundQueue::new(100);
        let fill = |q: &OutboundQueue, n: usize| {
            q.push(n, n, |b| b.extend(std::iter::repeat_n(b'x', n)))
                .expect("fits")
        };
        assert!(!fill(&q, 75).stalled, "at the mark is not past it");
        assert!(fill(&q, 1).stalled);
        assert!(q.is_stalled());
        assert_eq!(q.stall_limit(), STALL_MIN);
        let mut spare = Vec::new();
        assert!(q.try_take(&mut spare).is_some());
        // Written in part: still over the mark, then under it.
        q.wrote(0);
        assert!(q.is_stalled());
        q.wrote(10);
        assert!(!q.is_stalled());
        // A publisher waiting at a stalled queue is released by the writer's progress,
        // long before its limit.
        assert!(fill(&q, 10).stalled, "66 in flight + 10 queued");
        let q = Arc::new(q);
        let writer = {
            let q = q.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(20));
                q.done_writing();
            })
        };
        let waited = futures_lite::future::block_on(q.stall(Duration::from_secs(10)));
        writer.join().expect("writer");
        assert!(!q.is_stalled());
        assert!(waited < Duration::from_secs(5), "waited {waited:?}");
        // With nothing to wait for, a stall returns at once.
        let waited = futures_lite::future::block_on(q.stall(Duration::from_secs(10)));
        assert!(waited < Duration::from_secs(1));
    }

    #[test]
    fn a_stall_ends_at_its_limit_and_when_the_queue_closes() {
        let q = OutboundQueue::new(100);
        q.push(99, 99, |b| b.extend(std::iter::repeat_n(b'x', 99)))
            .expect("fits");
        assert_eq!(q.stall_limit(), STALL_MAX, "at the bound");
        let waited = futures_lite::future::block_on(q.stall(Duration::from_millis(30)));
        assert!(waited >= Duration::from_millis(30), "waited {waited:?}");
        assert!(q.is_stalled());
        q.close();
        assert!(!q.is_stalled());
    }

    #[test]
    fn in_flight_bytes_count_against_the_bound() {
        let q = OutboundQueue::new(10);
        q.push(8, 8, |b| b.extend_from_slice(b"12345678")).unwrap();
        let mut spare = Vec::new();
        assert!(q.try_take(&mut spare).is_some());
        // The writer has not finished: 8 bytes are still pending.
        assert_eq!(
            q.push(3, 3, |b| b.extend_from_slice(b"abc")),
            Err(PushError::SlowConsumer)
        );
    }
}
