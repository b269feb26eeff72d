//! Start-up and shutdown: choose the backend, bind one SO_REUSEPORT listener per worker,
//! start the pinned worker threads, wait for signals, drain.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::AtomicUsize;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context as _};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::hub::{self, ChannelIndex, InboxReceiver};
use crate::metrics::WorkerStats;
use crate::runtime::{self, affinity, epoll::Epoll, uring::Uring, Backend, Runtime};
use crate::session;
use crate::webhooks::Webhooks;
use crate::worker::{Shared, Worker};

/// Messages each worker inbox can hold.
const INBOX_CAPACITY: usize = 16 * 1024;
/// Most cache channels whose last event is kept (over all apps).
const MAX_CACHED_CHANNELS: usize = 100_000;

enum Event {
    Signal(i32),
    WorkerExited(usize, Result<(), String>),
}

/// Runs the server until SIGTERM/SIGINT and a graceful drain, or until a worker fails.
pub fn run(config: Config) -> anyhow::Result<()> {
    let choice = runtime::select_backend(config.io).map_err(|e| anyhow!(e))?;
    match choice.backend {
        Backend::Uring => {
            tracing::info!(backend = %choice.backend, reason = %choice.reason, "IO backend")
        }
        Backend::Epoll => {
            tracing::warn!(backend = %choice.backend, reason = %choice.reason, "IO backend")
        }
    }

    let addr = SocketAddr::new(config.host, config.port);
    let listeners = runtime::bind_listeners(addr, config.workers)
        .with_context(|| format!("cannot listen on {addr}"))?;
    let local = listeners[0].local_addr()?;

    let (senders, receivers): (Vec<_>, Vec<_>) = (0..config.workers)
        .map(|_| hub::inbox(INBOX_CAPACITY))
        .unzip();
    let workers = config.workers;
    let webhooks = Webhooks::start(config.apps.iter().cloned().collect())
        .context("cannot start the webhook sender")?;
    let shared = Arc::new(Shared {
        stats: (0..workers)
            .map(|_| Arc::new(WorkerStats::default()))
            .collect(),
        config,
        backend: choice.backend,
        index: ChannelIndex::default(),
        inboxes: senders,
        connections: AtomicUsize::new(0),
        shutdown: CancellationToken::new(),
        started: Instant::now(),
        presence: Default::default(),
        users: Default::default(),
        cache: hub::EventCache::new(MAX_CACHED_CHANNELS),
        webhooks,
    });

    let (events_tx, events_rx) = crossbeam_channel::unbounded::<Event>();
    let (ready_tx, ready_rx) = mpsc::channel::<(usize, Result<(), String>)>();
    let mut threads = Vec::with_capacity(workers);
    for (index, (listener, inbox)) in listeners.into_iter().zip(receivers).enumerate() {
        let shared = shared.clone();
        let ready = ready_tx.clone();
        let events = events_tx.clone();
        let backend = choice.backend;
        let thread = std::thread::Builder::new()
            .name(format!("ringcast-w{index}"))
            .spawn(move || {
                let cpu = shared.config.cpus[index];
                match affinity::pin_current_thread(cpu) {
                    Ok(()) => tracing::info!(worker = index, cpu, "worker pinned"),
                    Err(e) => tracing::warn!(worker = index, cpu, error = %e, "cannot pin worker"),
                }
                let start = WorkerStart {
                    index,
                    shared,
                    listener,
                    inbox,
                    ready: ready.clone(),
                };
                let res = match backend {
                    Backend::Uring => Uring::block_on(move || worker_main::<Uring>(start)),
                    Backend::Epoll => Epoll::block_on(move || worker_main::<Epoll>(start)),
                }
                .map_err(|e| format!("cannot start the {backend} runtime: {e}"));
                if let Err(e) = &res {
                    let _ = ready.send((index, Err(e.clone())));
                }
                let _ = events.send(Event::WorkerExited(index, res));
            })
            .context("cannot start a worker thread")?;
        threads.push(thread);
    }
    drop(ready_tx);

    for _ in 0..workers {
        match ready_rx.recv() {
            Ok((_, Ok(()))) => {}
            Ok((index, Err(e))) => {
                shared.shutdown.cancel();
                join_all(threads);
                return Err(anyhow!("worker {index} failed to start: {e}"));
            }
            Err(_) => {
                shared.shutdown.cancel();
                join_all(threads);
                return Err(anyhow!("a worker exited during start-up"));
            }
        }
    }
    tracing::info!(addr = %local, workers, backend = %choice.backend, "listening");
    if shared.config.demo_app {
        tracing::info!(
            "demo app: id=app-id key=app-key secret=app-secret (loopback only). Connect with \
             pusher-js: new Pusher('app-key', {{ wsHost: '{}', wsPort: {}, forceTLS: false, \
             enabledTransports: ['ws'], cluster: 'local' }})",
            local.ip(),
            local.port()
        );
    }

    let signals = spawn_signal_thread(events_tx.clone())?;
    drop(events_tx);
    let mut exited = 0;
    let mut failure = None;
    while exited < workers {
        match events_rx.recv() {
            Ok(Event::Signal(sig)) => {
                if shared.shutdown.is_cancelled() {
                    tracing::warn!(signal = sig, "second signal: exiting without draining");
                    std::process::exit(1);
                }
                tracing::info!(
                    signal = sig,
                    timeout_secs = shared.config.shutdown_timeout.as_secs(),
                    "shutting down: no new connections, draining"
                );
                shared.shutdown.cancel();
            }
            Ok(Event::WorkerExited(index, res)) => {
                exited += 1;
                if !shared.shutdown.is_cancelled() {
                    let why = res.err().unwrap_or_else(|| "it stopped".into());
                    tracing::error!(worker = index, "worker exited unexpectedly: {why}");
                    failure.get_or_insert(format!("worker {index} exited unexpectedly: {why}"));
                    shared.shutdown.cancel();
                }
            }
            Err(_) => break,
        }
    }
    signals.close();
    join_all(threads);
    match failure {
        Some(f) => Err(anyhow!(f)),
        None => {
            tracing::info!("shut down cleanly");
            Ok(())
        }
    }
}

fn join_all(threads: Vec<std::thread::JoinHandle<()>>) {
    for t in threads {
        let _ = t.join();
    }
}

fn spawn_signal_thread(
    events: crossbeam_channel::Sender<Event>,
) -> anyhow::Result<signal_hook::iterator::Handle> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])
        .context("cannot install signal handlers")?;
    let handle = signals.handle();
    std::thread::Builder::new()
        .name("ringcast-signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                if events.send(Event::Signal(sig)).is_err() {
                    break;
                }
            }
        })
        .context("cannot start the signal thread")?;
    Ok(handle)
}

/// Everything a worker thread needs to start, whichever backend it runs.
struct WorkerStart {
    index: usize,
    shared: Arc<Shared>,
    listener: std::net::TcpListener,
    inbox: InboxReceiver,
    ready: mpsc::Sender<(usize, Result<(), String>)>,
}

/// A worker's life: serve until shutdown, then drain.
async fn worker_main<R: Runtime>(start: WorkerStart) {
    let WorkerStart {
        index,
        shared,
        listener,
        inbox,
        ready,
    } = start;
    let worker = Rc::new_cyclic(|me| {
        Worker::new(
            index,
            shared.clone(),
            inbox,
            Box::new(runtime::Handle::<R>::default()),
            me.clone(),
        )
    });
    {
        let worker = worker.clone();
        R::spawn(async move { hub::run_inbox(&worker).await });
    }
    R::spawn(session::sweeper::<R>(worker.clone()));
    let _ = ready.send((index, Ok(())));

    let accepting = {
        let worker = worker.clone();
        R::accept_loop(listener, shared.shutdown.clone(), move |conn, peer| {
            R::spawn(crate::http::serve::<R>(worker.clone(), conn, peer));
        })
    };
    if let Err(e) = accepting.await {
        tracing::error!(worker = index, error = %e, "cannot accept connections");
        shared.shutdown.cancel();
    }

    // Drain: queued frames, then pusher:error + close 4200, within the shutdown timeout.
    // HTTP connections keep answering (readiness 503) until the WebSockets are gone.
    worker.close_all_for_shutdown();
    let deadline = Instant::now() + shared.config.shutdown_timeout;
    while worker.conn_count() > 0 && Instant::now() < deadline {
        R::sleep(Duration::from_millis(10)).await;
    }
    worker.http_stop.cancel();
    while worker.http_conn_count() > 0 && Instant::now() < deadline {
        R::sleep(Duration::from_millis(10)).await;
    }
    let left = worker.conn_count();
    if left > 0 {
        tracing::warn!(
            worker = index,
            connections = left,
            "shutdown timeout: closing the rest"
        );
        worker.kill_all();
        let grace = Instant::now() + Duration::from_millis(200);
        while worker.conn_count() > 0 && Instant::now() < grace {
            R::sleep(Duration::from_millis(5)).await;
        }
    }
}
