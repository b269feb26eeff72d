//! The io_uring backend, through compio.
//!
//! Accepts with multishot accept; receives HTTP requests with one `recv` at a time into the
//! connection's own buffer, and in a WebSocket session with multishot receive into the
//! worker's provided-buffer ring (so an idle connection holds no read buffer); sends
//! vectors of shared `Bytes` with `sendmsg`. Dropping an operation cancels it in the
//! kernel.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::num::NonZeroU16;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use compio::buf::BufResult;
use compio::io::{AsyncWrite, AsyncWriteExt};
use compio::net::{TcpListener, TcpStream};
use futures_util::{Stream, StreamExt};
use send_wrapper::SendWrapper;
use tokio_util::sync::CancellationToken;

use super::{Backend, Reader, Runtime, Socket, Writer, Written};

/// Buffers in each worker's receive ring. Clients of a notification server send little
/// (pings, subscriptions); when many receive at once and the ring runs dry, the data waits
/// in the socket and the receive is re-armed (see `UringReader`).
const RING_BUFFERS: u16 = 512;
/// Size of each ring buffer.
const RING_BUFFER_LEN: usize = 2048;

/// The io_uring backend.
pub struct Uring;

/// An accepted connection on the io_uring backend.
pub struct UringSocket {
    stream: TcpStream,
}

/// The sending half: the stream, whose file descriptor the reader's multishot receive
/// shares.
pub struct UringWriter {
    stream: TcpStream,
}

type RecvStream = Pin<Box<dyn Stream<Item = io::Result<compio::driver::BufferRef>>>>;
type RecvOnce = Pin<Box<dyn Future<Output = BufResult<usize, Vec<u8>>>>>;

/// Receives one `recv` at a time into a buffer of its own until [`Reader::read_ahead`],
/// then through a multishot `recv` into the worker's buffer ring.
///
/// A multishot receive keeps taking ring buffers as data arrives whether or not anyone
/// reads them: a client that pipelines requests and never reads the answers (so hyper
/// stops reading) would take the whole ring and stall every connection of the worker.
/// A WebSocket session always drains its input; an HTTP connection may not.
pub struct UringReader {
    socket: TcpStream,
    /// The `recv` in flight, before read-ahead.
    once: Option<RecvOnce>,
    ahead: bool,
    /// The multishot receive, once reading ahead (armed at the first poll after).
    stream: Option<RecvStream>,
    /// Times in a row the ring was found empty.
    dry: u32,
    /// A pause before re-arming, after the ring stayed empty.
    backoff: Option<Pin<Box<dyn Future<Output = ()>>>>,
}

/// A multishot receive on `stream` that owns its file descriptor reference (compio's
/// `read_multi` borrows the stream for as long as it lives). It re-arms itself when the
/// kernel ends the multishot, e.g. after the ring ran out of buffers.
fn recv_multi(stream: &TcpStream) -> RecvStream {
    use compio::driver::op::{RecvFlags, RecvMulti};
    use compio::driver::ToSharedFd;
    let fd = stream.to_shared_fd();
    let rt = compio::runtime::Runtime::current();
    Box::pin(compio::runtime::SubmitMultiStream::new(move || {
        let pool = rt.buffer_pool()?;
        let op = RecvMulti::new(fd.clone(), &pool, 0, RecvFlags::empty())?;
        Ok(rt.submit_multi(op).into_managed(pool))
    }))
}

impl Reader for UringReader {
    fn read_ahead(&mut self) {
        self.ahead = true;
    }

    fn poll_recv(&mut self, cx: &mut Context<'_>, buf: &mut BytesMut) -> Poll<io::Result<usize>> {
        // A `recv` in flight finishes first, read-ahead or not: dropping it could lose what
        // it received.
        if self.once.is_some() || !self.ahead {
            let once = self.once.get_or_insert_with(|| {
                let socket = self.socket.clone();
                let into = Vec::with_capacity(RING_BUFFER_LEN);
                Box::pin(async move {
                    let mut s = &socket;
                    compio::io::AsyncRead::read(&mut s, into).await
                })
            });
            let BufResult(res, data) = ready!(once.as_mut().poll(cx));
            self.once = None;
            let n = res?;
            buf.extend_from_slice(&data[..n]);
            return Poll::Ready(Ok(n));
        }
        let socket = &self.socket;
        let stream = self.stream.get_or_insert_with(|| recv_multi(socket));
        loop {
            if let Some(pause) = self.backoff.as_mut() {
                ready!(pause.as_mut().poll(cx));
                self.backoff = None;
            }
            match ready!(stream.as_mut().poll_next(cx)) {
                Some(Ok(chunk)) => {
                    self.dry = 0;
                    buf.extend_from_slice(&chunk);
                    return Poll::Ready(Ok(chunk.len()));
                }
                // The ring ran dry (many connections received at once): the data is still
                // in the socket. Let other tasks return their buffers, then re-arm; if it
                // stays dry, back off rather than spin.
                Some(Err(e)) if e.kind() == io::ErrorKind::ResourceBusy => {
                    self.dry += 1;
                    if self.dry == 1 {
                        cx.waker().wake_by_ref();
                        return Poll::Pending;
                    }
                    let pause = Duration::from_millis(self.dry.min(50) as u64);
                    self.backoff = Some(Box::pin(compio::time::sleep(pause)));
                }
                Some(Err(e)) => return Poll::Ready(Err(e)),
                None => return Poll::Ready(Ok(0)),
            }
        }
    }
}

impl Socket for UringSocket {
    type Reader = UringReader;
    type Writer = UringWriter;

    fn split(self) -> (UringReader, UringWriter) {
        let reader = UringReader {
            socket: self.stream.clone(),
            once: None,
            ahead: false,
            stream: None,
            dry: 0,
            backoff: None,
        };
        (
            reader,
            UringWriter {
                stream: self.stream,
            },
        )
    }
}

impl Writer for UringWriter {
    async fn write(self, bufs: Vec<Bytes>) -> Written<Self> {
        let mut s = &self.stream;
        let BufResult(result, mut bufs) = s.write_vectored_all(bufs).await;
        bufs.clear();
        Written {
            writer: self,
            result,
            bufs,
        }
    }

    /// `shutdown(SHUT_WR)` through the ring: it does not wait for the peer.
    async fn shutdown(self) -> io::Result<()> {
        let mut s = &self.stream;
        s.shutdown().await
    }
}

/// hyper's timer on compio. compio's sleep is bound to its thread; hyper requires `Send`
/// futures, which is sound here because an HTTP connection never leaves its worker thread
/// (`SendWrapper` checks that at run time).
#[derive(Clone, Copy, Debug, Default)]
pub struct UringTimer;

struct UringSleep(SendWrapper<Pin<Box<dyn Future<Output = ()>>>>);

impl Future for UringSleep {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.0.as_mut().poll(cx)
    }
}

impl hyper::rt::Sleep for UringSleep {}

impl hyper::rt::Timer for UringTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(UringSleep(SendWrapper::new(Box::pin(compio::time::sleep(
            duration,
        )))))
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(UringSleep(SendWrapper::new(Box::pin(
            compio::time::sleep_until(deadline),
        ))))
    }
}

impl Runtime for Uring {
    type Socket = UringSocket;
    type Timer = UringTimer;
    const BACKEND: Backend = Backend::Uring;

    fn block_on<F: Future<Output = ()>>(main: impl FnOnce() -> F) -> io::Result<()> {
        let build = |tuned: bool| {
            let mut proactor = compio::driver::ProactorBuilder::new();
            proactor
                .capacity(4096)
                .buffer_pool_size(NonZeroU16::new(RING_BUFFERS).expect("non-zero"))
                .buffer_pool_buffer_len(RING_BUFFER_LEN);
            if tuned {
                // Only this thread submits; completions are run when it asks for them, not
                // by interrupting it (kernel 6.1+).
                proactor
                    .single_issuer(true)
                    .defer_taskrun(true)
                    .coop_taskrun(true)
                    .taskrun_flag(true);
            }
            compio::runtime::RuntimeBuilder::new()
                .with_proactor(proactor)
                .build()
        };
        let rt = match build(true) {
            Ok(rt) => rt,
            Err(e) => {
                tracing::debug!(error = %e, "io_uring set-up flags refused; using a plain ring");
                build(false)?
            }
        };
        // Create the ring buffers now, so a kernel that refuses them fails start-up.
        rt.buffer_pool()?;
        rt.block_on(main());
        Ok(())
    }

    fn spawn<F: Future<Output = ()> + 'static>(fut: F) {
        compio::runtime::spawn(fut).detach();
    }

    fn sleep(d: Duration) -> impl Future<Output = ()> {
        compio::time::sleep(d)
    }

    fn timer() -> UringTimer {
        UringTimer
    }

    async fn accept_loop(
        listener: std::net::TcpListener,
        stop: CancellationToken,
        mut on_accept: impl FnMut(UringSocket, SocketAddr),
    ) -> io::Result<()> {
        let listener = TcpListener::from_std(listener)?;
        let mut incoming = listener.incoming();
        let mut last_error = None;
        loop {
            let next = tokio::select! {
                biased;
                _ = stop.cancelled() => return Ok(()),
                next = incoming.next() => next,
            };
            match next {
                Some(Ok(stream)) => {
                    let peer = stream
                        .peer_addr()
                        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
                    stream.set_nodelay(true).ok();
                    on_accept(UringSocket { stream }, peer);
                }
                Some(Err(e)) => {
                    super::log_accept_error(&e, &mut last_error);
                    compio::time::sleep(super::ACCEPT_ERROR_PAUSE).await;
                }
                None => compio::time::sleep(super::ACCEPT_ERROR_PAUSE).await,
            }
        }
    }
}
