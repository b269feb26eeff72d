//! The seam's contract on both backends, over real loopback sockets: bytes arrive whole
//! and in order each way, the reader sees the end of the stream, a writer comes back after
//! each write, and shutdown does not wait for the peer. (TLS's bounded shutdown is tested
//! in `tls`, with [`Stalling`] sockets from here.)
//!
//! One reader, one write in flight and the end of writing after a dropped write are
//! enforced by the types: see the `compile_fail` examples on [`Socket`].

use std::cell::{Cell, RefCell};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::rc::Rc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::*;

/// Runs `client` on a thread against a fresh listener, and `test` on runtime `R` with the
/// server side of the connection it makes.
pub(crate) fn with_accepted<R: Runtime, Fut: Future<Output = ()>>(
    client: impl FnOnce(SocketAddr) + Send + 'static,
    test: impl FnOnce(R::Socket) -> Fut,
) {
    with_accepted_n::<R, _>(1, client, |mut sockets| test(sockets.remove(0)));
}

/// [`with_accepted`] for a client that makes `n` connections, handed over in the order
/// they were accepted.
fn with_accepted_n<R: Runtime, Fut: Future<Output = ()>>(
    n: usize,
    client: impl FnOnce(SocketAddr) + Send + 'static,
    test: impl FnOnce(Vec<R::Socket>) -> Fut,
) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let client = std::thread::spawn(move || client(addr));
    R::block_on(|| async move {
        let accepted = Rc::new(RefCell::new(Vec::new()));
        let stop = CancellationToken::new();
        let (slot, stopper) = (accepted.clone(), stop.clone());
        R::accept_loop(listener, stop, move |socket, _| {
            slot.borrow_mut().push(socket);
            if slot.borrow().len() == n {
                stopper.cancel();
            }
        })
        .await
        .unwrap();
        let sockets = std::mem::take(&mut *accepted.borrow_mut());
        test(sockets).await;
    })
    .unwrap();
    client.join().unwrap();
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 % 251) as u8).collect()
}

async fn read_to_end(rx: &mut impl Reader) -> Vec<u8> {
    let mut buf = BytesMut::new();
    loop {
        let n = std::future::poll_fn(|cx| rx.poll_recv(cx, &mut buf))
            .await
            .unwrap();
        if n == 0 {
            return buf.to_vec();
        }
    }
}

fn bytes_arrive_in_order_then_end_of_stream<R: Runtime>() {
    let sent = pattern(300_000);
    let expected = sent.clone();
    with_accepted::<R, _>(
        move |addr| {
            let mut s = TcpStream::connect(addr).unwrap();
            for chunk in sent.chunks(1000) {
                s.write_all(chunk).unwrap();
            }
            s.shutdown(Shutdown::Write).unwrap();
        },
        |socket| async move {
            let (mut rx, _writer) = socket.split();
            assert_eq!(read_to_end(&mut rx).await, expected);
        },
    );
}

fn writes_arrive_whole_and_in_order_and_the_writer_comes_back<R: Runtime>() {
    let first: Vec<Bytes> = (1..=200).map(|n| Bytes::from(pattern(n * 37))).collect();
    let second = vec![Bytes::from(pattern(2 << 20)), Bytes::from_static(b"end")];
    let expected: Vec<u8> = first
        .iter()
        .chain(&second)
        .flat_map(|b| b.to_vec())
        .collect();
    let (tx, rx) = std::sync::mpsc::channel();
    with_accepted::<R, _>(
        move |addr| {
            let mut s = TcpStream::connect(addr).unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).unwrap();
            tx.send(got).unwrap();
        },
        |socket| async move {
            let (_rx, writer) = socket.split();
            let done = writer.write(first).await;
            done.result.unwrap();
            assert!(done.bufs.is_empty(), "the vector comes back emptied");
            let done = done.writer.write(second).await;
            done.result.unwrap();
            done.writer.shutdown().await.unwrap();
        },
    );
    assert_eq!(rx.recv().unwrap(), expected);
}

/// A reader whose consumer stops asking (an HTTP connection whose answers back up) holds
/// no receive memory that other connections of the worker need: with 3 MiB arriving for
/// it (more than an io_uring worker's whole receive ring), another connection still
/// receives.
fn an_unread_connection_leaves_receive_memory_to_others<R: Runtime>() {
    with_accepted_n::<R, _>(
        2,
        |addr| {
            let mut hog = TcpStream::connect(addr).unwrap();
            let mut other = TcpStream::connect(addr).unwrap();
            hog.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
            hog.write_all(b"first").unwrap();
            // Until the kernel's buffers are full, or the test is over.
            let chunk = pattern(64 * 1024);
            for _ in 0..48 {
                if hog.write_all(&chunk).is_err() {
                    break;
                }
            }
            other.write_all(b"hello").unwrap();
            let mut answer = [0u8; 2];
            other.read_exact(&mut answer).unwrap();
            assert_eq!(&answer, b"ok");
        },
        |sockets| async move {
            let mut sockets = sockets.into_iter();
            let (mut hog, _hog_writer) = sockets.next().unwrap().split();
            let (mut other, other_writer) = sockets.next().unwrap().split();
            // The hog's reader is asked once, then left alone while its data arrives.
            let mut buf = BytesMut::new();
            std::future::poll_fn(|cx| hog.poll_recv(cx, &mut buf))
                .await
                .unwrap();
            R::sleep(Duration::from_millis(500)).await;
            let mut got = BytesMut::new();
            let received = async {
                while got.len() < 5 {
                    std::future::poll_fn(|cx| other.poll_recv(cx, &mut got))
                        .await
                        .unwrap();
                }
            };
            tokio::select! {
                _ = received => {}
                _ = R::sleep(Duration::from_secs(5)) => panic!("the other connection received nothing"),
            }
            assert_eq!(&got[..], b"hello");
            let done = other_writer.write(vec![Bytes::from_static(b"ok")]).await;
            done.result.unwrap();
        },
    );
}

fn shutdown_ends_the_stream_without_waiting_for_the_peer<R: Runtime>() {
    let (tx, rx) = std::sync::mpsc::channel();
    with_accepted::<R, _>(
        move |addr| {
            let mut s = TcpStream::connect(addr).unwrap();
            // Nothing is read until the server has shut down.
            let mut got = Vec::new();
            s.read_to_end(&mut got).unwrap();
            tx.send(got.len()).unwrap();
        },
        |socket| async move {
            let (_rx, writer) = socket.split();
            let done = writer.write(vec![Bytes::from(pattern(100))]).await;
            done.result.unwrap();
            let shut = tokio::select! {
                biased;
                r = done.writer.shutdown() => r,
                _ = R::sleep(SHUTDOWN_TIMEOUT) => panic!("shutdown waited for the peer"),
            };
            shut.unwrap();
        },
    );
    assert_eq!(
        rx.recv().unwrap(),
        100,
        "the peer saw the bytes, then the end"
    );
}

thread_local! {
    /// Whether [`Stalling`] sockets take no more bytes.
    pub(crate) static STALLED: Cell<bool> = const { Cell::new(false) };
}

/// Runtime `R` whose sockets' writes never complete once [`STALLED`] is set: a peer that
/// stopped reading, with every buffer on the way full.
pub(crate) struct Stalling<R>(std::marker::PhantomData<R>);

pub(crate) struct StallingSocket<S>(S);

pub(crate) struct StallingWriter<W>(W);

impl<S: Socket> Socket for StallingSocket<S> {
    type Reader = S::Reader;
    type Writer = StallingWriter<S::Writer>;

    fn split(self) -> (S::Reader, StallingWriter<S::Writer>) {
        let (rx, writer) = self.0.split();
        (rx, StallingWriter(writer))
    }
}

impl<W: Writer> Writer for StallingWriter<W> {
    async fn write(self, bufs: Vec<Bytes>) -> Written<Self> {
        if STALLED.get() {
            std::future::pending::<()>().await;
        }
        let done = self.0.write(bufs).await;
        Written {
            writer: StallingWriter(done.writer),
            result: done.result,
            bufs: done.bufs,
        }
    }

    async fn shutdown(self) -> io::Result<()> {
        self.0.shutdown().await
    }
}

impl<R: Runtime> Runtime for Stalling<R> {
    type Socket = StallingSocket<R::Socket>;
    type Timer = R::Timer;
    const BACKEND: Backend = R::BACKEND;

    fn block_on<F: Future<Output = ()>>(main: impl FnOnce() -> F) -> io::Result<()> {
        R::block_on(main)
    }

    fn spawn<F: Future<Output = ()> + 'static>(fut: F) {
        R::spawn(fut)
    }

    fn sleep(d: Duration) -> impl Future<Output = ()> {
        R::sleep(d)
    }

    fn timer() -> R::Timer {
        R::timer()
    }

    async fn accept_loop(
        listener: std::net::TcpListener,
        stop: CancellationToken,
        mut on_accept: impl FnMut(Self::Socket, SocketAddr),
    ) -> io::Result<()> {
        R::accept_loop(listener, stop, move |s, peer| {
            on_accept(StallingSocket(s), peer)
        })
        .await
    }
}

/// `mod name { fn uring(); fn epoll(); }` running `name::<Uring>()` and `name::<Epoll>()`.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[test]
                fn uring() {
                    super::$name::<$crate::runtime::uring::Uring>()
                }
                #[test]
                fn epoll() {
                    super::$name::<$crate::runtime::epoll::Epoll>()
                }
            }
        )*
    };
}

pub(crate) use on_both_backends;

on_both_backends!(
    bytes_arrive_in_order_then_end_of_stream,
    writes_arrive_whole_and_in_order_and_the_writer_comes_back,
    shutdown_ends_the_stream_without_waiting_for_the_peer,
    an_unread_connection_leaves_receive_memory_to_others,
);
