//! The epoll backend: a current-thread tokio runtime per worker.
//!
//! Reads wait for readiness and then read into the worker's scratch buffer, copying out
//! only what arrived, so an idle connection holds no read buffer. Writes are `writev` of
//! the queued shared `Bytes`.

use std::cell::RefCell;
use std::future::Future;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::rc::Rc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::{Backend, Reader, Runtime, Socket, Writer, Written};

/// Size of the per-worker scratch buffer reads land in.
const SCRATCH_LEN: usize = 64 * 1024;
/// Most iovecs passed to one `writev`.
const MAX_IOVECS: usize = 256;

thread_local! {
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; SCRATCH_LEN].into_boxed_slice());
}

/// The epoll backend.
pub struct Epoll;

/// An accepted connection on the epoll backend.
pub struct EpollSocket {
    stream: TcpStream,
}

/// Receives into the worker's scratch buffer.
pub struct EpollReader {
    stream: Rc<TcpStream>,
}

/// The sending half.
pub struct EpollWriter {
    stream: Rc<TcpStream>,
}

impl Reader for EpollReader {
    fn poll_recv(&mut self, cx: &mut Context<'_>, buf: &mut BytesMut) -> Poll<io::Result<usize>> {
        let stream = &*self.stream;
        loop {
            ready!(stream.poll_read_ready(cx))?;
            // Mid-message with room to spare: read straight into the message buffer.
            let res = if buf.capacity() - buf.len() >= 4096 {
                stream.try_read_buf(buf)
            } else {
                SCRATCH.with_borrow_mut(|scratch| {
                    let n = stream.try_read(scratch)?;
                    buf.extend_from_slice(&scratch[..n]);
                    Ok(n)
                })
            };
            match res {
                Ok(n) => return Poll::Ready(Ok(n)),
                // Readiness is cleared: the next poll waits for more.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl Socket for EpollSocket {
    type Reader = EpollReader;
    type Writer = EpollWriter;

    fn split(self) -> (EpollReader, EpollWriter) {
        let stream = Rc::new(self.stream);
        (
            EpollReader {
                stream: stream.clone(),
            },
            EpollWriter { stream },
        )
    }
}

impl Writer for EpollWriter {
    async fn write(self, mut bufs: Vec<Bytes>) -> Written<Self> {
        let result = self.writev_all(&mut bufs).await;
        bufs.clear();
        Written {
            writer: self,
            result,
            bufs,
        }
    }

    /// `shutdown(SHUT_WR)`: a system call that does not wait for the peer.
    async fn shutdown(self) -> io::Result<()> {
        socket2::SockRef::from(&*self.stream).shutdown(std::net::Shutdown::Write)
    }
}

impl EpollWriter {
    /// `writev` until everything is out, waiting for writability in between.
    async fn writev_all(&self, bufs: &mut [Bytes]) -> io::Result<()> {
        let mut start = 0;
        while start < bufs.len() {
            self.stream.writable().await?;
            let end = bufs.len().min(start + MAX_IOVECS);
            let slices: Vec<IoSlice<'_>> =
                bufs[start..end].iter().map(|b| IoSlice::new(b)).collect();
            match self.stream.try_write_vectored(&slices) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(mut n) => {
                    // Skip what was written; a partly written `Bytes` is advanced in place.
                    while n > 0 {
                        let b = &mut bufs[start];
                        if n >= b.len() {
                            n -= b.len();
                            start += 1;
                        } else {
                            b.advance(n);
                            n = 0;
                        }
                    }
                    while start < bufs.len() && bufs[start].is_empty() {
                        start += 1;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

impl Runtime for Epoll {
    type Socket = EpollSocket;
    type Timer = hyper_util::rt::TokioTimer;
    const BACKEND: Backend = Backend::Epoll;

    fn block_on<F: Future<Output = ()>>(main: impl FnOnce() -> F) -> io::Result<()> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let local = tokio::task::LocalSet::new();
        local.block_on(&rt, main());
        Ok(())
    }

    fn spawn<F: Future<Output = ()> + 'static>(fut: F) {
        tokio::task::spawn_local(fut);
    }

    fn sleep(d: Duration) -> impl Future<Output = ()> {
        tokio::time::sleep(d)
    }

    fn timer() -> hyper_util::rt::TokioTimer {
        hyper_util::rt::TokioTimer::new()
    }

    async fn accept_loop(
        listener: std::net::TcpListener,
        stop: CancellationToken,
        mut on_accept: impl FnMut(EpollSocket, SocketAddr),
    ) -> io::Result<()> {
        let listener = TcpListener::from_std(listener)?;
        let mut last_error = None;
        loop {
            let next = tokio::select! {
                biased;
                _ = stop.cancelled() => return Ok(()),
                next = listener.accept() => next,
            };
            match next {
                Ok((stream, peer)) => {
                    stream.set_nodelay(true).ok();
                    on_accept(EpollSocket { stream }, peer);
                }
                Err(e) => {
                    super::log_accept_error(&e, &mut last_error);
                    tokio::time::sleep(super::ACCEPT_ERROR_PAUSE).await;
                }
            }
        }
    }
}
