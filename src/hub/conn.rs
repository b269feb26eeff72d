//! One WebSocket connection as its worker sees it: its bounded outbound queue, its closing
//! state, and its Pusher state ([`ConnState`]). Owned by the worker (not `Send`); delivery
//! pushes frames onto it, the connection's task ([`crate::session`]) writes them out.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::task::Waker;

use bytes::Bytes;

use crate::app::AppIdx;
use crate::clock::{tick_now, Tick};
use crate::protocol::{messages, SocketId};
use crate::pusher::liveness::Transport;
use crate::pusher::ConnState;
use crate::ws::codec::{self, OpCode};

/// Most frames one vectored write takes from the queue.
pub const MAX_BATCH_FRAMES: usize = 256;
/// Most bytes one vectored write takes from the queue (a single larger frame still goes).
pub const MAX_BATCH_BYTES: usize = 256 * 1024;

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Open: frames are accepted.
    Open,
    /// A close frame is queued or sent; no more frames are accepted.
    Closing {
        /// When closing started (for the grace period).
        since: Tick,
        /// Whether the peer closed first (we only answer and end).
        by_peer: bool,
    },
}

/// Result of [`Conn::push`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Push {
    /// Queued.
    Queued,
    /// The connection is closing; the frame was dropped.
    Closing,
    /// The queue would exceed its byte limit: the connection is now closing with 4100.
    Overflow,
}

/// One WebSocket connection, as its worker sees it.
pub struct Conn {
    /// Key in the worker's connection table.
    pub id: usize,
    /// The socket id given to the client.
    pub socket_id: SocketId,
    /// The app, once the client named a valid one.
    pub app: Option<AppIdx>,
    /// Whether it speaks Pusher (and is told why it is closed with a `pusher:error`).
    pub pusher: bool,
    max_queued_bytes: usize,
    /// Frames waiting, each with when it was published ([`crate::clock::now_ns`]; 0 for
    /// frames whose latency is not measured).
    queue: RefCell<VecDeque<(Bytes, u64)>>,
    queued_bytes: Cell<usize>,
    waker: RefCell<Option<Waker>>,
    phase: Cell<Phase>,
    killed: Cell<bool>,
    close_code: Cell<Option<u16>>,
    /// What the Pusher rules remember about it.
    pub state: RefCell<ConnState>,
}

impl Conn {
    /// A new open connection.
    pub fn new(
        id: usize,
        socket_id: SocketId,
        app: Option<AppIdx>,
        pusher: bool,
        max_queued_bytes: usize,
    ) -> Self {
        Self {
            id,
            socket_id,
            app,
            pusher,
            max_queued_bytes,
            queue: RefCell::new(VecDeque::new()),
            queued_bytes: Cell::new(0),
            waker: RefCell::new(None),
            phase: Cell::new(Phase::Open),
            killed: Cell::new(false),
            close_code: Cell::new(None),
            state: RefCell::new(ConnState::new(tick_now())),
        }
    }

    /// Where the connection is in its life.
    pub fn phase(&self) -> Phase {
        self.phase.get()
    }

    /// Whether frames are still accepted.
    pub fn is_open(&self) -> bool {
        self.phase.get() == Phase::Open
    }

    /// The close code sent (or answered), if closing.
    pub fn close_code(&self) -> Option<u16> {
        self.close_code.get()
    }

    /// Whether the queue holds a whole batch (one write's worth) already.
    pub fn batch_is_full(&self) -> bool {
        self.queued_bytes.get() >= MAX_BATCH_BYTES || self.queue.borrow().len() >= MAX_BATCH_FRAMES
    }

    /// Bytes waiting in the queue.
    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes.get()
    }

    /// Queues a frame for the client. A client that lets its queue grow beyond the limit is
    /// closed with 4100: it can never make the server hold more than the limit for it, nor
    /// slow down anyone else.
    pub fn push(&self, frame: Bytes) -> Push {
        self.push_stamped(frame, 0)
    }

    /// [`Conn::push`] for an event published at `stamp`: its publish-to-write latency is
    /// recorded when it is handed to the kernel.
    pub fn push_stamped(&self, frame: Bytes, stamp: u64) -> Push {
        if !self.is_open() {
            return Push::Closing;
        }
        let queued = self.queued_bytes.get() + frame.len();
        if queued > self.max_queued_bytes {
            self.close_discarding(
                crate::protocol::codes::OVER_CAPACITY,
                "Client is not reading fast enough: outbound buffer limit exceeded",
            );
            return Push::Overflow;
        }
        self.queued_bytes.set(queued);
        self.queue.borrow_mut().push_back((frame, stamp));
        self.wake();
        Push::Queued
    }

    /// Starts a server-initiated close: the queued frames go first, then (for Pusher) a
    /// `pusher:error` with `code` and `reason`, then the close frame. Does nothing if
    /// already closing.
    pub fn close(&self, code: u16, reason: &str) {
        if !self.is_open() {
            return;
        }
        if self.pusher {
            let pusher_code = (4000..5000).contains(&code).then_some(code);
            self.enqueue_unchecked(messages::error(pusher_code, reason));
        }
        self.enqueue_unchecked(codec::encode_close(code, reason));
        self.close_code.set(Some(code));
        self.phase.set(Phase::Closing {
            since: tick_now(),
            by_peer: false,
        });
        self.wake();
    }

    /// Like [`Conn::close`], but drops whatever is still queued first.
    pub fn close_discarding(&self, code: u16, reason: &str) {
        if !self.is_open() {
            return;
        }
        self.queue.borrow_mut().clear();
        self.queued_bytes.set(0);
        self.close(code, reason);
    }

    /// Answers the peer's close frame (echoing its code) and ends the connection once the
    /// answer is written.
    pub fn answer_close(&self, peer: Option<u16>) {
        if let Phase::Closing { by_peer: true, .. } = self.phase.get() {
            return;
        }
        let was_open = self.is_open();
        self.phase.set(Phase::Closing {
            since: tick_now(),
            by_peer: true,
        });
        if was_open {
            let frame = match peer {
                Some(code) => codec::encode_close(code, ""),
                None => codec::encode(OpCode::Close, &[]),
            };
            self.close_code
                .set(peer.or(Some(codec::close_code::NORMAL)));
            self.enqueue_unchecked(frame);
        }
        self.wake();
    }

    fn enqueue_unchecked(&self, frame: Bytes) {
        self.queued_bytes.set(self.queued_bytes.get() + frame.len());
        self.queue.borrow_mut().push_back((frame, 0));
    }

    /// Ends the connection task now, whatever is queued (after a closing grace period, or
    /// at the end of shutdown).
    pub fn kill(&self) {
        self.killed.set(true);
        self.wake();
    }

    /// Whether [`Conn::kill`] was called.
    pub fn is_killed(&self) -> bool {
        self.killed.get()
    }

    /// Moves up to a batch of queued frames into `out`, calling `stamped` with the publish
    /// time of each measured one. Returns whether any were moved.
    pub fn take_batch(&self, out: &mut Vec<Bytes>, mut stamped: impl FnMut(u64)) -> bool {
        let mut q = self.queue.borrow_mut();
        let mut bytes = 0;
        while let Some((front, _)) = q.front() {
            if !out.is_empty()
                && (out.len() >= MAX_BATCH_FRAMES || bytes + front.len() > MAX_BATCH_BYTES)
            {
                break;
            }
            bytes += front.len();
            let (frame, stamp) = q.pop_front().expect("front exists");
            if stamp != 0 {
                stamped(stamp);
            }
            out.push(frame);
        }
        self.queued_bytes.set(self.queued_bytes.get() - bytes);
        if q.is_empty() && q.capacity() > 64 {
            // A burst is over: do not keep its memory while idle.
            *q = VecDeque::new();
        }
        !out.is_empty()
    }

    /// Whether the queue is empty.
    pub fn queue_is_empty(&self) -> bool {
        self.queue.borrow().is_empty()
    }

    /// Registers the connection task's waker.
    pub fn register(&self, waker: &Waker) {
        let mut w = self.waker.borrow_mut();
        match &*w {
            Some(old) if old.will_wake(waker) => {}
            _ => *w = Some(waker.clone()),
        }
    }

    fn wake(&self) {
        if let Some(w) = self.waker.borrow().as_ref() {
            w.wake_by_ref();
        }
    }

    /// Where the transport is, for the liveness rules.
    pub fn transport(&self) -> Transport {
        match self.phase.get() {
            Phase::Open => Transport::Open,
            Phase::Closing { since, .. } => Transport::Closing { since },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(limit: usize) -> Conn {
        Conn::new(0, SocketId { random: 1, seq: 1 }, Some(0), true, limit)
    }

    #[test]
    fn overflow_closes_with_4100_and_drops_the_backlog() {
        let c = conn(100);
        assert_eq!(c.push(Bytes::from(vec![0u8; 60])), Push::Queued);
        assert_eq!(c.push(Bytes::from(vec![0u8; 60])), Push::Overflow);
        assert_eq!(c.close_code(), Some(4100));
        assert_eq!(c.push(Bytes::from_static(b"x")), Push::Closing);
        let mut out = vec![];
        c.take_batch(&mut out, |_| {});
        // pusher:error then the close frame; the 60-byte frame was dropped.
        assert_eq!(out.len(), 2);
        assert_eq!(out[1][0], 0x88);
        assert_eq!(&out[1][2..4], &4100u16.to_be_bytes());
    }

    #[test]
    fn batches_respect_limits_and_accounting() {
        let c = conn(1 << 30);
        for _ in 0..300 {
            c.push(Bytes::from(vec![0u8; 10]));
        }
        let mut out = vec![];
        c.take_batch(&mut out, |_| {});
        assert_eq!(out.len(), MAX_BATCH_FRAMES);
        assert_eq!(c.queued_bytes(), 44 * 10);
        out.clear();
        c.take_batch(&mut out, |_| {});
        assert_eq!(out.len(), 44);
        assert_eq!(c.queued_bytes(), 0);
    }

    #[test]
    fn close_is_idempotent_and_peer_close_is_answered_once() {
        let c = conn(1000);
        c.answer_close(Some(1000));
        c.answer_close(Some(1000));
        c.close(4200, "bye");
        let mut out = vec![];
        c.take_batch(&mut out, |_| {});
        assert_eq!(out.len(), 1);
        assert_eq!(&out[0][..], &[0x88, 2, 0x03, 0xe8]);
    }
}
