//! TLS over the owned-buffer seam: [`TlsSocket`] wraps either backend's [`Socket`] and is a
//! [`Socket`] itself, so HTTP and the WebSocket session run over it unchanged, on the worker
//! that accepted the connection.
//!
//! rustls is driven sans-IO:
//!
//! * **Reads.** The wrapped connection's receiver (created once, and on io_uring kept armed
//!   from the handshake through HTTP to the WebSocket session) receives ciphertext into a
//!   per-worker scratch buffer; it is handed to `read_tls` + `process_new_packets` at once,
//!   and the plaintext is appended to the caller's buffer. A connection waiting for data
//!   holds no ciphertext of its own (only what rustls keeps of a partial record).
//! * **Writes.** Plaintext goes through `writer()` (shared frames are encrypted straight
//!   from their `Bytes`, several per record), and `write_tls` collects the records into one
//!   owned buffer that is submitted as one write. rustls holds at most
//!   [`MAX_TLS_BUFFERED`] bytes for a connection: what does not fit waits, as plaintext, in
//!   the caller's queue (bounded by `--max-outbound-buffer`) until that write is done.
//! * One write to the socket is in flight at a time, whoever started it (the writer, or the
//!   reader answering a key update or sending an alert), so records go out in order: the
//!   wrapped writer lives in the shared state and is taken by whichever write starts.
//! * Shutting down sends close_notify after what is queued, for at most
//!   [`SHUTDOWN_TIMEOUT`] (a peer that stopped reading would hold it forever), then shuts
//!   the socket's sending side.
//!
//! The handshake ([`TlsSocket::handshake`]) is run before HTTP starts; its time limit is the
//! caller's. A TLS error (a bad record, an alert from the peer, a failed handshake) sends
//! rustls's alert where possible and fails that connection's reads and writes.

use std::cell::RefCell;
use std::future::{poll_fn, Future};
use std::io::{self, BufRead as _, IoSlice, Write as _};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{ready, Context, Poll, Waker};

use bytes::{Buf, Bytes, BytesMut};
use rustls::{ServerConfig, ServerConnection};

use crate::runtime::{Reader, Runtime, Socket, Writer, Written, SHUTDOWN_TIMEOUT};

/// Most ciphertext rustls queues for one connection before it must be written out; also the
/// most one write to the socket carries (plus one record).
pub const MAX_TLS_BUFFERED: usize = 64 * 1024;

/// Initial capacity of the per-worker ciphertext scratch buffer. Large enough that the epoll
/// backend reads straight into it.
const SCRATCH_LEN: usize = 32 * 1024;

/// Most slices handed to rustls at once.
const MAX_SLICES: usize = 64;

/// What a client speaking plain HTTP to the TLS port is told.
const PLAIN_HTTP_RESPONSE: &[u8] = b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\n\
Connection: close\r\nContent-Length: 47\r\n\r\nThis port speaks TLS: use https:// or wss://.\r\n";

thread_local! {
    /// Where ciphertext is received before rustls takes it (rustls copies it into its own
    /// record buffer), so connections keep no receive buffer of their own.
    static SCRATCH: RefCell<BytesMut> = RefCell::new(BytesMut::new());
}

/// The wrapped socket's halves.
type InnerReader<R> = <<R as Runtime>::Socket as Socket>::Reader;
type InnerWriter<R> = <<R as Runtime>::Socket as Socket>::Writer;
type PendingWrite<W> = Pin<Box<dyn Future<Output = Written<W>>>>;

/// A TLS server connection over a socket of runtime `R`.
pub struct TlsSocket<R: Runtime> {
    st: Rc<RefCell<State<R>>>,
}

struct State<R: Runtime> {
    tls: ServerConnection,
    /// The wrapped socket's reader, kept from the handshake on (on io_uring with its
    /// multishot receive armed). Dropped with the [`TlsReader`], which stops receiving.
    rx: Option<InnerReader<R>>,
    /// The wrapped socket's writer, while no write is in flight.
    writer: Option<InnerWriter<R>>,
    /// Ciphertext received during the handshake after its last message (normally empty and
    /// unallocated).
    cipher: BytesMut,
    /// The one write to the wrapped socket in progress (it holds the writer).
    write: Option<PendingWrite<InnerWriter<R>>>,
    /// The waker the write in progress was last polled with, and any it replaced (woken when
    /// the write ends, so a reader and a writer in different tasks both see it).
    write_waker: Option<Waker>,
    waiters: Vec<Waker>,
    /// A fatal TLS error: rustls's alert (if any) is sent, then reads and writes fail.
    tls_error: Option<String>,
    /// Writing to the wrapped connection failed: nothing more is sent.
    write_error: Option<(io::ErrorKind, String)>,
    /// The peer ended the TCP stream, or sent close_notify.
    eof: bool,
}

impl<R: Runtime> State<R> {
    /// Receives ciphertext into the worker's scratch buffer and hands it to `take`, which
    /// must consume it all. At end of stream marks `eof`.
    fn recv(
        &mut self,
        cx: &mut Context<'_>,
        take: impl FnOnce(&mut Self, &[u8]),
    ) -> Poll<io::Result<()>> {
        SCRATCH.with_borrow_mut(|scratch| {
            scratch.reserve(SCRATCH_LEN);
            let Some(rx) = self.rx.as_mut() else {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::NotConnected,
                    "TLS reader dropped",
                )));
            };
            let res = ready!(rx.poll_recv(cx, scratch));
            match res {
                Ok(0) => self.eof = true,
                Ok(_) => take(self, scratch),
                Err(_) => {}
            }
            scratch.clear();
            Poll::Ready(res.map(drop))
        })
    }
}

impl<R: Runtime> State<R> {
    /// Hands `data` to rustls, appending the plaintext it yields to `out`. Without `out`
    /// (the handshake) it stops when the handshake is complete and keeps the rest of `data`
    /// for the reader.
    fn feed(&mut self, mut data: &[u8], mut out: Option<&mut BytesMut>) -> Result<(), String> {
        while !data.is_empty() {
            if out.is_none() && !self.tls.is_handshaking() {
                self.cipher.extend_from_slice(data);
                return Ok(());
            }
            match self.tls.read_tls(&mut data) {
                // close_notify was received: nothing after it counts.
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(e.to_string()),
            }
            let io = self.tls.process_new_packets().map_err(|e| e.to_string())?;
            if let Some(out) = out.as_deref_mut() {
                self.drain_plaintext(out);
            }
            if io.peer_has_closed() {
                self.eof = true;
            }
        }
        Ok(())
    }

    /// Moves the plaintext rustls holds into `out`.
    fn drain_plaintext(&mut self, out: &mut BytesMut) {
        let mut reader = self.tls.reader();
        while let Ok(chunk) = reader.fill_buf() {
            if chunk.is_empty() {
                break;
            }
            let n = chunk.len();
            out.extend_from_slice(chunk);
            reader.consume(n);
        }
    }

    fn fail_tls(&mut self, why: String) {
        tracing::debug!(error = %why, "TLS error; closing the connection");
        self.tls_error.get_or_insert(why);
    }

    fn tls_err(&self) -> Option<io::Error> {
        self.tls_error
            .as_ref()
            .map(|why| io::Error::new(io::ErrorKind::InvalidData, format!("TLS: {why}")))
    }

    fn write_err(&self) -> Option<io::Error> {
        self.write_error
            .as_ref()
            .map(|(kind, why)| io::Error::new(*kind, why.clone()))
    }
}

impl<R: Runtime> TlsSocket<R> {
    /// Wraps `inner` as the server side of a TLS connection. Starts receiving at once (the
    /// client speaks first).
    pub fn new(inner: R::Socket, config: Arc<ServerConfig>) -> io::Result<Self> {
        let mut tls = ServerConnection::new(config).map_err(io::Error::other)?;
        tls.set_buffer_limit(Some(MAX_TLS_BUFFERED));
        let (rx, writer) = inner.split();
        Ok(Self {
            st: Rc::new(RefCell::new(State {
                tls,
                rx: Some(rx),
                writer: Some(writer),
                cipher: BytesMut::new(),
                write: None,
                write_waker: None,
                waiters: Vec::new(),
                tls_error: None,
                write_error: None,
                eof: false,
            })),
        })
    }

    /// Runs the handshake to its end. A client speaking plain HTTP is answered with a `400`
    /// saying this port speaks TLS. Not bounded in time: the caller is.
    pub async fn handshake(&self) -> io::Result<()> {
        let mut first = true;
        poll_fn(|cx| poll_handshake(&self.st, cx, &mut first)).await
    }
}

fn poll_handshake<R: Runtime>(
    st: &RefCell<State<R>>,
    cx: &mut Context<'_>,
    first: &mut bool,
) -> Poll<io::Result<()>> {
    loop {
        // Handshake messages (or an alert) go out before anything more is read.
        ready!(poll_flush(st, cx))?;
        let mut st = st.borrow_mut();
        if let Some(e) = st.tls_err() {
            return Poll::Ready(Err(e));
        }
        if !st.tls.is_handshaking() {
            return Poll::Ready(Ok(()));
        }
        if st.eof {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed during the TLS handshake",
            )));
        }
        let received = st.recv(cx, |st, data| {
            if std::mem::take(first) && looks_like_plain_http(data) {
                st.fail_tls("plain HTTP request on the TLS port".into());
                st.start_write(Bytes::from_static(PLAIN_HTTP_RESPONSE));
            } else if let Err(why) = st.feed(data, None) {
                st.fail_tls(why);
            }
        });
        ready!(received)?;
    }
}

impl<R: Runtime> State<R> {
    /// Starts writing `bytes` with the wrapped writer (which must be idle).
    fn start_write(&mut self, bytes: Bytes) {
        match self.writer.take() {
            Some(w) => self.write = Some(Box::pin(w.write(vec![bytes]))),
            None => {
                self.write_error.get_or_insert((
                    io::ErrorKind::NotConnected,
                    "the TLS connection's writer is gone".into(),
                ));
            }
        }
    }
}

/// Writes what rustls has queued for the peer, one write at a time; `Ready(Ok)` once
/// everything is out.
fn poll_flush<R: Runtime>(st: &RefCell<State<R>>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
    let mut st = st.borrow_mut();
    loop {
        if let Some(w) = st.write.as_mut() {
            let Poll::Ready(done) = w.as_mut().poll(cx) else {
                match &st.write_waker {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    _ => {
                        if let Some(prev) = st.write_waker.replace(cx.waker().clone()) {
                            st.waiters.push(prev);
                        }
                    }
                }
                return Poll::Pending;
            };
            st.write = None;
            st.write_waker = None;
            st.writer = Some(done.writer);
            for w in st.waiters.drain(..) {
                w.wake();
            }
            if let Err(e) = done.result {
                st.write_error = Some((e.kind(), e.to_string()));
                return Poll::Ready(Err(e));
            }
        }
        if let Some(e) = st.write_err() {
            return Poll::Ready(Err(e));
        }
        if !st.tls.wants_write() {
            return Poll::Ready(Ok(()));
        }
        let mut out = Collect(BytesMut::new());
        while st.tls.wants_write() {
            st.tls.write_tls(&mut out)?;
        }
        st.start_write(out.0.freeze());
    }
}

/// Encrypts and writes all of `bufs`, advancing them as they are taken.
async fn write_plain<R: Runtime>(st: &RefCell<State<R>>, bufs: &mut [Bytes]) -> io::Result<()> {
    let mut start = 0;
    loop {
        {
            let mut st = st.borrow_mut();
            if let Some(e) = st.write_err().or_else(|| st.tls_err()) {
                return Err(e);
            }
            if st.tls.is_handshaking() {
                // rustls would hold the plaintext until the handshake is done, and this
                // loop would wait for it forever: callers run the handshake first.
                return Err(io::Error::other("write before the TLS handshake completed"));
            }
            start = encrypt(&mut st.tls, bufs, start)?;
        }
        poll_fn(|cx| poll_flush(st, cx)).await?;
        if start == bufs.len() {
            return Ok(());
        }
    }
}

/// Hands rustls as much of `bufs[start..]` as it takes (up to its buffer limit), advancing a
/// partly taken `Bytes` in place; returns the index of the first buffer not fully taken.
fn encrypt(tls: &mut ServerConnection, bufs: &mut [Bytes], mut start: usize) -> io::Result<usize> {
    loop {
        while start < bufs.len() && bufs[start].is_empty() {
            start += 1;
        }
        if start == bufs.len() {
            return Ok(start);
        }
        let mut slices = [IoSlice::new(&[]); MAX_SLICES];
        let n_slices = bufs[start..]
            .iter()
            .zip(slices.iter_mut())
            .map(|(b, s)| *s = IoSlice::new(b))
            .count();
        let mut n = tls.writer().write_vectored(&slices[..n_slices])?;
        if n == 0 {
            // rustls's buffer is full: it must be written out first.
            return Ok(start);
        }
        while n > 0 {
            let b = &mut bufs[start];
            let take = n.min(b.len());
            b.advance(take);
            n -= take;
            if b.is_empty() {
                start += 1;
            }
        }
    }
}

/// Whether the first bytes of a connection are a plain HTTP request line rather than a TLS
/// record (which starts with 0x16, a handshake).
fn looks_like_plain_http(data: &[u8]) -> bool {
    data.first().is_some_and(u8::is_ascii_uppercase)
}

/// `write_tls` into one owned buffer.
struct Collect(BytesMut);

impl io::Write for Collect {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let len = bufs.iter().map(|b| b.len()).sum();
        self.0.reserve(len);
        for b in bufs {
            self.0.extend_from_slice(b);
        }
        Ok(len)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<R: Runtime> Socket for TlsSocket<R> {
    type Reader = TlsReader<R>;
    type Writer = TlsWriter<R>;

    fn split(self) -> (TlsReader<R>, TlsWriter<R>) {
        (
            TlsReader {
                st: self.st.clone(),
            },
            TlsWriter { st: self.st },
        )
    }
}

/// The plaintext writer of a [`TlsSocket`].
pub struct TlsWriter<R: Runtime> {
    st: Rc<RefCell<State<R>>>,
}

impl<R: Runtime> Writer for TlsWriter<R> {
    async fn write(self, mut bufs: Vec<Bytes>) -> Written<Self> {
        let result = write_plain(&self.st, &mut bufs).await;
        bufs.clear();
        Written {
            writer: self,
            result,
            bufs,
        }
    }

    /// Sends close_notify after what is queued (for at most [`SHUTDOWN_TIMEOUT`]), then
    /// shuts the socket's sending side.
    async fn shutdown(self) -> io::Result<()> {
        self.st.borrow_mut().tls.send_close_notify();
        let flushed = tokio::select! {
            biased;
            r = poll_fn(|cx| poll_flush(&self.st, cx)) => r.is_ok(),
            _ = R::sleep(SHUTDOWN_TIMEOUT) => false,
        };
        if !flushed {
            // The peer is not reading: dropping the write in flight ends it.
            self.st.borrow_mut().write = None;
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "close_notify not taken by the peer",
            ));
        }
        let writer = self.st.borrow_mut().writer.take();
        match writer {
            Some(w) => w.shutdown().await,
            None => Ok(()),
        }
    }
}

/// The plaintext reader of a [`TlsSocket`]. Dropping it stops receiving on the wrapped
/// socket too.
pub struct TlsReader<R: Runtime> {
    st: Rc<RefCell<State<R>>>,
}

impl<R: Runtime> Drop for TlsReader<R> {
    fn drop(&mut self) {
        if let Ok(mut st) = self.st.try_borrow_mut() {
            st.rx = None;
        }
    }
}

impl<R: Runtime> Reader for TlsReader<R> {
    fn read_ahead(&mut self) {
        if let Some(rx) = self.st.borrow_mut().rx.as_mut() {
            rx.read_ahead();
        }
    }

    fn poll_recv(&mut self, cx: &mut Context<'_>, buf: &mut BytesMut) -> Poll<io::Result<usize>> {
        let start = buf.len();
        loop {
            // What rustls wants sent (a key update, an alert) goes out alongside reading;
            // a write error shows on the next write.
            let flushed = poll_flush(&self.st, cx).is_ready();
            let mut st = self.st.borrow_mut();
            if let Some(e) = st.tls_err() {
                // Fail once the alert is out.
                return if flushed {
                    Poll::Ready(Err(e))
                } else {
                    Poll::Pending
                };
            }
            st.drain_plaintext(buf);
            if buf.len() > start {
                return Poll::Ready(Ok(buf.len() - start));
            }
            if st.eof {
                return Poll::Ready(Ok(0));
            }
            let st = &mut *st;
            if !st.cipher.is_empty() {
                let cipher = std::mem::take(&mut st.cipher);
                if let Err(why) = st.feed(&cipher, Some(buf)) {
                    st.fail_tls(why);
                }
                continue;
            }
            let received = st.recv(cx, |st, data| {
                if let Err(why) = st.feed(data, Some(buf)) {
                    st.fail_tls(why);
                }
            });
            ready!(received)?;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::TcpStream;
    use std::time::Instant;

    use super::*;
    use crate::runtime::seam_tests::{on_both_backends, with_accepted, Stalling, STALLED};

    pub(crate) fn tls_config() -> (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.der().clone()).unwrap();
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        (Arc::new(server), Arc::new(client))
    }

    fn tls_shutdown_is_bounded_when_the_socket_takes_no_more<R: Runtime>() {
        let (server_config, client_config) = tls_config();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        with_accepted::<Stalling<R>, _>(
            move |addr| {
                let name = "localhost".try_into().unwrap();
                let mut tls = rustls::ClientConnection::new(client_config, name).unwrap();
                let mut tcp = TcpStream::connect(addr).unwrap();
                while tls.is_handshaking() {
                    tls.complete_io(&mut tcp).unwrap();
                }
                // Connected; it reads nothing more until the server is done.
                let _ = done_rx.recv();
            },
            |socket| async move {
                STALLED.set(false);
                let tls = TlsSocket::<Stalling<R>>::new(socket, server_config).unwrap();
                tls.handshake().await.unwrap();
                let (_rx, writer) = tls.split();
                STALLED.set(true);
                let started = Instant::now();
                let shut = tokio::select! {
                    biased;
                    r = writer.shutdown() => r,
                    _ = R::sleep(SHUTDOWN_TIMEOUT * 3) => panic!("TLS shutdown was not bounded"),
                };
                assert_eq!(
                    shut.unwrap_err().kind(),
                    io::ErrorKind::TimedOut,
                    "close_notify could not be sent"
                );
                assert!(
                    started.elapsed() >= SHUTDOWN_TIMEOUT,
                    "it did wait for the peer"
                );
                STALLED.set(false);
                done_tx.send(()).unwrap();
            },
        );
    }

    on_both_backends!(tls_shutdown_is_bounded_when_the_socket_takes_no_more);
}
