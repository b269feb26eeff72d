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
//! frame or end of stream, at most [`crate::worker::CLOSING_HANDSHAKE_TIMEOUT`].
//!
//! What a message means is not decided here: WebSocket pings are answered, the echo
//! endpoint echoes, and Pusher messages go to the worker, which runs the protocol rules.

mod echo;

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::task::{ready, Context, Poll};

use bytes::{Bytes, BytesMut};

use crate::app::AppIdx;
use crate::clock::{now_ns, tick_now};
use crate::hub::{Conn, Phase};
use crate::metrics::WorkerStats;
use crate::runtime::{Leftover, Reader, Runtime, Socket, Writer, Written};
use crate::worker::Worker;
use crate::ws::{codec, Decoder, Message, OpCode};

/// What a WebSocket connection speaks, as the upgrade request decided.
#[derive(Debug, Clone)]
pub enum Protocol {
    /// Pusher, for a known, enabled app, in a supported protocol version.
    Pusher(AppIdx),
    /// Pusher, refused after the upgrade with a close code and reason (an unknown app, a
    /// bad protocol version): the Pusher clients act on these codes.
    PusherRefused {
        /// The 40xx close code.
        code: u16,
        /// Why.
        reason: String,
    },
    /// The plain RFC 6455 echo endpoint.
    Echo,
}

/// Runs a WebSocket connection to its end.
///
/// The returned future holds the connection's [`Driver`] once, by value: this is the whole
/// per-connection task state, so it is kept small (no nested async functions whose
/// arguments and locals would each take their own space).
pub fn run<S: Socket>(
    worker: Rc<Worker>,
    writer: S::Writer,
    leftover: Leftover<S::Reader>,
    protocol: Protocol,
    ip: Option<crate::worker::admission::IpSlot>,
) -> impl Future<Output = ()> + 'static {
    let conn = match protocol {
        Protocol::Pusher(app) => worker.open_conn(Some(app), true),
        Protocol::PusherRefused { code, reason } => {
            let conn = worker.open_conn(None, true);
            conn.close(code, &reason);
            conn
        }
        Protocol::Echo => worker.open_conn(None, false),
    };
    let mut driver = Driver::<S>::new(worker, conn, writer, leftover);
    driver.ip = ip;
    let mut shutdown: Option<Pin<Box<dyn Future<Output = ()>>>> = None;
    poll_fn(move |cx| {
        if shutdown.is_none() {
            let end = ready!(driver.poll(cx));
            tracing::debug!(
                socket_id = %driver.conn.socket_id,
                reason = ?end,
                close_code = driver.conn.close_code(),
                "connection closed"
            );
            driver.finish();
            driver.rx = None;
            // A write still in flight (a connection killed while writing) is dropped with
            // its writer: the socket then just closes.
            driver.write = None;
            match (end, driver.writer.take()) {
                (End::Io(_), _) | (_, None) => return Poll::Ready(()),
                // Bounded by the seam's contract (close_notify to a client that stopped
                // reading, over TLS).
                (_, Some(writer)) => {
                    shutdown = Some(Box::pin(async move {
                        let _ = writer.shutdown().await;
                    }))
                }
            }
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

type PendingWrite<W> = Pin<Box<dyn Future<Output = Written<W>>>>;

/// The state of one connection's task: a hand-written poll loop rather than nested async
/// functions, so an idle connection's task holds only these fields (the receive itself
/// keeps no future; a write's state exists only while a write is in flight).
struct Driver<S: Socket> {
    worker: Rc<Worker>,
    conn: Rc<Conn>,
    /// The writer, while no write is in flight (the write holds it).
    writer: Option<S::Writer>,
    decoder: Decoder,
    inbuf: BytesMut,
    /// `None` once receiving has stopped (the closing handshake is done).
    rx: Option<S::Reader>,
    /// Bytes to discard (the rest of a frame that failed the connection).
    skip: u64,
    batch: Vec<Bytes>,
    write: Option<PendingWrite<S::Writer>>,
    /// With `--write-delay-us`: the wait, begun when frames were first found queued, for
    /// more to join them in one write.
    hold: Option<crate::runtime::LocalBoxFuture>,
    /// When the last bytes arrived ([`crate::clock::now_ns`]), for the frame latency.
    received_at: u64,
    /// `inbuf`'s capacity as last counted in the worker's `inbound_buffer_bytes`.
    counted: usize,
    /// Whether the connection is still in the worker's books ([`Driver::finish`]).
    open: bool,
    /// The connection's place in `--max-connections-per-ip`, while it lasts.
    ip: Option<crate::worker::admission::IpSlot>,
}

impl<S: Socket> Drop for Driver<S> {
    /// Also runs when the task is dropped without finishing: a panic in the session
    /// (caught by the runtime, which drops the task), so that the connection's
    /// subscriptions, presence memberships and counts do not outlive it. Not while the
    /// server is shutting down, when the runtime may be going away with its tasks.
    fn drop(&mut self) {
        self.count_inbuf(0);
        if self.open && !self.worker.is_shutting_down() {
            tracing::error!(
                socket_id = %self.conn.socket_id,
                "connection task ended abnormally (a panic): cleaning up after it"
            );
            self.finish();
        }
    }
}

impl<S: Socket> Driver<S> {
    fn new(
        worker: Rc<Worker>,
        conn: Rc<Conn>,
        writer: S::Writer,
        leftover: Leftover<S::Reader>,
    ) -> Self {
        Self {
            decoder: Decoder::new(worker.config().limits.max_message_size),
            worker,
            conn,
            writer: Some(writer),
            inbuf: leftover.buf,
            rx: Some({
                let mut rx = leftover.rx;
                rx.read_ahead();
                rx
            }),
            skip: 0,
            batch: Vec::new(),
            write: None,
            hold: None,
            received_at: 0,
            counted: 0,
            open: true,
            ip: None,
        }
    }

    /// Takes the connection out of the worker's books (its subscriptions, presence
    /// memberships, sign-in and counts), once.
    fn finish(&mut self) {
        if std::mem::take(&mut self.open) {
            self.worker.stats.closed(self.conn.close_code());
            self.worker.close_conn(&self.conn);
        }
    }

    /// Keeps the worker's count of receive buffer bytes in step with `inbuf`'s capacity.
    fn count_inbuf(&mut self, capacity: usize) {
        if capacity != self.counted {
            let gauge = &self.worker.stats.inbound_buffer_bytes;
            if capacity > self.counted {
                gauge.fetch_add((capacity - self.counted) as u64, Ordering::Relaxed);
            } else {
                gauge.fetch_sub((self.counted - capacity) as u64, Ordering::Relaxed);
            }
            self.counted = capacity;
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
                let done = ready!(w.as_mut().poll(cx));
                self.write = None;
                self.writer = Some(done.writer);
                if let Err(e) = done.result {
                    return Poll::Ready(End::Io(e));
                }
                if done.bufs.capacity() <= 16 {
                    self.batch = done.bufs;
                }
            }
            // Frames wait for company only while there is less than a write's worth, and
            // not once closing has begun.
            let delay = self.worker.config().write_delay;
            if !delay.is_zero()
                && self.conn.queued_bytes() > 0
                && self.conn.is_open()
                && !self.conn.batch_is_full()
            {
                let hold = self.hold.get_or_insert_with(|| self.worker.rt.sleep(delay));
                if hold.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                self.hold = None;
            } else {
                self.hold = None;
            }
            let mut now = 0;
            let latency = &self.worker.latency;
            if self.conn.take_batch(&mut self.batch, |stamp| {
                if now == 0 {
                    // One clock read per write, and only when it carries measured events.
                    now = now_ns();
                }
                latency.publish(now, stamp);
            }) {
                let bytes: usize = self.batch.iter().map(Bytes::len).sum();
                WorkerStats::add(&self.worker.stats.messages_sent, self.batch.len() as u64);
                WorkerStats::add(&self.worker.stats.bytes_sent, bytes as u64);
                WorkerStats::add(&self.worker.stats.socket_writes, 1);
                let writer = self.writer.take().expect("one write at a time");
                let batch = std::mem::take(&mut self.batch);
                self.write = Some(Box::pin(writer.write(batch)));
                continue;
            }
            return match self.conn.phase() {
                Phase::Closing { by_peer: true, .. } => Poll::Ready(End::Closed),
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
            if let Phase::Closing { by_peer: true, .. } = self.conn.phase() {
                // The closing handshake is complete once the writer has sent what is queued;
                // nothing the client sends matters any more. Stop receiving (on io_uring an
                // armed multishot receive would keep taking the worker's ring buffers).
                self.rx = None;
                return Poll::Pending;
            }
            let partial = !self.inbuf.is_empty() || self.decoder.in_message();
            if !partial && self.inbuf.capacity() > 0 {
                // Idle connections hold no read buffer.
                self.inbuf = BytesMut::new();
            }
            self.count_inbuf(self.inbuf.capacity());
            // A message under way is on the clock (--message-timeout) until it is whole.
            self.conn.state.borrow_mut().receiving(partial, tick_now());
            let res = match self.rx.as_mut() {
                None => return Poll::Pending,
                Some(rx) => ready!(rx.poll_recv(cx, &mut self.inbuf)),
            };
            match res {
                Ok(0) => {
                    return Poll::Ready(match self.conn.phase() {
                        Phase::Open => End::Eof,
                        Phase::Closing { .. } => End::Closed,
                    });
                }
                Ok(n) => {
                    self.received_at = now_ns();
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
            if let Phase::Closing { by_peer: true, .. } = conn.phase() {
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
                    // Only a whole message shows the client is alive.
                    conn.state.borrow_mut().touch(tick_now());
                    on_message(worker, conn, msg);
                    worker.latency.frame(self.received_at, now_ns());
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

/// Answers one message: WebSocket pings here, the rest by what the connection speaks
/// (close frames are the closing handshake's, handled by the driver).
fn on_message(worker: &Worker, conn: &Rc<Conn>, msg: Message) {
    match msg {
        Message::Ping(payload) => {
            conn.push(codec::encode(OpCode::Pong, &payload));
        }
        Message::Pong(_) | Message::Close(_) => {}
        _ if !conn.pusher => echo::echo(conn, msg),
        // Refused at the upgrade: only waiting for its close to complete.
        _ if conn.app.is_none() => {}
        Message::Text(text) => {
            let text = std::str::from_utf8(&text).expect("the decoder validated UTF-8");
            if let Some(marker) = injected_panic_marker() {
                if text.contains(marker) {
                    panic!("panic injected by RINGCAST_TEST_PANIC_MARKER");
                }
            }
            worker.on_text(conn, text);
        }
        Message::Binary(_) => worker.on_binary(conn),
    }
}

/// Fault injection for tests: with `RINGCAST_TEST_PANIC_MARKER` set (never in
/// production), a Pusher message containing it makes its session panic, to show that a
/// panicking session leaves nothing behind.
fn injected_panic_marker() -> Option<&'static str> {
    static MARKER: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    MARKER
        .get_or_init(|| {
            std::env::var("RINGCAST_TEST_PANIC_MARKER")
                .ok()
                .filter(|m| !m.is_empty())
        })
        .as_deref()
}

/// Runs the worker's periodic sweep (pings, pong timeouts, closing grace) every second.
pub async fn sweeper<R: Runtime>(worker: Rc<Worker>) {
    loop {
        R::sleep(std::time::Duration::from_secs(1)).await;
        let now = tick_now();
        worker.sweep(now);
        worker.sweep_shared(now);
        worker.latency.flush(&worker.stats);
        worker
            .stats
            .heartbeat
            .store(now_ns(), std::sync::atomic::Ordering::Relaxed);
    }
}
