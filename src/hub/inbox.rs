//! A worker's inbox: the one way work crosses to a worker thread — from another worker, or
//! from the broker.
//!
//! A bounded crossbeam channel carries the messages; an atomic flag plus an `AtomicWaker`
//! wakes the receiving worker's inbox task, whichever runtime it runs on. Senders never
//! block a thread: a full inbox is reported back and the sender decides (the HTTP API
//! waits asynchronously for [`InboxSender::room`], then answers 503). Taking a message
//! wakes one waiting sender; with none waiting that costs one atomic load.

use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::Poll;

use atomic_waker::AtomicWaker;
use bytes::Bytes;

use super::broker::{Answer, UserMsg};
use crate::app::ChannelKey;
use crate::protocol::SocketId;

/// One event frame for one channel's subscribers on the receiving worker.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The channel.
    pub channel: ChannelKey,
    /// The encoded WebSocket frame, shared by every subscriber.
    pub frame: Bytes,
    /// A connection that must not receive it (the publisher's own socket).
    pub except: Option<SocketId>,
    /// When the HTTP API accepted it ([`crate::clock::now_ns`]), for the publish latency
    /// histogram; 0 for events not measured (client and internal events).
    pub published_at: u64,
}

/// A message to a worker.
#[derive(Debug, Clone)]
pub enum WorkerMsg {
    /// Deliver these frames to local subscribers, in order.
    Deliver(Vec<Delivery>),
    /// A user-level message (its connections may be on any worker).
    User(UserMsg),
    /// The broker's answer to something this worker asked (boxed: answers are rare, and
    /// every inbox slot is as large as the largest message).
    Answer(Box<Answer>),
}

struct Signal {
    pending: AtomicBool,
    waker: AtomicWaker,
    /// Senders waiting for a full inbox to make room.
    room: event_listener::Event,
}

/// The sending side, cloned into every worker.
#[derive(Clone)]
pub struct InboxSender {
    tx: crossbeam_channel::Sender<WorkerMsg>,
    signal: Arc<Signal>,
}

/// The receiving side, owned by its worker.
pub struct InboxReceiver {
    rx: crossbeam_channel::Receiver<WorkerMsg>,
    signal: Arc<Signal>,
}

/// A bounded inbox holding up to `capacity` messages.
pub fn inbox(capacity: usize) -> (InboxSender, InboxReceiver) {
    let (tx, rx) = crossbeam_channel::bounded(capacity);
    let signal = Arc::new(Signal {
        pending: AtomicBool::new(false),
        waker: AtomicWaker::new(),
        room: event_listener::Event::new(),
    });
    (
        InboxSender {
            tx,
            signal: signal.clone(),
        },
        InboxReceiver { rx, signal },
    )
}

impl InboxSender {
    /// Queues `msg` and wakes the receiver; gives `msg` back if the inbox is full or gone.
    pub fn try_send(&self, msg: WorkerMsg) -> Result<(), WorkerMsg> {
        match self.tx.try_send(msg) {
            Ok(()) => {
                if !self.signal.pending.swap(true, Ordering::AcqRel) {
                    self.signal.waker.wake();
                }
                Ok(())
            }
            Err(crossbeam_channel::TrySendError::Full(m))
            | Err(crossbeam_channel::TrySendError::Disconnected(m)) => Err(m),
        }
    }

    /// Resolves once the receiver has taken a message after this call: wait on it after a
    /// full [`InboxSender::try_send`], then try again. Create it before the try that failed
    /// so no wake-up falls between them.
    pub fn room(&self) -> event_listener::EventListener {
        self.signal.room.listen()
    }
}

impl InboxReceiver {
    /// Waits until something may have been queued since the last call.
    pub async fn ready(&self) {
        poll_fn(|cx| {
            if self.signal.pending.swap(false, Ordering::AcqRel) {
                return Poll::Ready(());
            }
            self.signal.waker.register(cx.waker());
            // A send between the check and the registration set `pending` and found no
            // waker (or the old one): check again now that ours is in place.
            if self.signal.pending.swap(false, Ordering::AcqRel) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await
    }

    /// Takes the next queued message, if any, waking a sender waiting for room.
    pub fn try_recv(&self) -> Option<WorkerMsg> {
        let msg = self.rx.try_recv().ok()?;
        self.signal
            .room
            .notify(event_listener::IntoNotification::additional(1));
        Some(msg)
    }

    /// Messages queued now.
    pub fn len(&self) -> usize {
        self.rx.len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_inbox_gives_the_message_back() {
        let (tx, rx) = inbox(1);
        assert!(tx.try_send(WorkerMsg::Deliver(vec![])).is_ok());
        assert!(tx.try_send(WorkerMsg::Deliver(vec![])).is_err());
        assert!(rx.try_recv().is_some());
        assert!(rx.try_recv().is_none());
        assert!(tx.try_send(WorkerMsg::Deliver(vec![])).is_ok());
    }

    /// A sender waiting for room sleeps until the receiver takes a message, then is woken
    /// (once per message taken): no polling.
    #[test]
    fn a_sender_waiting_for_room_is_woken_when_a_message_is_taken() {
        use std::future::Future;
        use std::sync::atomic::AtomicUsize;
        use std::task::{Context, Wake, Waker};
        struct Count(AtomicUsize);
        impl Wake for Count {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let (tx, rx) = inbox(1);
        assert!(tx.try_send(WorkerMsg::Deliver(vec![])).is_ok());
        let woken = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(woken.clone());
        let mut cx = Context::from_waker(&waker);
        let mut first = std::pin::pin!(tx.room());
        let mut second = std::pin::pin!(tx.room());
        assert!(tx.try_send(WorkerMsg::Deliver(vec![])).is_err());
        assert!(first.as_mut().poll(&mut cx).is_pending());
        assert!(second.as_mut().poll(&mut cx).is_pending());
        // Nothing taken: nobody woken, however long it stays full.
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert_eq!(woken.0.load(Ordering::SeqCst), 0);
        assert!(rx.try_recv().is_some());
        assert_eq!(
            woken.0.load(Ordering::SeqCst),
            1,
            "one message, one sender woken"
        );
        assert!(first.as_mut().poll(&mut cx).is_ready());
        assert!(second.as_mut().poll(&mut cx).is_pending());
        assert!(tx.try_send(WorkerMsg::Deliver(vec![])).is_ok());
    }
}
