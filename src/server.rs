//! Start-up and shutdown: choose the backend, bind one SO_REUSEPORT listener per worker,
//! start the pinned worker threads, wait for signals, drain.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::AtomicUsize;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context as _};
use tokio_util::sync::CancellationToken;

use crate::app::Apps;
use crate::config::Config;
use crate::hub::broker::redis::{RedisBroker, RedisSettings, Target};
use crate::hub::{inbox, Broker, ChannelIndex, InboxReceiver, LocalBroker, Router};
use crate::metrics::{BrokerStats, Telemetry};
use crate::runtime::{self, affinity, epoll::Epoll, uring::Uring, Backend, Runtime};
use crate::session;
use crate::tls::Tls;
use crate::webhooks::Webhooks;
use crate::worker::{Shared, Worker};

/// Messages each worker inbox can hold.
const INBOX_CAPACITY: usize = 16 * 1024;

enum Event {
    Signal(i32),
    WorkerExited(usize, Result<(), String>),
}

/// Runs the server until SIGTERM/SIGINT and a graceful drain, or until a worker fails.
pub fn run(config: Config, apps: Apps) -> anyhow::Result<()> {
    let choice = runtime::select_backend(config.io).map_err(|e| anyhow!(e))?;
    match choice.backend {
        Backend::Uring => {
            tracing::info!(backend = %choice.backend, reason = %choice.reason, "IO backend")
        }
        Backend::Epoll => {
            tracing::warn!(backend = %choice.backend, reason = %choice.reason, "IO backend")
        }
    }

    let tls = match &config.tls {
        Some(files) => {
            let tls = Tls::load(files)?;
            tracing::info!(
                cert = %files.cert.display(),
                key = %files.key.display(),
                fingerprint = %tls.fingerprint(),
                "tls enabled"
            );
            Some(tls)
        }
        None => None,
    };
    let tls_config = tls.as_ref().map(Tls::config);

    let addr = SocketAddr::new(config.host, config.port);
    let listeners = runtime::bind_listeners(addr, config.workers)
        .with_context(|| format!("cannot listen on {addr}"))?;
    let local = listeners[0].local_addr()?;
    let metrics_listener =
        crate::metrics::listener::bind(config.metrics_addr).with_context(|| {
            format!(
                "cannot listen for metrics on {} (change --metrics-host/--metrics-port)",
                config.metrics_addr
            )
        })?;

    let (senders, receivers): (Vec<_>, Vec<_>) = (0..config.workers)
        .map(|_| inbox::inbox(INBOX_CAPACITY))
        .unzip();
    let workers = config.workers;
    let apps = Arc::new(arc_swap::ArcSwap::from_pointee(apps));
    let shutdown = CancellationToken::new();
    let broker_stats = Arc::new(BrokerStats::default());
    let mut telemetry = Telemetry::new(workers, choice.backend, shutdown.clone());
    telemetry.io_fallback = config.io == runtime::IoMode::Auto && choice.backend == Backend::Epoll;
    telemetry.connections_limit = config.limits.max_connections;
    if let Some(c) = &config.cluster {
        telemetry = telemetry.with_broker(broker_stats.clone(), c.readiness_requires_redis);
    }
    let telemetry = Arc::new(telemetry);
    let webhooks = Webhooks::start(apps.clone(), telemetry.webhooks.clone())
        .context("cannot start the webhook sender")?;
    let index = Arc::new(ChannelIndex::default());
    let router = Router::new(index.clone(), senders.clone(), telemetry.clone());
    let broker: Arc<dyn Broker> = match &config.cluster {
        None => Arc::new(LocalBroker::new(index.clone(), router)),
        Some(c) => {
            tracing::info!(node = %c.node_id, prefix = %c.prefix, "clustering over Redis");
            let target = match c.redis_cluster {
                true => Target::Cluster(c.redis_url.split(',').map(str::to_string).collect()),
                false => Target::Single(c.redis_url.clone()),
            };
            let settings = RedisSettings {
                target,
                prefix: c.prefix.clone(),
                node_id: c.node_id.clone(),
                node_timeout: c.node_timeout,
            };
            let broker = RedisBroker::start(
                settings,
                apps.clone(),
                router,
                broker_stats,
                webhooks.clone(),
            )
            .context("cannot start the broker thread")?;
            // Held leaves are confirmed with the cluster before their webhooks go out.
            webhooks.set_confirm(broker.confirmer());
            Arc::new(broker)
        }
    };
    let shared = Arc::new(Shared {
        config,
        apps,
        telemetry,
        broker,
        index,
        inboxes: senders,
        connections: AtomicUsize::new(0),
        shutdown,
        webhooks,
        ip_rate: Default::default(),
        ip_conns: Default::default(),
    });

    let (events_tx, events_rx) = crossbeam_channel::unbounded::<Event>();
    let (ready_tx, ready_rx) = mpsc::channel::<(usize, Result<(), String>)>();
    let mut threads = Vec::with_capacity(workers);
    for (index, (listener, inbox)) in listeners.into_iter().zip(receivers).enumerate() {
        let shared = shared.clone();
        let ready = ready_tx.clone();
        let events = events_tx.clone();
        let backend = choice.backend;
        let tls = tls_config.clone();
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
                    tls,
                };
                let res = match backend {
                    Backend::Uring => Uring::block_on(move || worker_main::<Uring>(start)),
                    Backend::Epoll => Epoll::block_on(move || worker_main::<Epoll>(start)),
                }
                .map_err(|e| match backend {
                    // Rings are charged to RLIMIT_MEMLOCK; ENOMEM here is almost always that.
                    Backend::Uring => format!(
                        "cannot start the {backend} runtime: {e} (if this is out of memory, \
                         raise the locked-memory limit, e.g. LimitMEMLOCK=infinity, or run \
                         with --io epoll)"
                    ),
                    Backend::Epoll => format!("cannot start the {backend} runtime: {e}"),
                });
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
    // Before "listening": from then on SIGHUP reloads rather than kills.
    let signals = spawn_signal_thread(events_tx.clone())?;
    tracing::info!(addr = %local, workers, backend = %choice.backend, "listening");
    let metrics_addr = metrics_listener.local_addr()?;
    let console =
        crate::console::Console::new(shared.clone(), local, tls.as_ref().map(Tls::pinned_client));
    crate::metrics::listener::start(
        metrics_listener,
        shared.telemetry.clone(),
        console.as_ref().map(|c| c.routes()),
    )
    .context("cannot start the metrics thread")?;
    tracing::info!(addr = %metrics_addr, "metrics endpoint (/metrics, /metrics/latency.hgrm, /healthz, /readyz)");
    if console.is_some() {
        tracing::info!(url = %format!("http://{metrics_addr}/console"), "live console");
    }
    if shared.config.demo_app {
        tracing::info!(
            "demo app: id=app-id key=app-key secret=app-secret (loopback only). Connect with \
             pusher-js: new Pusher('app-key', {{ wsHost: '{}', wsPort: {}, forceTLS: false, \
             enabledTransports: ['ws'], cluster: 'local' }})",
            local.ip(),
            local.port()
        );
    }

    drop(events_tx);
    let mut exited = 0;
    let mut failure = None;
    while exited < workers {
        match events_rx.recv() {
            Ok(Event::Signal(signal_hook::consts::SIGHUP)) => {
                reload_apps(&shared);
                reload_tls(tls.as_ref());
            }
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
    // What the closed connections left goes out: the other nodes are told, and held
    // webhooks are sent (in a cluster at the end of their debounce), within
    // --shutdown-timeout but at least 5 s.
    let within = shared.config.shutdown_timeout.max(Duration::from_secs(5));
    shared.broker.depart(within);
    if !shared.webhooks.flush(within) {
        tracing::warn!("some webhooks were not sent before exiting");
    }
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

/// SIGHUP: reads the apps again from where they came from (`--apps-file`, or the
/// `[[app]]` tables of `--config`). Apps keep their indices and live counts; removed apps
/// are disabled (their connections are closed with 4003 within a second). A file that
/// does not load leaves the apps in use untouched.
fn reload_apps(shared: &Shared) {
    use crate::config::AppsSource;
    let (path, loaded) = match &shared.config.apps_source {
        AppsSource::AppsFile(p) => (
            p,
            crate::config::file::apps_file(p).map_err(|e| e.to_string()),
        ),
        AppsSource::ConfigFile(p) => (
            p,
            crate::config::file::apps_of(p).map_err(|e| e.to_string()),
        ),
        AppsSource::CommandLine => {
            tracing::info!("SIGHUP: apps come from the command line; nothing to reload");
            return;
        }
    };
    let next = loaded.and_then(|list| {
        crate::config::check_secrets(&list, shared.config.host).map_err(|e| e.to_string())?;
        shared.apps.load().reloaded(list).map_err(|e| e.to_string())
    });
    match next {
        Ok(apps) => {
            let n = apps.iter().filter(|a| a.enabled).count();
            shared.apps.store(Arc::new(apps));
            tracing::info!(file = %path.display(), enabled_apps = n, "apps reloaded");
        }
        Err(e) => {
            tracing::error!(file = %path.display(), "apps not reloaded, keeping the ones in use: {e}")
        }
    }
}

/// SIGHUP: reads the TLS certificate and key again from the same files. New connections
/// get the new certificate, open ones keep theirs; if the files cannot be used, the
/// certificate in use stays.
fn reload_tls(tls: Option<&Tls>) {
    let Some(tls) = tls else {
        tracing::info!("SIGHUP: TLS is off, no certificate to reload");
        return;
    };
    match tls.reload() {
        Ok(()) => tracing::info!(
            cert = %tls.files().cert.display(),
            fingerprint = %tls.fingerprint(),
            "certificate reloaded"
        ),
        Err(e) => tracing::error!("certificate not reloaded, keeping the one in use: {e}"),
    }
}

fn spawn_signal_thread(
    events: crossbeam_channel::Sender<Event>,
) -> anyhow::Result<signal_hook::iterator::Handle> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])
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
    /// TLS for every accepted socket, when on.
    tls: Option<Arc<rustls::ServerConfig>>,
}

/// A worker's life: serve until shutdown, then drain.
async fn worker_main<R: Runtime>(start: WorkerStart) {
    let WorkerStart {
        index,
        shared,
        listener,
        inbox,
        ready,
        tls,
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
    R::spawn(worker.clone().run_inbox());
    R::spawn(session::sweeper::<R>(worker.clone()));
    worker
        .stats
        .heartbeat
        .store(crate::clock::now_ns(), std::sync::atomic::Ordering::Relaxed);
    let _ = ready.send((index, Ok(())));

    let accepting = {
        let worker = worker.clone();
        R::accept_loop(listener, shared.shutdown.clone(), move |socket, peer| {
            // Refused here, the socket is just closed: it cost nothing but the accept.
            let Some(admitted) = crate::http::admit(&worker, peer) else {
                return;
            };
            match &tls {
                Some(tls) => R::spawn(crate::http::serve_tls::<R>(
                    worker.clone(),
                    socket,
                    peer,
                    tls.clone(),
                    admitted,
                )),
                None => R::spawn(crate::http::serve::<R, _>(
                    worker.clone(),
                    socket,
                    peer,
                    Instant::now(),
                    admitted,
                )),
            }
        })
    };
    if let Err(e) = accepting.await {
        tracing::error!(worker = index, error = %e, "cannot accept connections");
        shared.shutdown.cancel();
    }

    // Drain: queued frames, then pusher:error + close 4200, within the shutdown timeout.
    // HTTP connections keep answering (readiness 503) until the WebSockets are gone.
    worker.close_all_for_shutdown();
    let now = Instant::now();
    let deadline = now
        .checked_add(shared.config.shutdown_timeout)
        .unwrap_or(now + Duration::from_secs(3600));
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
    // The broker's answers about the closed connections (a last leave's webhook) are
    // carried out before the worker stops.
    worker.settle();
    let settle_by = Instant::now() + Duration::from_secs(2);
    while !worker.settled.get() && Instant::now() < settle_by {
        R::sleep(Duration::from_millis(5)).await;
    }
}
