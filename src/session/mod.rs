//! One task per WebSocket connection.
//!
//! The task runs three things concurrently inside one future (one allocation, no extra
//! tasks): the **reader** (receive, decode, answer), the **writer** (take a batch of queued
//! frames, write them in one vectored write, repeat) and the **kill switch** (the worker
//! ending the connection after a grace period or at the end of shutdown). Whichever
//! finishes first ends the connection; dropping the others cancels their IO.
//!
//! Closing follows RFC 6455: when the client closes, its code is echoed and the task ends
//! once the answer is written; when the server closes (protocol error, 4100, 4201, 4200),
//! queued frames and the close frame go out, then the task waits for the client's close
//! frame or end of stream, at most [`crate::worker::CLOSE_GRACE`].

pub mod conn;
mod echo;
mod pusher;

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{ready, Context, Poll};

use bytes::{Bytes, BytesMut};

use crate::app::AppIdx;
use crate::metrics::WorkerStats;
use crate::runtime::{Connection, Leftover, Receive, Runtime};
use crate::worker::Worker;
use crate::ws::{Decoder, Message};
use conn::{Conn, ConnState, Protocol};

/// What the upgrade request asked for.
#[derive(Debug, Clone)]
pub enum Session {
    /// A Pusher client of a known, enabled app, speaking a supported protocol version.
    Pusher(AppIdx),
    /// A Pusher client to refuse after the upgrade, with a close code and reason.
    PusherRefused {
        /// The 40xx close code.
        code: u16,
        /// Why.
        reason: String,
    },
    /// The plain RFC 6455 echo endpoint.
    Echo,
}

/// Answers client messages for one protocol.
trait Handler {
    /// Handles a text or binary message, or a ping/pong (close frames are handled by the
    /// session itself).
    fn on_message(&mut self, worker: &Worker, conn: &Rc<Conn>, msg: Message);
}

/// What answers a connection's messages.
enum Proto {
    /// A connection of a valid app.
    Pusher(pusher::Pusher),
    /// A connection refused after the upgrade (unknown app, bad protocol version): it only
    /// waits for its close to complete.
    Refused,
    /// The echo endpoint.
    Echo,
}

impl Handler for Proto {
    fn on_message(&mut self, worker: &Worker, conn: &Rc<Conn>, msg: Message) {
        match self {
            Proto::Pusher(p) => p.on_message(worker, conn, msg),
            Proto::Refused => {}
            Proto::Echo => echo::Echo.on_message(worker, conn, msg),
        }
    }
}

/// Runs a WebSocket connection to its end.
///
/// The returned future holds the connection's [`Driver`] once, by value: this is the whole
/// per-connection task state, so it is kept small (no nested async functions whose
/// arguments and locals would each take their own space).
pub fn run<R: Runtime, C: Connection>(
    worker: Rc<Worker>,
    io: Rc<C>,
    leftover: Leftover<C::Reader>,
    session: Session,
) -> impl Future<Output = ()> + 'static {
    let (app, protocol, proto) = match &session {
        Session::Pusher(app) => (
            Some(*app),
            Protocol::Pusher,
            Proto::Pusher(pusher::Pusher { app: *app }),
        ),
        Session::PusherRefused { .. } => (None, Protocol::Pusher, Proto::Refused),
        Session::Echo => (None, Protocol::Echo, Proto::Echo),
    };
    let conn = worker.open_conn(app, protocol);
    match &session {
        Session::Pusher(_) => pusher::on_open(&worker, &conn),
        Session::PusherRefused { code, reason } => conn.close(*code, reason),
        Session::Echo => {}
    }
    let mut driver = Driver::new(worker, conn, io, leftover, proto);
    let mut shutdown: Option<Pin<Box<dyn Future<Output = ()>>>> = None;
    poll_fn(move |cx| {
        if shutdown.is_none() {
            let end = ready!(driver.poll(cx));
            let conn = &driver.conn;
            tracing::debug!(
                socket_id = %conn.socket_id,
                reason = ?end,
                close_code = conn.close_code(),
                "connection closed"
            );
            driver.worker.stats.closed(conn.close_code());
            driver.worker.close_conn(conn);
            driver.rx = None;
            if matches!(end, End::Io(_)) {
                return Poll::Ready(());
            }
            let io = driver.io.clone();
            // Bounded: over TLS, shutting down writes close_notify, which a client that
            // stopped reading would hold forever.
            shutdown = Some(Box::pin(async move {
                tokio::select! {
                    biased;
                    _ = io.shutdown() => {}
                    _ = R::sleep(crate::worker::CLOSE_GRACE) => {}
                }
            }));
        }
        shutdown.as_mut().expect("set above").as_mut().poll(cx)
    })
}

/// Why a connection ended.
#[derive(Debug)]
enum End {
    /// The closing handshake completed (either side started it).
    Closed,
    /// The peer ended the stream without a closing handshake.
    Eof,
    /// A socket error (read through `Debug` in the close log).
    Io(#[allow(dead_code)] std::io::Error),
    /// Ended by the worker (closing grace period over, or shutdown).
    Killed,
}

type PendingWrite = Pin<Box<dyn Future<Output = (std::io::Result<()>, Vec<Bytes>)>>>;

/// The state of one connection's task: a hand-written poll loop rather than nested async
/// functions, so an idle connection's task holds only these fields (the receive itself
/// keeps no future; a write's state exists only while a write is in flight).
struct Driver<S: Connection> {
    worker: Rc<Worker>,
    conn: Rc<Conn>,
    io: Rc<S>,
    handler: Proto,
    decoder: Decoder,
    inbuf: BytesMut,
    /// `None` once receiving has stopped (the closing handshake is done).
    rx: Option<S::Reader>,
    /// Bytes to discard (the rest of a frame that failed the connection).
    skip: u64,
    batch: Vec<Bytes>,
    write: Option<PendingWrite>,
    /// When the last bytes arrived ([`crate::metrics::now_ns`]), for the frame latency.
    received_at: u64,
}

impl<S: Connection> Driver<S> {
    fn new(
        worker: Rc<Worker>,
        conn: Rc<Conn>,
        io: Rc<S>,
        leftover: Leftover<S::Reader>,
        handler: Proto,
    ) -> Self {
        Self {
            decoder: Decoder::new(worker.config().limits.max_message_size),
            worker,
            conn,
            io,
            handler,
            inbuf: leftover.buf,
            rx: Some(leftover.rx),
            skip: 0,
            batch: Vec::new(),
            write: None,
            received_at: 0,
        }
    }

    /// Drives the connection; `Ready` when it has ended.
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<End> {
        self.conn.register(cx.waker());
        if self.conn.is_killed() {
            return Poll::Ready(End::Killed);
        }
        // The reader first: what it queues in answer goes out in this same poll.
        if let Poll::Ready(end) = self.poll_read(cx) {
            return Poll::Ready(end);
        }
        self.poll_write(cx)
    }

    /// Writes what is queued, a batch at a time. Ends once the answer to the client's
    /// close is out.
    fn poll_write(&mut self, cx: &mut Context<'_>) -> Poll<End> {
        loop {
            if let Some(w) = self.write.as_mut() {
                let (res, mut written) = ready!(w.as_mut().poll(cx));
                self.write = None;
                if let Err(e) = res {
                    return Poll::Ready(End::Io(e));
                }
                written.clear();
                if written.capacity() <= 16 {
                    self.batch = written;
                }
            }
            let mut now = 0;
            let latency = &self.worker.latency;
            if self.conn.take_batch(&mut self.batch, |stamp| {
                if now == 0 {
                    // One clock read per write, and only when it carries measured events.
                    now = crate::metrics::now_ns();
                }
                latency.publish(now, stamp);
            }) {
                let bytes: usize = self.batch.iter().map(Bytes::len).sum();
                WorkerStats::add(&self.worker.stats.messages_sent, self.batch.len() as u64);
                WorkerStats::add(&self.worker.stats.bytes_sent, bytes as u64);
                let (io, batch) = (self.io.clone(), std::mem::take(&mut self.batch));
                self.write = Some(Box::pin(async move { io.write_all_vectored(batch).await }));
                continue;
            }
            return match self.conn.state() {
                ConnState::Closing { by_peer: true, .. } => Poll::Ready(End::Closed),
                // Waiting for frames (the task waker is registered), or for the client's
                // answer to our close, which the reader sees.
                _ => Poll::Pending,
            };
        }
    }

    /// Receives and answers; `Ready` ends the connection.
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<End> {
        loop {
            self.answer_complete_messages();
            if let ConnState::Closing { by_peer: true, .. } = self.conn.state() {
                // The closing handshake is complete once the writer has sent what is queued;
                // nothing the client sends matters any more. Stop receiving (on io_uring an
                // armed multishot receive would keep taking the worker's ring buffers).
                self.rx = None;
                return Poll::Pending;
            }
            if self.inbuf.is_empty() && self.inbuf.capacity() > 0 && !self.decoder.in_message() {
                // Idle connections hold no read buffer.
                self.inbuf = BytesMut::new();
            }
            let res = match self.rx.as_mut() {
                None => return Poll::Pending,
                Some(rx) => ready!(rx.poll_recv(cx, &mut self.inbuf)),
            };
            match res {
                Ok(0) => {
                    return Poll::Ready(match self.conn.state() {
                        ConnState::Open => End::Eof,
                        ConnState::Closing { .. } => End::Closed,
                    });
                }
                Ok(n) => {
                    self.conn.touch(conn::tick_now());
                    self.received_at = crate::metrics::now_ns();
                    WorkerStats::add(&self.worker.stats.bytes_received, n as u64);
                }
                Err(e) => return Poll::Ready(End::Io(e)),
            }
        }
    }

    /// Decodes and answers every complete message in the input buffer.
    fn answer_complete_messages(&mut self) {
        let (worker, conn) = (&*self.worker, &self.conn);
        loop {
            let dropped = self.skip.min(self.inbuf.len() as u64);
            let _ = self.inbuf.split_to(dropped as usize);
            self.skip -= dropped;
            if self.skip > 0 {
                return;
            }
            if let ConnState::Closing { by_peer: true, .. } = conn.state() {
                return;
            }
            let closing = !conn.is_open();
            match self.decoder.decode(&mut self.inbuf) {
                Ok(Some(Message::Close(c))) => {
                    // Our close answered, or the client's close to answer: either way the
                    // writer ends the connection once everything queued is out.
                    conn.answer_close(c.map(|(code, _)| code));
                }
                Ok(Some(_)) if closing => {}
                Ok(Some(msg)) => {
                    WorkerStats::add(&worker.stats.messages_received, 1);
                    self.handler.on_message(worker, conn, msg);
                    worker
                        .latency
                        .frame(self.received_at, crate::metrics::now_ns());
                }
                Ok(None) => return,
                Err(e) => {
                    if !closing {
                        tracing::debug!(socket_id = %conn.socket_id, error = %e, "protocol error");
                        conn.close(e.close_code(), &e.to_string());
                    }
                    // Look for the client's close frame in what follows: past the rest of an
                    // oversized frame when its length is known, otherwise from the next read.
                    self.skip = e.frame_len().unwrap_or(self.inbuf.len() as u64);
                    self.decoder = Decoder::new(worker.config().limits.max_message_size);
                }
            }
        }
    }
}

/// Runs the worker's periodic sweep (pings, pong timeouts, closing grace) every second.
pub async fn sweeper<R: Runtime>(worker: Rc<Worker>) {
    loop {
        R::sleep(std::time::Duration::from_secs(1)).await;
        let now = conn::tick_now();
        worker.sweep(now);
        worker.sweep_shared(now);
        worker.latency.flush(&worker.stats);
        worker.stats.heartbeat.store(
            crate::metrics::now_ns(),
            std::sync::atomic::Ordering::Relaxed,
        );
    }
}
