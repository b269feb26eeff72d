//! One worker: the state a pinned worker thread owns, and the state all workers share.
//!
//! A worker carries out what the protocol rules ([`crate::pusher`]) decide: it owns its
//! connections ([`conns`]), makes and ends subscriptions and asks the broker
//! ([`effects`]), delivers events to its subscribers and to other workers ([`publish`]),
//! and checks its connections once a second ([`sweep`]).

pub mod admission;
mod conns;
mod effects;
pub mod ip_rate;
mod publish;
mod sweep;

use std::cell::{Cell, RefCell};
use std::rc::{Rc, Weak};
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use slab::Slab;
use tokio_util::sync::CancellationToken;

pub use publish::PublishError;

use crate::app::{App, AppIdx, ChannelKey, ChannelRef, LiveApps};
use crate::config::Config;
use crate::hub::broker::ConnRef;
use crate::hub::{Broker, ChannelIndex, Conn, InboxReceiver, InboxSender, LocalChannels};
use crate::metrics::{LatencyRecorder, Telemetry, WorkerStats};
use crate::protocol::SocketIdGen;
use crate::pusher::occupancy::CountThrottle;
use crate::pusher::{Member, NodeView};
use crate::runtime::RtHandle;
use crate::webhooks::Webhooks;
use ip_rate::IpRateTable;

type FastState = foldhash::fast::RandomState;
/// Connection slots by (app, user id).
type ConnsByUser = hashbrown::HashMap<ChannelKey, Vec<usize>, FastState>;

/// How long a connection may stay in the closing handshake (waiting for the client's close
/// frame) before it is dropped.
pub const CLOSING_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// What every worker shares (immutable, or atomic, or lock-free).
pub struct Shared {
    /// The configuration.
    pub config: Config,
    /// The apps, as last (re)loaded.
    pub apps: LiveApps,
    /// Counters and health, by worker.
    pub telemetry: Arc<Telemetry>,
    /// Which workers have subscribers of which channel.
    pub index: Arc<ChannelIndex>,
    /// What the cluster shares: presence, users, counts, the cache, other nodes' events.
    pub broker: Arc<dyn Broker>,
    /// Each worker's inbox, by worker index.
    pub inboxes: Vec<InboxSender>,
    /// Open WebSocket connections over all workers (checked against `--max-connections`).
    pub connections: AtomicUsize,
    /// Cancelled when the server starts shutting down.
    pub shutdown: CancellationToken,
    /// The webhook sender.
    pub webhooks: Webhooks,
    /// New connections per IP address (`--max-connections-per-ip-per-second`).
    pub ip_rate: IpRateTable,
    /// Open connections per IP address (`--max-connections-per-ip`).
    pub ip_conns: Arc<admission::IpConnTable>,
}

/// The state one worker thread owns. Not `Send`: it never leaves its thread.
pub struct Worker {
    /// Worker index, 0-based.
    pub index: usize,
    /// Shared state.
    pub shared: Arc<Shared>,
    /// This worker's counters.
    pub stats: Arc<WorkerStats>,
    /// This worker's subscribers.
    pub channels: LocalChannels,
    /// What other workers and the broker send this one.
    pub inbox: InboxReceiver,
    /// The worker's runtime.
    pub rt: Box<dyn RtHandle>,
    /// Cancelled, during shutdown, once the WebSocket connections have drained: HTTP
    /// connections keep answering until then (`/readyz` says 503, every response carries
    /// `Connection: close`).
    pub http_stop: CancellationToken,
    /// Latencies recorded on this worker, merged into `stats` every second.
    pub latency: LatencyRecorder,
    conns: RefCell<Slab<Rc<Conn>>>,
    socket_ids: RefCell<SocketIdGen>,
    /// This worker's HTTP connections (not upgraded), for `--max-http-connections`.
    pub http: Rc<admission::HttpConns>,
    this: Weak<Worker>,
    /// This worker's signed-in connections, by (app, user id).
    signed_in: RefCell<ConnsByUser>,
    /// This worker's connections watching each (app, user id).
    watchers: RefCell<ConnsByUser>,
    /// When busy channels' subscription counts were last sent from this worker.
    counts: RefCell<CountThrottle>,
    /// Subscriptions waiting for this worker's declaration of interest in their channel to
    /// be answered, with the presence member each joins as then.
    waiting: RefCell<Waiting>,
    /// Shutting down: whether the broker has answered everything this worker asked.
    pub(crate) settled: Cell<bool>,
}

/// See [`Worker::waiting`].
type Waiting = hashbrown::HashMap<ChannelKey, Vec<(ConnRef, Option<Member>)>, FastState>;

impl Worker {
    /// The state of worker `index`.
    pub fn new(
        index: usize,
        shared: Arc<Shared>,
        inbox: InboxReceiver,
        rt: Box<dyn RtHandle>,
        this: Weak<Worker>,
    ) -> Self {
        let workers = shared.config.workers;
        Self {
            index,
            stats: shared.telemetry.workers[index].clone(),
            shared,
            channels: LocalChannels::default(),
            inbox,
            rt,
            http_stop: CancellationToken::new(),
            latency: LatencyRecorder::default(),
            conns: RefCell::new(Slab::new()),
            socket_ids: RefCell::new(SocketIdGen::new(index, workers)),
            http: Rc::default(),
            settled: Cell::new(false),
            this,
            signed_in: RefCell::default(),
            watchers: RefCell::default(),
            counts: RefCell::default(),
            waiting: RefCell::default(),
        }
    }

    /// This worker, counted (for tasks it spawns).
    pub fn rc(&self) -> Rc<Worker> {
        self.this
            .upgrade()
            .expect("a worker outlives the code running on it")
    }

    /// An app's current configuration (apps are replaced as a whole on reload).
    pub fn app(&self, app: AppIdx) -> Arc<App> {
        self.shared.apps.load().get(app).clone()
    }

    /// Records `entry()` in the app's console log if a console watches the app; otherwise
    /// costs one relaxed load.
    #[inline]
    pub fn note(&self, app: AppIdx, entry: impl FnOnce() -> crate::app::console::Entry) {
        if crate::app::console::watching() {
            let apps = self.shared.apps.load();
            let console = &apps.get(app).console;
            if console.watched() {
                console.record(entry());
            }
        }
    }

    /// Counts messages received for `app` (API and client events) for its console's rates,
    /// if a console watches it.
    #[inline]
    pub fn count_in(&self, app: AppIdx, n: u64) {
        if crate::app::console::watching() {
            self.shared.apps.load().get(app).console.count_in(n);
        }
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    /// Whether the server is shutting down.
    pub fn is_shutting_down(&self) -> bool {
        self.shared.shutdown.is_cancelled()
    }

    /// Open HTTP connections (not upgraded) on this worker.
    pub fn http_conn_count(&self) -> usize {
        self.http.len()
    }

    /// This worker's share of `--max-http-connections`.
    pub fn http_cap(&self) -> usize {
        let workers = self.shared.config.workers.max(1);
        self.shared
            .config
            .limits
            .max_http_connections
            .div_ceil(workers)
    }

    /// Counts an HTTP connection in or out (the `http_connections` gauge).
    pub fn http_conn_delta(&self, opened: bool) {
        if opened {
            WorkerStats::add(&self.stats.http_connections, 1);
        } else {
            WorkerStats::sub(&self.stats.http_connections, 1);
        }
    }
}

impl NodeView for Worker {
    fn occupied(&self, channel: ChannelRef<'_>) -> bool {
        self.shared.index.get(channel).is_some()
    }

    fn channels_open(&self) -> u64 {
        let open: i64 = self
            .shared
            .telemetry
            .workers
            .iter()
            .map(|s| s.channels_total())
            .sum();
        open.max(0) as u64
    }
}
