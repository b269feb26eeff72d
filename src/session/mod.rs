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
use std::pin::pin;
use std::rc::Rc;
use std::task::Poll;
use std::time::Instant;

use bytes::BytesMut;

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

/// Runs a WebSocket connection to its end.
pub async fn run<R: Runtime>(
    worker: Rc<Worker>,
    io: Rc<R::Conn>,
    leftover: Leftover,
    session: Session,
) {
    let (app, protocol) = match &session {
        Session::Pusher(app) => (Some(*app), Protocol::Pusher),
        Session::PusherRefused { .. } => (None, Protocol::Pusher),
        Session::Echo => (None, Protocol::Echo),
    };
    let conn = worker.open_conn(app, protocol);
    match &session {
        Session::Pusher(_) => pusher::on_open(&worker, &conn),
        Session::PusherRefused { code, reason } => conn.close(*code, reason),
        Session::Echo => {}
    }
    let end = match session {
        Session::Pusher(app) => drive(&worker, &conn, &*io, leftover, pusher::Pusher { app }).await,
        Session::PusherRefused { .. } => {
            drive(&worker, &conn, &*io, leftover, pusher::Refused).await
        }
        Session::Echo => drive(&worker, &conn, &*io, leftover, echo::Echo).await,
    };
    tracing::debug!(
        socket_id = %conn.socket_id,
        reason = ?end,
        close_code = conn.close_code(),
        "connection closed"
    );
    worker.close_conn(&conn);
    if !matches!(end, End::Io(_)) {
        let _ = io.shutdown().await;
    }
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

async fn drive<S: Connection, H: Handler>(
    worker: &Worker,
    conn: &Rc<Conn>,
    io: &S,
    leftover: Leftover,
    handler: H,
) -> End {
    let mut reader = pin!(read_loop(worker, conn, io, leftover, handler));
    let mut writer = pin!(write_loop(conn, io));
    poll_fn(|cx| {
        conn.register(cx.waker());
        if conn.is_killed() {
            return Poll::Ready(End::Killed);
        }
        // The reader first: what it queues in answer goes out in this same poll.
        if let Poll::Ready(end) = reader.as_mut().poll(cx) {
            return Poll::Ready(end);
        }
        writer.as_mut().poll(cx)
    })
    .await
}

async fn write_loop<S: Connection>(conn: &Conn, io: &S) -> End {
    let mut batch = Vec::new();
    loop {
        let more = poll_fn(|_| {
            if conn.take_batch(&mut batch) {
                return Poll::Ready(true);
            }
            match conn.state() {
                // Our answer to the client's close is out: done.
                ConnState::Closing { by_peer: true, .. } => Poll::Ready(false),
                // Waiting for frames (the task waker is registered by `drive`), or for
                // the client's answer to our close, which the reader sees.
                _ => Poll::Pending,
            }
        })
        .await;
        if !more {
            return End::Closed;
        }
        let (res, mut written) = io.write_all_vectored(std::mem::take(&mut batch)).await;
        if let Err(e) = res {
            return End::Io(e);
        }
        written.clear();
        if written.capacity() <= 16 {
            batch = written;
        }
    }
}

async fn read_loop<S: Connection, H: Handler>(
    worker: &Worker,
    conn: &Rc<Conn>,
    io: &S,
    leftover: Leftover,
    mut handler: H,
) -> End {
    let max = worker.config().limits.max_message_size;
    let mut decoder = Decoder::new(max);
    let mut inbuf = leftover.buf;
    let mut pending = leftover.pending;
    let mut rx = io.reader();
    // Bytes to discard (the rest of a frame that failed the connection).
    let mut skip: u64 = 0;
    loop {
        // Answer everything that is complete.
        loop {
            let dropped = skip.min(inbuf.len() as u64);
            let _ = inbuf.split_to(dropped as usize);
            skip -= dropped;
            if skip > 0 {
                break;
            }
            if let ConnState::Closing { by_peer: true, .. } = conn.state() {
                // The closing handshake is complete once the writer has sent what is queued;
                // nothing the client sends matters any more. Stop receiving (on io_uring an
                // armed multishot receive would keep taking the worker's ring buffers).
                drop(rx);
                return std::future::pending().await;
            }
            let closing = !conn.is_open();
            match decoder.decode(&mut inbuf) {
                Ok(Some(Message::Close(c))) => {
                    // Our close answered, or the client's close to answer: either way the
                    // writer ends the connection once everything queued is out.
                    conn.answer_close(c.map(|(code, _)| code));
                }
                Ok(Some(_)) if closing => {}
                Ok(Some(msg)) => {
                    WorkerStats::add(&worker.stats.messages_received, 1);
                    handler.on_message(worker, conn, msg);
                }
                Ok(None) => break,
                Err(e) => {
                    if !closing {
                        WorkerStats::add(&worker.stats.protocol_errors, 1);
                        tracing::debug!(socket_id = %conn.socket_id, error = %e, "protocol error");
                        conn.close(e.close_code(), &e.to_string());
                    }
                    // Look for the client's close frame in what follows: past the rest of an
                    // oversized frame when its length is known, otherwise from the next read.
                    skip = e.frame_len().unwrap_or(inbuf.len() as u64);
                    decoder = Decoder::new(max);
                }
            }
        }
        if inbuf.is_empty() && inbuf.capacity() > 0 && !decoder.in_message() {
            // Idle connections hold no read buffer.
            inbuf = BytesMut::new();
        }
        let res = match pending.take() {
            Some(read) => {
                let (res, bytes) = read.await;
                inbuf.extend_from_slice(&bytes);
                res
            }
            None => rx.recv(&mut inbuf).await,
        };
        match res {
            Ok(0) => {
                return match conn.state() {
                    ConnState::Open => End::Eof,
                    ConnState::Closing { .. } => End::Closed,
                };
            }
            Ok(_) => conn.touch(Instant::now()),
            Err(e) => return End::Io(e),
        }
    }
}

/// Runs the worker's periodic sweep (pings, pong timeouts, closing grace) every second.
pub async fn sweeper<R: Runtime>(worker: Rc<Worker>) {
    loop {
        R::sleep(std::time::Duration::from_secs(1)).await;
        worker.sweep(Instant::now());
    }
}
