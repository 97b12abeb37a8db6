//! A connection actor's mailbox: many senders, one receiver, unbounded.
//!
//! Every client connection has one, so its size is part of what an idle connection
//! costs: `async-channel` spends ~800 bytes per channel (cache-padded queue ends, event
//! listeners), this one a lock, an empty queue and a waker (~80 bytes). Messages to a
//! connection actor are rare (closes, snapshots, auto-unsubscribes), so a lock per
//! message costs nothing that matters. The lock guards only the queue, never held
//! across an await.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};
use std::task::Poll;

use atomic_waker::AtomicWaker;

pub struct Mailbox<T> {
    queue: Mutex<Queue<T>>,
    receiver: AtomicWaker,
}

struct Queue<T> {
    messages: VecDeque<T>,
    /// The receiver is gone: messages are refused (and dropped).
    closed: bool,
}

impl<T> Default for Mailbox<T> {
    fn default() -> Self {
        Mailbox {
            queue: Mutex::new(Queue {
                messages: VecDeque::new(),
                closed: false,
            }),
            receiver: AtomicWaker::new(),
        }
    }
}

impl<T> Mailbox<T> {
    fn lock(&self) -> MutexGuard<'_, Queue<T>> {
        // A panic under this lock leaves at worst a message lost; keep serving.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Leaves `message` for the receiver and wakes it; `false` (the message dropped)
    /// once the receiver has closed the mailbox.
    pub fn send(&self, message: T) -> bool {
        let mut queue = self.lock();
        if queue.closed {
            return false;
        }
        queue.messages.push_back(message);
        drop(queue);
        self.receiver.wake();
        true
    }

    /// The receiver stops: what is queued and whatever comes later is dropped.
    pub fn close(&self) {
        let dropped = {
            let mut queue = self.lock();
            queue.closed = true;
            std::mem::take(&mut queue.messages)
        };
        drop(dropped);
    }

    /// The next message, in the order sent. Only one task may receive.
    pub async fn recv(&self) -> T {
        std::future::poll_fn(|cx| {
            if let Some(m) = self.lock().messages.pop_front() {
                return Poll::Ready(m);
            }
            self.receiver.register(cx.waker());
            match self.lock().messages.pop_front() {
                Some(m) => Poll::Ready(m),
                None => Poll::Pending,
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn messages_arrive_in_order_and_wake_the_receiver() {
        let mailbox = Arc::new(Mailbox::default());
        mailbox.send(1);
        mailbox.send(2);
        let sender = {
            let mailbox = mailbox.clone();
            std::thread::spawn(move || {
                std::thread::sleep(std::time::Duration::from_millis(20));
                mailbox.send(3);
            })
        };
        let got: Vec<i32> = futures_lite::future::block_on(async {
            vec![
                mailbox.recv().await,
                mailbox.recv().await,
                mailbox.recv().await,
            ]
        });
        sender.join().expect("sender");
        assert_eq!(got, [1, 2, 3]);
        mailbox.send(4);
        mailbox.close();
        assert!(!mailbox.send(5), "refused once closed");
        assert!(mailbox.lock().messages.is_empty(), "queued ones dropped");
    }
}
