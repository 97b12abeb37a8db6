//! A connection's outbound queue: the mailbox of bytes its writer drains.
//!
//! Many publishers append frames; one writer takes everything queued in one swap and
//! writes it with one syscall. This is a channel, not shared broker state: the lock
//! inside guards only the append/swap of a byte buffer and is never held across an
//! await or any other work (the same shape as the lock inside any MPSC channel).
//!
//! The queue is bounded in bytes: an append that would take the pending bytes (queued
//! plus being written) past the limit is refused and the connection is marked a slow
//! consumer; the publisher is never blocked. Wake-ups are deferred: a publisher appends
//! many frames, collects the queues it touched ([`FlushSet`]), and at the end of its
//! read batch flushes each one: if no one is writing to that socket, the publisher
//! writes the queued bytes itself with one non-blocking write (no task hop on the
//! delivery path, as the reference's producer-side flush); whatever does not fit is
//! left to the connection's writer task, which waits for the socket and applies the
//! write deadline.

use std::io::Write;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Poll;

use atomic_waker::AtomicWaker;

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
    max_pending: usize,
}

impl OutboundQueue {
    pub fn new(max_pending: usize) -> Self {
        OutboundQueue {
            state: Mutex::new(State::default()),
            writer: AtomicWaker::new(),
            max_pending,
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
    /// size on the wire, `payload` its headers and payload). Returns whether the caller
    /// must schedule a wake of the writer.
    pub fn push(
        &self,
        len: usize,
        payload: usize,
        write: impl FnOnce(&mut Vec<u8>),
    ) -> Result<bool, PushError> {
        let mut state = self.lock();
        if state.closed || state.slow {
            return Err(PushError::Closed);
        }
        if state.buf.len() + state.in_flight + len > self.max_pending {
            state.slow = true;
            drop(state);
            self.writer.wake();
            return Err(PushError::SlowConsumer);
        }
        write(&mut state.buf);
        state.msgs += 1;
        state.payload_bytes += payload as u64;
        Ok(!std::mem::replace(&mut state.wake_scheduled, true))
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
        self.lock().closed = true;
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

    /// The writer task finished writing what it took.
    pub fn done_writing(&self) {
        let mut state = self.lock();
        state.writing = false;
        state.in_flight = 0;
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
        if written < data.len() {
            // Put the unwritten tail back in front of what was queued meanwhile.
            data.drain(..written);
            data.extend_from_slice(&state.buf);
            std::mem::swap(&mut state.buf, &mut data);
        }
        data.clear();
        if data.capacity() <= KEEP_CAPACITY && state.scratch.capacity() == 0 {
            state.scratch = data;
        }
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
    /// A write took longer than the deadline.
    Deadline,
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
        // Flushed too: TLS and WebSocket layers may hold bytes until asked.
        let write = async {
            out.write_all(&spare).await?;
            out.flush().await
        };
        match super::runtime::timeout(deadline, write).await {
            Some(Ok(())) => {}
            Some(Err(_)) => {
                end = Drained::WriteFailed;
                break;
            }
            None => {
                end = Drained::Deadline;
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

/// The queues a publisher touched during one read batch, woken once at its end.
#[derive(Default)]
pub struct FlushSet {
    queues: Vec<Arc<dyn Wake + Send + Sync>>,
}

/// Something with an outbound queue to wake.
pub trait Wake {
    fn wake_writer(&self);
}

impl FlushSet {
    pub fn add(&mut self, target: Arc<dyn Wake + Send + Sync>) {
        self.queues.push(target);
    }

    pub fn flush(&mut self) {
        for q in self.queues.drain(..) {
            q.wake_writer();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_in_bytes_and_marks_slow() {
        let q = OutboundQueue::new(10);
        assert_eq!(q.push(6, 6, |b| b.extend_from_slice(b"abcdef")), Ok(true));
        assert_eq!(q.push(2, 2, |b| b.extend_from_slice(b"gh")), Ok(false));
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
