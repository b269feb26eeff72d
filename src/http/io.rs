//! hyper's IO traits over the owned-buffer seam ([`Socket`]).
//!
//! Reads go through the socket's reader, which is poll-based and holds no buffer while
//! waiting; after a `101`, [`HyperIo::into_leftover`] hands that same reader (on io_uring,
//! with its multishot receive still armed) to the WebSocket session, with any bytes already
//! received. Writes are collected and sent on flush, one write at a time.

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{ready, Context, Poll};
use std::time::Instant;

use bytes::{Buf, Bytes, BytesMut};

use crate::runtime::{Leftover, Reader, Socket, Writer, Written};

/// What a connection's timers read, kept by [`HyperIo`] as bytes move.
#[derive(Debug)]
pub struct Clock {
    /// When bytes were last read or written (shared with the worker's table of HTTP
    /// connections).
    pub activity: Rc<Cell<Instant>>,
    /// When the first byte not yet part of a request being served was read: a request's
    /// head has been arriving since then. Cleared when a request starts and ends being
    /// served.
    pub head_since: Cell<Option<Instant>>,
}

impl Clock {
    /// A clock for a connection accepted now.
    pub fn new() -> Rc<Clock> {
        Rc::new(Clock {
            activity: Rc::new(Cell::new(Instant::now())),
            head_since: Cell::new(None),
        })
    }

    fn read(&self) {
        let now = Instant::now();
        self.activity.set(now);
        if self.head_since.get().is_none() {
            self.head_since.set(Some(now));
        }
    }
}

type PendingWrite<W> = Pin<Box<dyn Future<Output = Written<W>>>>;
type PendingShutdown = Pin<Box<dyn Future<Output = io::Result<()>>>>;

/// Writes above this size are flushed before more are accepted.
const MAX_WRITE_BUF: usize = 64 * 1024;

/// A [`Socket`] as hyper's `Read + Write`.
pub struct HyperIo<S: Socket> {
    rx: S::Reader,
    rbuf: BytesMut,
    /// The writer, while no write is in flight.
    writer: Option<S::Writer>,
    wbuf: BytesMut,
    write: Option<PendingWrite<S::Writer>>,
    shutdown: Option<PendingShutdown>,
    clock: Rc<Clock>,
}

impl<S: Socket> HyperIo<S> {
    /// Wraps `socket`, keeping `clock` as bytes move.
    pub fn new(socket: S, clock: Rc<Clock>) -> Self {
        let (rx, writer) = socket.split();
        Self {
            rx,
            rbuf: BytesMut::new(),
            writer: Some(writer),
            wbuf: BytesMut::new(),
            write: None,
            shutdown: None,
            clock,
        }
    }

    /// Takes the socket back after an upgrade: flushes what hyper wrote, and returns the
    /// writer, and the bytes received after the request (`hyper_buf`, which hyper had
    /// buffered, then what this adapter still holds) with the reader.
    pub async fn into_leftover(
        mut self,
        hyper_buf: Bytes,
    ) -> io::Result<(S::Writer, Leftover<S::Reader>)> {
        std::future::poll_fn(|cx| self.poll_flush_inner(cx)).await?;
        let mut buf = BytesMut::with_capacity(hyper_buf.len() + self.rbuf.len());
        buf.extend_from_slice(&hyper_buf);
        buf.extend_from_slice(&self.rbuf);
        let writer = self.writer.take().ok_or_else(gone)?;
        Ok((writer, Leftover { buf, rx: self.rx }))
    }

    /// Takes the writer back once hyper is done with the connection (to shut it down).
    pub async fn into_writer(mut self) -> io::Result<S::Writer> {
        std::future::poll_fn(|cx| self.poll_flush_inner(cx)).await?;
        self.writer.take().ok_or_else(gone)
    }

    fn poll_flush_inner(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            if let Some(w) = self.write.as_mut() {
                let done = ready!(w.as_mut().poll(cx));
                self.write = None;
                self.writer = Some(done.writer);
                done.result?;
                self.clock.activity.set(Instant::now());
            }
            if self.wbuf.is_empty() {
                return Poll::Ready(Ok(()));
            }
            let bytes = self.wbuf.split().freeze();
            let writer = self.writer.take().ok_or_else(gone)?;
            self.write = Some(Box::pin(writer.write(vec![bytes])));
        }
    }
}

fn gone() -> io::Error {
    io::Error::new(
        io::ErrorKind::NotConnected,
        "the connection's writer is gone",
    )
}

impl<S: Socket> hyper::rt::Read for HyperIo<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.rbuf.is_empty() {
            match ready!(this.rx.poll_recv(cx, &mut this.rbuf)) {
                // End of stream: hyper sees a read of zero bytes.
                Ok(0) => return Poll::Ready(Ok(())),
                Ok(_) => this.clock.read(),
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        let n = buf.remaining().min(this.rbuf.len());
        buf.put_slice(&this.rbuf[..n]);
        this.rbuf.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl<S: Socket> hyper::rt::Write for HyperIo<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.wbuf.len() >= MAX_WRITE_BUF {
            ready!(this.poll_flush_inner(cx))?;
        }
        this.wbuf.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_flush_inner(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.shutdown.is_none() {
            ready!(this.poll_flush_inner(cx))?;
            let writer = this.writer.take().ok_or_else(gone)?;
            this.shutdown = Some(Box::pin(writer.shutdown()));
        }
        this.shutdown.as_mut().expect("set above").as_mut().poll(cx)
    }
}
