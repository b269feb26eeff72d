//! One worker: the state a pinned worker thread owns, and the state all workers share.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use slab::Slab;
use tokio_util::sync::CancellationToken;

use crate::app::AppIdx;
use crate::config::Config;
use crate::hub::{
    ChannelIndex, ChannelKey, ChannelRef, InboxReceiver, InboxSender, LocalChannels, WorkerMsg,
};
use crate::metrics::WorkerStats;
use crate::protocol::{codes, messages, SocketId, SocketIdGen};
use crate::runtime::Backend;
use crate::session::conn::{ticks, Conn, ConnState, Protocol, Tick};

/// How long a connection may stay in the closing handshake before it is dropped.
pub const CLOSE_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// What every worker shares (immutable, or atomic, or lock-free).
pub struct Shared {
    /// The configuration.
    pub config: Config,
    /// The backend in use.
    pub backend: Backend,
    /// Which workers have subscribers of which channel.
    pub index: ChannelIndex,
    /// Each worker's inbox, by worker index.
    pub inboxes: Vec<InboxSender>,
    /// Each worker's counters, by worker index.
    pub stats: Vec<Arc<WorkerStats>>,
    /// Open WebSocket connections over all workers (checked against `--max-connections`).
    pub connections: AtomicUsize,
    /// Cancelled when the server starts shutting down.
    pub shutdown: CancellationToken,
    /// When the server started.
    pub started: Instant,
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
    /// What other workers send this one.
    pub inbox: InboxReceiver,
    /// Cancelled, during shutdown, once the WebSocket connections have drained: HTTP
    /// connections keep answering until then (`/readyz` says 503, every response carries
    /// `Connection: close`).
    pub http_stop: CancellationToken,
    conns: RefCell<Slab<Rc<Conn>>>,
    socket_ids: RefCell<SocketIdGen>,
    http_conns: Cell<usize>,
}

impl Worker {
    /// The state of worker `index`.
    pub fn new(index: usize, shared: Arc<Shared>, inbox: InboxReceiver) -> Self {
        let workers = shared.config.workers;
        Self {
            index,
            stats: shared.stats[index].clone(),
            shared,
            channels: LocalChannels::default(),
            inbox,
            http_stop: CancellationToken::new(),
            conns: RefCell::new(Slab::new()),
            socket_ids: RefCell::new(SocketIdGen::new(index, workers)),
            http_conns: Cell::new(0),
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

    /// Registers a new WebSocket connection. Beyond `--max-connections` the connection is
    /// registered already closing with 4100, so the client is told to back off.
    pub fn open_conn(&self, app: Option<AppIdx>, protocol: Protocol) -> Rc<Conn> {
        let socket_id = self.socket_ids.borrow_mut().next_id();
        let mut conns = self.conns.borrow_mut();
        let entry = conns.vacant_entry();
        let conn = Rc::new(Conn::new(
            entry.key(),
            socket_id,
            app,
            protocol,
            self.config().limits.max_outbound_buffer,
        ));
        entry.insert(conn.clone());
        let total = self.shared.connections.fetch_add(1, Ordering::Relaxed) + 1;
        WorkerStats::add(&self.stats.connections, 1);
        WorkerStats::add(&self.stats.connections_total, 1);
        if total > self.config().limits.max_connections {
            WorkerStats::add(&self.stats.over_capacity_rejections, 1);
            conn.close(codes::OVER_CAPACITY, "Over capacity: try again later");
        } else if self.is_shutting_down() {
            conn.close(codes::GENERIC_RECONNECT, "Server is shutting down");
        }
        conn
    }

    /// Forgets a finished connection: leaves its channels and frees its slot.
    pub fn close_conn(&self, conn: &Conn) {
        if let Some(app) = conn.app {
            let channels = std::mem::take(&mut *conn.channels.borrow_mut());
            for name in channels {
                self.leave(app, conn.id, name);
            }
        }
        self.conns.borrow_mut().try_remove(conn.id);
        self.shared.connections.fetch_sub(1, Ordering::Relaxed);
        WorkerStats::sub(&self.stats.connections, 1);
    }

    /// Open WebSocket connections on this worker.
    pub fn conn_count(&self) -> usize {
        self.conns.borrow().len()
    }

    /// Subscribes `conn` to `name`. Returns false if it already was.
    pub fn subscribe(&self, conn: &Rc<Conn>, app: AppIdx, name: &str) -> bool {
        let key = ChannelKey::new(app, name);
        if self.channels.add(&key, conn).is_none() {
            return false;
        }
        // Mark this worker in the shared index before the client hears of success.
        self.shared.index.add(key.clone(), self.index);
        conn.channels.borrow_mut().push(key.name);
        true
    }

    /// Unsubscribes `conn` from `name`. Returns false if it was not subscribed.
    pub fn unsubscribe(&self, conn: &Conn, app: AppIdx, name: &str) -> bool {
        let mut channels = conn.channels.borrow_mut();
        let Some(pos) = channels.iter().position(|c| &**c == name) else {
            return false;
        };
        let name = channels.swap_remove(pos);
        drop(channels);
        self.leave(app, conn.id, name);
        true
    }

    fn leave(&self, app: AppIdx, conn_id: usize, name: Arc<str>) {
        let key = ChannelRef { app, name: &name };
        if let Some(last_here) = self.channels.remove(key, conn_id) {
            self.shared
                .index
                .remove(ChannelKey { app, name }, self.index, last_here);
        }
    }

    /// Queues `frame` to this worker's subscribers of `channel`.
    pub fn deliver_local(&self, channel: ChannelRef<'_>, frame: &Bytes, except: Option<SocketId>) {
        let d = self.channels.deliver(channel, frame, except);
        WorkerStats::add(&self.stats.frames_delivered, d.queued);
        if d.overflowed > 0 {
            WorkerStats::add(&self.stats.slow_consumer_disconnects, d.overflowed);
            tracing::debug!(
                channel = channel.name,
                count = d.overflowed,
                "closed slow subscribers with 4100"
            );
        }
    }

    /// Applies up to `max` messages waiting in the inbox; returns how many.
    ///
    /// Publishing calls this before delivering locally: an event another worker published
    /// earlier (and already answered `200` for) is in this inbox, and must reach local
    /// subscribers before anything published after it.
    pub fn drain_inbox(&self, max: usize) -> usize {
        let mut taken = 0;
        while taken < max {
            let Some(msg) = self.inbox.try_recv() else {
                break;
            };
            match msg {
                WorkerMsg::Deliver(batch) => {
                    for d in &batch {
                        let key = ChannelRef {
                            app: d.channel.app,
                            name: &d.channel.name,
                        };
                        self.deliver_local(key, &d.frame, d.except);
                    }
                }
            }
            taken += 1;
        }
        taken
    }

    /// Open HTTP connections (not upgraded) on this worker.
    pub fn http_conn_count(&self) -> usize {
        self.http_conns.get()
    }

    /// Counts an HTTP connection in or out.
    pub fn http_conn_delta(&self, opened: bool) {
        if opened {
            self.http_conns.set(self.http_conns.get() + 1);
            WorkerStats::add(&self.stats.http_connections, 1);
        } else {
            self.http_conns.set(self.http_conns.get() - 1);
            WorkerStats::sub(&self.stats.http_connections, 1);
        }
    }

    /// The periodic sweep: pings idle clients, closes those that never answered with 4201,
    /// and drops connections stuck in the closing handshake.
    pub fn sweep(&self, now: Tick) {
        let activity = ticks(self.config().activity_timeout);
        let pong = ticks(self.config().pong_timeout);
        let grace = ticks(CLOSE_GRACE);
        // Pushing, closing and killing never touch the connection table, so it stays
        // borrowed for the walk (no copy of it every second).
        for (_, conn) in self.conns.borrow().iter() {
            match conn.state() {
                ConnState::Open => match conn.ping_sent() {
                    None if now.wrapping_sub(conn.last_seen()) >= activity => {
                        if conn.protocol == Protocol::Pusher {
                            conn.push(messages::ping());
                        } else {
                            conn.push(crate::ws::codec::encode(crate::ws::OpCode::Ping, b""));
                        }
                        conn.set_ping_sent(now);
                    }
                    Some(at) if now.wrapping_sub(at) >= pong => {
                        conn.close(codes::PONG_NOT_RECEIVED, "Pong reply not received");
                    }
                    _ => {}
                },
                ConnState::Closing { since, .. } => {
                    if now.wrapping_sub(since) >= grace && !self.is_shutting_down() {
                        conn.kill();
                    }
                }
            }
        }
    }

    /// Starts the graceful close of every connection: queued frames drain first, then
    /// `pusher:error` and close 4200 (reconnect now).
    pub fn close_all_for_shutdown(&self) {
        for (_, conn) in self.conns.borrow().iter() {
            conn.close(codes::GENERIC_RECONNECT, "Server is shutting down");
        }
    }

    /// Ends every connection task now.
    pub fn kill_all(&self) {
        for (_, conn) in self.conns.borrow().iter() {
            conn.kill();
        }
    }
}
