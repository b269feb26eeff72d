//! The IO backends and the seam between them and everything else.
//!
//! Two backends implement [`Runtime`]: [`uring::Uring`] (io_uring through compio: multishot
//! accept, multishot receive into a per-worker provided-buffer ring, vectored sends) and
//! [`epoll::Epoll`] (a current-thread tokio runtime per worker, reading into a per-worker
//! scratch buffer). The backend is chosen once at start-up ([`select_backend`]); the code
//! above the seam — HTTP, the WebSocket session — is generic over [`Runtime`] and
//! [`Socket`] and monomorphised for each, with no dynamic dispatch on the data path.
//! [`Socket`] states the seam's contract; TLS ([`crate::tls`]) is one more `Socket` over
//! either backend's.

pub mod affinity;
pub mod epoll;
pub mod probe;
#[cfg(test)]
pub(crate) mod seam_tests;
pub mod uring;

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio_util::sync::CancellationToken;

/// Most workers one process can run.
pub const MAX_WORKERS: usize = 256;

/// Which IO backend the workers run on (`--io`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum IoMode {
    /// io_uring when this kernel and sandbox allow it, epoll otherwise.
    Auto,
    /// io_uring through compio; refuse to start if it is unavailable.
    Uring,
    /// epoll through a current-thread tokio runtime per worker.
    Epoll,
}

/// The IO backend in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// io_uring through compio.
    Uring,
    /// epoll through tokio.
    Epoll,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Uring => "io_uring",
            Self::Epoll => "epoll",
        })
    }
}

/// Why the backend was chosen, for the start-up log.
#[derive(Debug, Clone)]
pub struct BackendChoice {
    /// The backend.
    pub backend: Backend,
    /// Why.
    pub reason: String,
}

/// Resolves `--io` into a backend. `auto` probes io_uring and falls back to epoll with the
/// reason; a forced `uring` that cannot work is an error, never a panic.
pub fn select_backend(mode: IoMode) -> Result<BackendChoice, String> {
    match mode {
        IoMode::Epoll => Ok(BackendChoice {
            backend: Backend::Epoll,
            reason: "requested with --io epoll".into(),
        }),
        IoMode::Uring => match probe::probe_uring() {
            Ok(()) => Ok(BackendChoice {
                backend: Backend::Uring,
                reason: "requested with --io uring".into(),
            }),
            Err(why) => Err(format!(
                "--io uring requested but io_uring is unavailable: {why} \
                 (use --io auto or --io epoll)"
            )),
        },
        IoMode::Auto => Ok(match probe::probe_uring() {
            Ok(()) => BackendChoice {
                backend: Backend::Uring,
                reason: "io_uring probe passed".into(),
            },
            Err(why) => BackendChoice {
                backend: Backend::Epoll,
                reason: format!("falling back to epoll: {why}"),
            },
        }),
    }
}

/// What the WebSocket session takes over from the HTTP phase: the reader itself (on
/// io_uring, with its multishot receive still armed, so nothing in flight is lost) and the
/// bytes already received after the upgrade request, in order.
pub struct Leftover<R> {
    /// Received, not yet processed.
    pub buf: BytesMut,
    /// The reader.
    pub rx: R,
}

/// Longest [`Writer::shutdown`] may take.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// The owned-buffer IO seam: one accepted TCP connection (or TLS over one).
///
/// # Contract
///
/// * **One reader, one writer.** [`Socket::split`] consumes the socket and hands out its
///   only [`Reader`] and its only [`Writer`]: no second reader can be made (on io_uring a
///   second one would arm a second multishot receive, and the two would share the bytes),
///   and no second writer.
/// * **One write in flight.** [`Writer::write`] takes the writer by value and gives it back
///   when the write completes, so a second write cannot start before the first has ended
///   (two interleaved writers would mix their bytes on the wire).
/// * **A dropped write ends writing.** Dropping a write's future cancels it (on io_uring,
///   in the kernel) and drops the writer with it: any prefix of the buffers may have been
///   sent, so the stream is no longer a sequence of whole frames, and the type system
///   leaves nothing to write it with. The connection can only be closed.
/// * **Bounded shutdown.** [`Writer::shutdown`] returns within [`SHUTDOWN_TIMEOUT`], even
///   when the peer has stopped reading (TLS sends close_notify first, which such a peer
///   would otherwise hold forever).
///
/// The rules the types enforce are checked by the compiler; these do not compile:
///
/// ```compile_fail,E0382
/// # use ringcast::runtime::{Socket, Writer};
/// fn two_writes_in_flight<W: Writer>(w: W) {
///     let first = w.write(vec![]);
///     let second = w.write(vec![]); // `w` moved into the first write
/// }
/// ```
///
/// ```compile_fail,E0382
/// # use ringcast::runtime::{Socket, Writer};
/// fn write_after_a_dropped_write<W: Writer>(w: W) {
///     drop(w.write(vec![]));
///     let again = w.write(vec![]); // the writer went with the dropped write
/// }
/// ```
///
/// ```compile_fail,E0382
/// # use ringcast::runtime::Socket;
/// fn two_readers<S: Socket>(s: S) {
///     let (first, _) = s.split();
///     let (second, _) = s.split(); // the socket was consumed by the first split
/// }
/// ```
///
/// The rest (ordering, end of stream, the shutdown bound) is tested on both backends, in
/// `runtime/seam_tests.rs` and, for TLS, `tls/conn.rs`.
pub trait Socket: Sized + 'static {
    /// The receiving half.
    type Reader: Reader;
    /// The sending half.
    type Writer: Writer;

    /// Splits the connection into its only reader and its only writer.
    fn split(self) -> (Self::Reader, Self::Writer);
}

/// The receiving half of a [`Socket`]. Poll-based, so a connection waiting for data keeps
/// no future state and no buffer: the backend receives into per-worker memory (a
/// provided-buffer ring, or a scratch buffer) and copies out only what arrived. Dropping
/// it stops receiving.
pub trait Reader: Unpin + 'static {
    /// Polls for bytes, appending them to `buf` (which may be empty and unallocated).
    /// `Ready(Ok(0))` means end of stream.
    fn poll_recv(&mut self, cx: &mut Context<'_>, buf: &mut BytesMut) -> Poll<io::Result<usize>>;

    /// From now on the consumer reads whenever data is there (a WebSocket session, which
    /// always drains its input), so the backend may receive ahead of it (io_uring: a
    /// multishot receive into the worker's shared ring). Until then a reader receives only
    /// while polled, into memory of its own, and takes nothing other connections need when
    /// its consumer stops asking (an HTTP connection whose answers back up).
    fn read_ahead(&mut self) {}
}

/// The sending half of a [`Socket`]; see the contract there.
pub trait Writer: Sized + Unpin + 'static {
    /// Writes all of `bufs`, in order, in as few vectored writes as the kernel allows. The
    /// `Bytes` are written as they are (shared frames are not copied); the vector comes
    /// back emptied, for reuse, with the writer.
    fn write(self, bufs: Vec<Bytes>) -> impl Future<Output = Written<Self>>;

    /// Shuts down the sending side (FIN, after close_notify on TLS), within
    /// [`SHUTDOWN_TIMEOUT`].
    fn shutdown(self) -> impl Future<Output = io::Result<()>>;
}

/// A finished [`Writer::write`]: the writer back, the outcome, and the emptied vector.
pub struct Written<W> {
    /// The writer, ready for the next write.
    pub writer: W,
    /// Whether everything was written.
    pub result: io::Result<()>,
    /// The vector that was written, emptied.
    pub bufs: Vec<Bytes>,
}

/// A worker's runtime: task spawning, timers, accepting and running to completion.
pub trait Runtime: Sized + 'static {
    /// An accepted connection.
    type Socket: Socket;
    /// The timer hyper uses for its header timeout.
    type Timer: hyper::rt::Timer + Send + Sync + Clone + 'static;
    /// Which backend this is.
    const BACKEND: Backend;

    /// Builds the runtime on the calling thread and runs `main` to completion. An error
    /// building the runtime is returned before `main` runs.
    fn block_on<F: Future<Output = ()>>(main: impl FnOnce() -> F) -> io::Result<()>;

    /// Spawns a task on this worker.
    fn spawn<F: Future<Output = ()> + 'static>(fut: F);

    /// Sleeps.
    fn sleep(d: Duration) -> impl Future<Output = ()>;

    /// A timer for hyper.
    fn timer() -> Self::Timer;

    /// Accepts connections on `listener` and hands each to `on_accept`, until `stop` is
    /// cancelled. Accept errors (e.g. out of file descriptors) are logged and retried
    /// after a pause, never fatal.
    fn accept_loop(
        listener: std::net::TcpListener,
        stop: CancellationToken,
        on_accept: impl FnMut(Self::Socket, SocketAddr),
    ) -> impl Future<Output = io::Result<()>>;
}

/// A boxed local future.
pub type LocalBoxFuture = Pin<Box<dyn Future<Output = ()>>>;

/// The worker's runtime, for code that is not generic over [`Runtime`] (protocol handlers,
/// publishing): spawning and sleeping through one indirection, off the data path.
pub trait RtHandle {
    /// Spawns a task on this worker.
    fn spawn(&self, fut: LocalBoxFuture);
    /// Sleeps.
    fn sleep(&self, d: Duration) -> LocalBoxFuture;
}

/// [`RtHandle`] for a [`Runtime`].
pub struct Handle<R>(std::marker::PhantomData<R>);

impl<R> Default for Handle<R> {
    fn default() -> Self {
        Self(std::marker::PhantomData)
    }
}

impl<R: Runtime> RtHandle for Handle<R> {
    fn spawn(&self, fut: LocalBoxFuture) {
        R::spawn(fut);
    }

    fn sleep(&self, d: Duration) -> LocalBoxFuture {
        Box::pin(R::sleep(d))
    }
}

/// Yields once to the executor.
pub fn yield_now() -> impl Future<Output = ()> {
    struct YieldNow(bool);
    impl Future for YieldNow {
        type Output = ();
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            if self.0 {
                return Poll::Ready(());
            }
            self.0 = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }
    YieldNow(false)
}

/// How long the accept loop pauses after an error such as EMFILE.
pub(crate) const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// Logs an accept error, at most once a second per worker.
pub(crate) fn log_accept_error(e: &io::Error, last: &mut Option<std::time::Instant>) {
    let now = std::time::Instant::now();
    if last.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1)) {
        *last = Some(now);
        tracing::warn!(error = %e, "accept failed; retrying (is the open files limit reached?)");
    }
}

/// How long start-up waits for another listener on the port to go away.
pub const LISTENER_WAIT: Duration = Duration::from_secs(3);

/// Binds `n` listeners on `addr` with SO_REUSEPORT, so the kernel spreads new connections
/// over the workers. With port 0 the first listener picks the port and the others join it.
///
/// SO_REUSEPORT would also let a second process of the same user join a port already
/// listened on and silently take half its connections: a port with a listener already is
/// an error, as it would be without SO_REUSEPORT. A listener that goes away within
/// [`LISTENER_WAIT`] is waited for: a process that just exited may still hold its socket
/// for a moment (an io_uring instance is torn down asynchronously), and a restart must
/// not fail on that. Connections of a previous instance still closing do not count.
pub fn bind_listeners(addr: SocketAddr, n: usize) -> io::Result<Vec<std::net::TcpListener>> {
    use socket2::{Domain, Protocol, Socket, Type};
    if addr.port() != 0 && listener_exists(addr) {
        tracing::info!(%addr, "another listener holds this port; waiting for it to close");
        let deadline = std::time::Instant::now() + LISTENER_WAIT;
        while listener_exists(addr) {
            if std::time::Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    "another process is already listening on this port",
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let mut out = Vec::with_capacity(n);
    let mut addr = addr;
    for _ in 0..n {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket.set_nonblocking(true)?;
        if addr.is_ipv6() {
            socket.set_only_v6(false).ok();
        }
        socket.bind(&addr.into())?;
        socket.listen(4096)?;
        let listener: std::net::TcpListener = socket.into();
        addr = listener.local_addr()?;
        out.push(listener);
    }
    Ok(out)
}

/// Whether a socket on this host listens on `addr`'s port at an address that overlaps it,
/// from /proc/net/tcp and /proc/net/tcp6.
fn listener_exists(addr: SocketAddr) -> bool {
    const LISTEN: &str = "0A";
    let wanted = addr.ip();
    ["/proc/net/tcp", "/proc/net/tcp6"].iter().any(|path| {
        std::fs::read_to_string(path).is_ok_and(|table| {
            table.lines().skip(1).any(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                let (Some(local), Some(state)) = (fields.get(1), fields.get(3)) else {
                    return false;
                };
                let Some((ip_hex, port_hex)) = local.split_once(':') else {
                    return false;
                };
                if *state != LISTEN || u16::from_str_radix(port_hex, 16) != Ok(addr.port()) {
                    return false;
                }
                match parse_proc_ip(ip_hex) {
                    Some(ip) => ip.is_unspecified() || wanted.is_unspecified() || ip == wanted,
                    None => true,
                }
            })
        })
    })
}

/// An address as /proc/net/tcp{,6} prints it: 32-bit words in host byte order, in hex.
fn parse_proc_ip(hex: &str) -> Option<std::net::IpAddr> {
    let words: Vec<u32> = (0..hex.len() / 8)
        .map(|i| u32::from_str_radix(&hex[i * 8..i * 8 + 8], 16).ok())
        .collect::<Option<_>>()?;
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
    match bytes.len() {
        4 => Some(std::net::IpAddr::from(<[u8; 4]>::try_from(bytes).ok()?)),
        16 => {
            let v6 = std::net::Ipv6Addr::from(<[u8; 16]>::try_from(bytes).ok()?);
            Some(
                v6.to_ipv4_mapped()
                    .map_or(std::net::IpAddr::V6(v6), std::net::IpAddr::V4),
            )
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_addresses_parse() {
        assert_eq!(
            parse_proc_ip("0100007F"),
            Some("127.0.0.1".parse().unwrap())
        );
        assert_eq!(parse_proc_ip("00000000"), Some("0.0.0.0".parse().unwrap()));
        assert_eq!(
            parse_proc_ip("00000000000000000000000000000000"),
            Some("::".parse().unwrap())
        );
        assert_eq!(
            parse_proc_ip("0000000000000000FFFF00000100007F"),
            Some("127.0.0.1".parse().unwrap())
        );
    }

    #[test]
    fn a_listening_port_is_seen() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        assert!(listener_exists(l.local_addr().unwrap()));
        let port = l.local_addr().unwrap().port();
        drop(l);
        assert!(!listener_exists(SocketAddr::from(([127, 0, 0, 1], port))));
    }
}
