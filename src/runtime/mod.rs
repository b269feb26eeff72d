//! The IO backends and the seam between them and everything else.
//!
//! Two backends implement [`Runtime`]: [`uring::Uring`] (io_uring through compio: multishot
//! accept, multishot receive into a per-worker provided-buffer ring, vectored sends) and
//! [`epoll::Epoll`] (a current-thread tokio runtime per worker, reading into a per-worker
//! scratch buffer). The backend is chosen once at start-up ([`select_backend`]); the code
//! above the seam — HTTP, WebSocket framing, the Pusher protocol, the hub — is generic over
//! [`Runtime`] and monomorphised for each, with no dynamic dispatch on the data path.

pub mod affinity;
pub mod epoll;
pub mod probe;
pub mod tls;
pub mod uring;

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio_util::sync::CancellationToken;

use crate::config::IoMode;

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

/// What the WebSocket session takes over from the HTTP phase: the receiver itself (on
/// io_uring, with its multishot receive still armed, so nothing in flight is lost) and the
/// bytes already received after the upgrade request, in order.
pub struct Leftover<R> {
    /// Received, not yet processed.
    pub buf: BytesMut,
    /// The receiver.
    pub rx: R,
}

/// The owned-buffer IO seam: one accepted TCP connection.
///
/// Every method takes `&self`, so a connection's reader and writer can run concurrently
/// inside one task.
pub trait Connection: Sized + 'static {
    /// The receiver of the connection's incoming bytes. It holds no buffer while waiting:
    /// the backend receives into per-worker memory (a provided-buffer ring, or a scratch
    /// buffer) and copies out only what arrived.
    type Reader: Receive + Unpin + 'static;

    /// The connection's receiver (one at a time).
    fn reader(self: &Rc<Self>) -> Self::Reader;

    /// Writes all of `buf`.
    fn write_all(&self, buf: Bytes) -> impl Future<Output = io::Result<()>>;

    /// Writes all of `bufs` in as few vectored writes as the kernel allows, handing the
    /// vector back for reuse. The `Bytes` are written as they are: shared frames are not
    /// copied.
    fn write_all_vectored(
        &self,
        bufs: Vec<Bytes>,
    ) -> impl Future<Output = (io::Result<()>, Vec<Bytes>)>;

    /// Shuts down the sending side (FIN).
    fn shutdown(&self) -> impl Future<Output = io::Result<()>>;
}

/// The receiving side of a [`Connection`]. Poll-based, so a connection waiting for data
/// keeps no future state: only the receiver itself.
pub trait Receive {
    /// Polls for bytes, appending them to `buf` (which may be empty and unallocated).
    /// `Ready(Ok(0))` means end of stream.
    fn poll_recv(&mut self, cx: &mut Context<'_>, buf: &mut BytesMut) -> Poll<io::Result<usize>>;
}

/// A worker's runtime: task spawning, timers, accepting and running to completion.
pub trait Runtime: Sized + 'static {
    /// The connection type.
    type Conn: Connection;
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
        on_accept: impl FnMut(Self::Conn, SocketAddr),
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
