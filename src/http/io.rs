//! hyper's IO traits over the owned-buffer [`Connection`] seam.
//!
//! Reads go through the connection's receiver, which is poll-based and holds no buffer
//! while waiting; after a `101`, [`HyperIo::into_leftover`] hands that same receiver (on
//! io_uring, with its multishot receive still armed) to the WebSocket session, with any
//! bytes already received. Writes are collected and sent on flush.

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{ready, Context, Poll};
use std::time::Instant;

use bytes::{Buf, Bytes, BytesMut};

use crate::runtime::{Connection, Leftover, Receive};

type PendingIo = Pin<Box<dyn Future<Output = io::Result<()>>>>;

/// Writes above this size are flushed before more are accepted.
const MAX_WRITE_BUF: usize = 64 * 1024;

/// A [`Connection`] as hyper's `Read + Write`.
pub struct HyperIo<S: Connection> {
    io: Rc<S>,
    rbuf: BytesMut,
    rx: S::Reader,
    wbuf: BytesMut,
    write: Option<PendingIo>,
    shutdown: Option<PendingIo>,
    activity: Rc<Cell<Instant>>,
}

impl<S: Connection> HyperIo<S> {
    /// Wraps `io`; `activity` is set to the time of each read or write.
    pub fn new(io: Rc<S>, activity: Rc<Cell<Instant>>) -> Self {
        Self {
            rx: io.reader(),
            io,
            rbuf: BytesMut::new(),
            wbuf: BytesMut::new(),
            write: None,
            shutdown: None,
            activity,
        }
    }

    /// Takes the connection back after an upgrade: flushes what hyper wrote, and returns
    /// the bytes received after the request (`hyper_buf`, which hyper had buffered, then
    /// what this adapter still holds) and any read in flight.
    pub async fn into_leftover(
        mut self,
        hyper_buf: Bytes,
    ) -> io::Result<(Rc<S>, Leftover<S::Reader>)> {
        std::future::poll_fn(|cx| self.poll_flush_inner(cx)).await?;
        let mut buf = BytesMut::with_capacity(hyper_buf.len() + self.rbuf.len());
        buf.extend_from_slice(&hyper_buf);
        buf.extend_from_slice(&self.rbuf);
        Ok((self.io, Leftover { buf, rx: self.rx }))
    }

    fn poll_flush_inner(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            if let Some(w) = self.write.as_mut() {
                let res = ready!(w.as_mut().poll(cx));
                self.write = None;
                res?;
                self.activity.set(Instant::now());
            }
            if self.wbuf.is_empty() {
                return Poll::Ready(Ok(()));
            }
            let bytes = self.wbuf.split().freeze();
            let io = self.io.clone();
            self.write = Some(Box::pin(async move { io.write_all(bytes).await }));
        }
    }
}

impl<S: Connection> hyper::rt::Read for HyperIo<S> {
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
                Ok(_) => this.activity.set(Instant::now()),
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        let n = buf.remaining().min(this.rbuf.len());
        buf.put_slice(&this.rbuf[..n]);
        this.rbuf.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl<S: Connection> hyper::rt::Write for HyperIo<S> {
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
        ready!(this.poll_flush_inner(cx))?;
        if this.shutdown.is_none() {
            let io = this.io.clone();
            this.shutdown = Some(Box::pin(async move { io.shutdown().await }));
        }
        let res = ready!(this.shutdown.as_mut().expect("set above").as_mut().poll(cx));
        Poll::Ready(res)
    }
}
