//! The kernel's floor under a fan-out delivery: one WebSocket frame of a 100-byte event
//! (160 bytes on the wire) written to each of 1,000 loopback TCP sockets — with `write(2)`
//! one socket after another (the epoll way), and as 1,000 `IORING_OP_SEND`s in one
//! io_uring submission — while a thread on another CPU drains the receiving ends, as the
//! clients of a load test do. Nothing of ringcast runs here: ringcast's server CPU per
//! delivery in the 1 × 1,000 fan-out (`just loadtest-fanout`) divided by this figure says
//! how far above the floor it is (README, "Performance").
//!
//! The sending thread runs on CPU 0 and the drain thread on CPU 1 (as `just loadtest-*`
//! places the server and the harness); on a one-CPU machine they share it.

use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use io_uring::{opcode, types, IoUring};

const SOCKETS: usize = 1000;
const FRAME_LEN: usize = 160;

/// `SOCKETS` connected pairs: the sending ends, and the receiving ends drained by a thread.
struct Pairs {
    senders: Vec<TcpStream>,
    stop: Arc<AtomicBool>,
    drain: Option<std::thread::JoinHandle<()>>,
}

impl Pairs {
    fn new() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut receivers = Vec::with_capacity(SOCKETS);
        let mut senders = Vec::with_capacity(SOCKETS);
        for _ in 0..SOCKETS {
            let r = TcpStream::connect(addr).unwrap();
            let (s, _) = listener.accept().unwrap();
            s.set_nodelay(true).unwrap();
            r.set_nonblocking(true).unwrap();
            receivers.push(r);
            senders.push(s);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let drain = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                pin(1);
                drain(receivers, &stop)
            })
        };
        Self {
            senders,
            stop,
            drain: Some(drain),
        }
    }

    fn fds(&self) -> Vec<RawFd> {
        self.senders.iter().map(AsRawFd::as_raw_fd).collect()
    }
}

impl Drop for Pairs {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(d) = self.drain.take() {
            let _ = d.join();
        }
    }
}

/// Reads and discards whatever arrives on `sockets` until `stop`.
fn drain(sockets: Vec<TcpStream>, stop: &AtomicBool) {
    // SAFETY: plain epoll calls on descriptors this thread owns; `events` outlives each wait.
    unsafe {
        let ep = libc::epoll_create1(0);
        assert!(ep >= 0);
        for (i, s) in sockets.iter().enumerate() {
            let mut ev = libc::epoll_event {
                events: libc::EPOLLIN as u32,
                u64: i as u64,
            };
            libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, s.as_raw_fd(), &mut ev);
        }
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
        let mut buf = vec![0u8; 1 << 16];
        while !stop.load(Ordering::Relaxed) {
            let n = libc::epoll_wait(ep, events.as_mut_ptr(), events.len() as i32, 50);
            for e in &events[..n.max(0) as usize] {
                let fd = sockets[e.u64 as usize].as_raw_fd();
                while libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) > 0 {}
            }
        }
        libc::close(ep);
    }
}

/// Pins the calling thread to `cpu`, if the machine has it.
fn pin(cpu: usize) {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpu >= cpus {
        return;
    }
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET writes within it; the call affects
    // only this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

fn frame() -> Vec<u8> {
    let mut f = vec![0x81, 126, 0, (FRAME_LEN - 4) as u8];
    f.resize(FRAME_LEN, b'x');
    f
}

fn floor(c: &mut Criterion) {
    pin(0);
    let pairs = Pairs::new();
    let fds = pairs.fds();
    let frame = frame();
    let mut group = c.benchmark_group("kernel_floor_1000_sockets");
    group.throughput(Throughput::Elements(SOCKETS as u64));
    group.measurement_time(Duration::from_secs(8));

    group.bench_function("write", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                for &fd in &fds {
                    // SAFETY: writing from a live buffer to a socket this process owns.
                    let n = unsafe { libc::write(fd, frame.as_ptr().cast(), frame.len()) };
                    assert_eq!(n, frame.len() as isize);
                }
            }
            start.elapsed()
        })
    });

    let mut ring = IoUring::new(2 * SOCKETS as u32).unwrap();
    group.bench_function("io_uring_send_one_submit", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                {
                    let mut sq = ring.submission();
                    for (i, &fd) in fds.iter().enumerate() {
                        let send =
                            opcode::Send::new(types::Fd(fd), frame.as_ptr(), frame.len() as u32)
                                .build()
                                .user_data(i as u64);
                        // SAFETY: `frame` outlives the operation (completions are reaped below).
                        unsafe { sq.push(&send).unwrap() };
                    }
                }
                ring.submit_and_wait(SOCKETS).unwrap();
                let mut done = 0;
                for cqe in ring.completion() {
                    assert_eq!(cqe.result(), frame.len() as i32);
                    done += 1;
                }
                assert_eq!(done, SOCKETS);
            }
            start.elapsed()
        })
    });
    group.finish();
}

criterion_group!(benches, floor);
criterion_main!(benches);
