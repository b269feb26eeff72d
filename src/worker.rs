//! One worker: the state a pinned worker thread owns, and the state all workers share.

use std::cell::{Cell, RefCell};
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use slab::Slab;
use tokio_util::sync::CancellationToken;

use crate::app::{App, AppIdx, WebhookEvent};
use crate::config::Config;
use crate::hub::{
    self, ChannelIndex, ChannelKey, ChannelRef, Delivery, EventCache, InboxReceiver, InboxSender,
    LocalChannels, PresenceRegistry, UserRegistry, WorkerMsg,
};
use crate::metrics::WorkerStats;
use crate::protocol::channel::{self, ChannelKind};
use crate::protocol::{codes, messages, SocketId, SocketIdGen};
use crate::runtime::{Backend, RtHandle};
use crate::session::conn::{tick_now, ticks, Conn, ConnState, Protocol, Tick, TICKS_PER_SEC};
use crate::webhooks::{Job, Webhooks};

type FastState = foldhash::fast::RandomState;
type ConnsByUser = hashbrown::HashMap<ChannelKey, Vec<usize>, FastState>;

/// Channels with more subscriptions than this get `subscription_count` at most every
/// [`SUBSCRIPTION_COUNT_EVERY`].
pub const SUBSCRIPTION_COUNT_THROTTLE_ABOVE: u64 = 100;
/// See [`SUBSCRIPTION_COUNT_THROTTLE_ABOVE`].
pub const SUBSCRIPTION_COUNT_EVERY: std::time::Duration = std::time::Duration::from_secs(5);
/// Most user ids in one watchlist.
pub const MAX_WATCHLIST: usize = 100;

#[derive(Debug, Clone, Copy)]
struct CountSent {
    at: Tick,
    pending: bool,
}

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
    /// Presence channel members.
    pub presence: PresenceRegistry,
    /// Signed-in users.
    pub users: UserRegistry,
    /// Cache channels' last events.
    pub cache: EventCache,
    /// The webhook sender, if any app has webhooks.
    pub webhooks: Option<Webhooks>,
    /// New connections per IP address (`--max-connections-per-ip-per-second`).
    pub ip_rate: crate::limits::IpRate,
    /// The apps, as last (re)loaded.
    pub apps: Arc<arc_swap::ArcSwap<crate::app::Apps>>,
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
    /// The worker's runtime.
    pub rt: Box<dyn RtHandle>,
    /// Cancelled, during shutdown, once the WebSocket connections have drained: HTTP
    /// connections keep answering until then (`/readyz` says 503, every response carries
    /// `Connection: close`).
    pub http_stop: CancellationToken,
    conns: RefCell<Slab<Rc<Conn>>>,
    socket_ids: RefCell<SocketIdGen>,
    http_conns: Cell<usize>,
    this: Weak<Worker>,
    /// This worker's signed-in connections, by (app, user id).
    signed_in: RefCell<ConnsByUser>,
    /// This worker's connections watching each (app, user id).
    watchers: RefCell<ConnsByUser>,
    /// When `subscription_count` was last sent for busy channels, and whether a change
    /// since is waiting to be sent.
    counts_sent: RefCell<hashbrown::HashMap<ChannelKey, CountSent, FastState>>,
    /// Latencies recorded on this worker, merged into `stats` every second.
    pub latency: crate::metrics::LatencyRecorder,
}

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
            stats: shared.stats[index].clone(),
            shared,
            channels: LocalChannels::default(),
            inbox,
            rt,
            http_stop: CancellationToken::new(),
            conns: RefCell::new(Slab::new()),
            socket_ids: RefCell::new(SocketIdGen::new(index, workers)),
            http_conns: Cell::new(0),
            this,
            signed_in: RefCell::default(),
            watchers: RefCell::default(),
            counts_sent: RefCell::default(),
            latency: Default::default(),
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

    /// Publishes one frame to a channel's subscribers on every worker, from code that
    /// cannot wait (protocol handlers, the sweep).
    pub fn publish_event(
        &self,
        app: AppIdx,
        channel: &str,
        frame: bytes::Bytes,
        except: Option<SocketId>,
    ) {
        hub::publish_detached(
            &self.rc(),
            vec![Delivery {
                channel: ChannelKey::new(app, channel),
                frame,
                except,
                published: 0,
            }],
        );
    }

    /// Keeps `frame` as the last event of `channel` when it is a cache channel. Called
    /// before the event is published, so a subscriber arriving meanwhile may get it twice
    /// (cached, then live) but never misses it.
    pub fn remember(
        &self,
        app: AppIdx,
        channel: &str,
        frame: &bytes::Bytes,
        event: &str,
        data: &str,
    ) {
        if !crate::protocol::channel::parse(channel).is_ok_and(|k| k.is_cache()) {
            return;
        }
        let ttl = std::time::Duration::from_secs(self.app(app).cache_ttl);
        if !self.shared.cache.put(
            ChannelKey::new(app, channel),
            frame.clone(),
            event,
            data,
            ttl,
        ) {
            // Once a minute at most: a full cache would otherwise log every event.
            static LAST_WARNED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            let now = crate::session::conn::tick_now().max(1);
            let last = LAST_WARNED.load(Ordering::Relaxed);
            if last == 0 || now.wrapping_sub(last) >= 60 * crate::session::conn::TICKS_PER_SEC {
                LAST_WARNED.store(now, Ordering::Relaxed);
                tracing::warn!(channel, "event cache is full (100,000 channels): new cache channels' events are not kept");
            }
        }
    }

    /// Sends a webhook event if the app has a webhook that wants it. `fill` adds the
    /// event's own fields and runs only then.
    pub fn webhook(
        &self,
        app: AppIdx,
        event: WebhookEvent,
        channel: &str,
        user: Option<&Arc<str>>,
        fill: impl FnOnce(&mut Job),
    ) {
        let Some(hooks) = &self.shared.webhooks else {
            return;
        };
        if !self.app(app).wants_webhook(event) {
            return;
        }
        let mut job = Job::new(app, event, channel);
        job.user_id = user.cloned();
        fill(&mut job);
        hooks.send(job);
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
        let app_over = app.is_some_and(|a| {
            let app = self.app(a);
            let n = app.counters.connections.fetch_add(1, Ordering::Relaxed) + 1;
            app.max_connections > 0 && n > app.max_connections
        });
        if total > self.config().limits.max_connections {
            self.stats.rejected(crate::metrics::Rejected::OverCapacity);
            tracing::debug!(socket_id = %conn.socket_id, total, "over --max-connections: closing with 4100");
            conn.close(codes::OVER_CAPACITY, "Over capacity: try again later");
        } else if app_over {
            self.stats.rejected(crate::metrics::Rejected::AppOverQuota);
            let max = self.app(app.unwrap_or_default()).max_connections;
            tracing::debug!(socket_id = %conn.socket_id, max, "app over its connection quota: closing with 4004");
            conn.close(
                codes::OVER_CONNECTION_QUOTA,
                &format!("Over connection quota: this app allows {max} connections"),
            );
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
                self.leave(conn, app, name);
            }
            self.sign_out(conn, app);
            self.app(app)
                .counters
                .connections
                .fetch_sub(1, Ordering::Relaxed);
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
        let count = self.shared.index.add(key.clone(), self.index);
        conn.channels.borrow_mut().push(key.name.clone());
        if let Ok(kind) = channel::parse(name) {
            self.stats.subscription(kind, 1);
            if count == 1 {
                self.stats.channel(kind, 1);
                self.app(app)
                    .counters
                    .channels
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
        // `#server-to-user-` channels are per-user delivery: no channel webhooks or counts.
        if !name.starts_with('#') {
            if count == 1 {
                self.webhook(app, WebhookEvent::ChannelOccupied, name, None, |_| {});
            }
            self.subscription_count_changed(app, &key.name, count);
        }
        true
    }

    /// Whether a subscription to `name` may go ahead under the channel limits: always for
    /// an occupied channel; a new one must fit `--max-channels` and the app's
    /// `max_channels`. (Workers check concurrently, so a burst may pass a limit by a few.)
    pub fn channel_limit(&self, app: AppIdx, name: &str) -> Result<(), String> {
        if self.shared.index.get(ChannelRef { app, name }).is_some() {
            return Ok(());
        }
        let max = self.config().limits.max_channels;
        if max > 0 {
            let open: i64 = self.shared.stats.iter().map(|s| s.channels_total()).sum();
            if open >= max as i64 {
                return Err(format!("The server is at its limit of {max} channels"));
            }
        }
        let a = self.app(app);
        if a.max_channels > 0 && a.counters.channels.load(Ordering::Relaxed) >= a.max_channels {
            return Err(format!(
                "This app is at its limit of {} channels",
                a.max_channels
            ));
        }
        Ok(())
    }

    /// Unsubscribes `conn` from `name`. Returns false if it was not subscribed.
    pub fn unsubscribe(&self, conn: &Conn, app: AppIdx, name: &str) -> bool {
        let mut channels = conn.channels.borrow_mut();
        let Some(pos) = channels.iter().position(|c| &**c == name) else {
            return false;
        };
        let name = channels.swap_remove(pos);
        drop(channels);
        self.leave(conn, app, name);
        true
    }

    fn leave(&self, conn: &Conn, app: AppIdx, name: Arc<str>) {
        let key = ChannelRef { app, name: &name };
        let Some(last_here) = self.channels.remove(key, conn.id) else {
            return;
        };
        if let Some(user) = conn.take_presence(&name) {
            if self.shared.presence.leave(key, &user) {
                let mut data = bytes::BytesMut::new();
                data.extend_from_slice(br#"{"user_id":"#);
                messages::push_json_str(&mut data, &user);
                data.extend_from_slice(b"}");
                let data = std::str::from_utf8(&data).expect("built from UTF-8");
                let frame =
                    messages::event_frame("pusher_internal:member_removed", Some(&name), data);
                self.publish_event(app, &name, frame, None);
                self.webhook(app, WebhookEvent::MemberRemoved, &name, Some(&user), |_| {});
            }
        }
        let count = self.shared.index.remove(
            ChannelKey {
                app,
                name: name.clone(),
            },
            self.index,
            last_here,
        );
        if let Ok(kind) = channel::parse(&name) {
            self.stats.subscription(kind, -1);
            if count == Some(0) {
                self.stats.channel(kind, -1);
                self.app(app)
                    .counters
                    .channels
                    .fetch_sub(1, Ordering::Relaxed);
            }
        }
        match count {
            _ if name.starts_with('#') => {}
            Some(0) => self.webhook(app, WebhookEvent::ChannelVacated, &name, None, |_| {}),
            Some(count) => self.subscription_count_changed(app, &name, count),
            None => {}
        }
    }

    /// Reports a channel's new subscription count (`pusher_internal:subscription_count`
    /// to its subscribers if the app enables it, and the `subscription_count` webhook).
    /// Presence channels have member events instead. Busy channels are throttled; the
    /// sweep sends the last change of a throttled channel when its interval is over.
    fn subscription_count_changed(&self, app: AppIdx, name: &Arc<str>, count: u64) {
        // Counting is a per-app feature: without it neither the event nor the webhook is
        // sent (as on Pusher, where the webhook comes with enabling the feature).
        if !self.app(app).subscription_count {
            return;
        }
        if channel::parse(name).is_ok_and(ChannelKind::is_presence) {
            return;
        }
        if count > SUBSCRIPTION_COUNT_THROTTLE_ABOVE {
            let now = tick_now();
            let every = ticks(SUBSCRIPTION_COUNT_EVERY);
            let key = ChannelKey {
                app,
                name: name.clone(),
            };
            let mut sent = self.counts_sent.borrow_mut();
            match sent.get_mut(&key) {
                Some(s) if now.wrapping_sub(s.at) < every => {
                    s.pending = true;
                    return;
                }
                _ => {
                    sent.insert(
                        key,
                        CountSent {
                            at: now,
                            pending: false,
                        },
                    );
                }
            }
        }
        self.send_subscription_count(app, name, count);
    }

    fn send_subscription_count(&self, app: AppIdx, name: &str, count: u64) {
        let data = format!(r#"{{"subscription_count":{count}}}"#);
        let frame = messages::event_frame("pusher_internal:subscription_count", Some(name), &data);
        self.publish_event(app, name, frame, None);
        self.webhook(app, WebhookEvent::SubscriptionCount, name, None, |j| {
            j.fields.insert("subscription_count".into(), count.into());
        });
    }

    fn flush_subscription_counts(&self, now: Tick) {
        let every = ticks(SUBSCRIPTION_COUNT_EVERY);
        let mut due = Vec::new();
        self.counts_sent.borrow_mut().retain(|key, s| {
            if now.wrapping_sub(s.at) < every {
                return true;
            }
            if s.pending {
                due.push(key.clone());
                s.at = now;
                s.pending = false;
                return true;
            }
            false
        });
        for key in due {
            let r = ChannelRef {
                app: key.app,
                name: &key.name,
            };
            if let Some(o) = self.shared.index.get(r) {
                self.send_subscription_count(key.app, &key.name, o.subscription_count);
            }
        }
    }

    /// Records that `conn` signed in as `user`, watching `watchlist`: counts the user
    /// online (telling its watchers on every worker if it just came online) and tells
    /// `conn` which of its watched users are online now.
    pub fn sign_in(&self, conn: &Conn, app: AppIdx, user: Arc<str>, watchlist: Vec<Arc<str>>) {
        self.signed_in
            .borrow_mut()
            .entry(ChannelKey {
                app,
                name: user.clone(),
            })
            .or_default()
            .push(conn.id);
        if !watchlist.is_empty() {
            let mut watchers = self.watchers.borrow_mut();
            for w in &watchlist {
                watchers
                    .entry(ChannelKey {
                        app,
                        name: w.clone(),
                    })
                    .or_default()
                    .push(conn.id);
            }
            drop(watchers);
            let online: Vec<&str> = watchlist
                .iter()
                .filter(|w| self.shared.users.is_online(app, w))
                .map(|w| &**w)
                .collect();
            if !online.is_empty() {
                conn.push(messages::watchlist_event(true, &online));
            }
        }
        conn.with_extra(|e| {
            e.user = Some(user.clone());
            e.watchlist = watchlist;
        });
        if self.shared.users.sign_in(app, &user) {
            self.tell_all(WorkerMsg::Watchlist {
                app,
                user,
                online: true,
            });
        }
    }

    fn sign_out(&self, conn: &Conn, app: AppIdx) {
        let Some(extra) = conn.extra.borrow_mut().take() else {
            return;
        };
        for w in extra.watchlist {
            remove_conn(&self.watchers, ChannelRef { app, name: &w }, conn.id);
        }
        if let Some(user) = extra.user {
            remove_conn(&self.signed_in, ChannelRef { app, name: &user }, conn.id);
            if self.shared.users.sign_out(app, &user) {
                self.tell_all(WorkerMsg::Watchlist {
                    app,
                    user,
                    online: false,
                });
            }
        }
    }

    /// Applies `msg` here and on every other worker, in a task of its own.
    fn tell_all(&self, msg: WorkerMsg) {
        let w = self.rc();
        self.rt.spawn(Box::pin(async move {
            let _ = hub::send_to_all(&w, msg).await;
        }));
    }

    /// Queues `frame` to this worker's subscribers of `channel`.
    pub fn deliver_local(
        &self,
        channel: ChannelRef<'_>,
        frame: &Bytes,
        except: Option<SocketId>,
        published: u64,
    ) {
        let d = self.channels.deliver(channel, frame, except, published);
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
            self.apply(msg);
            taken += 1;
        }
        taken
    }

    /// Applies one message from a worker (this one included).
    pub fn apply(&self, msg: WorkerMsg) {
        match msg {
            WorkerMsg::Deliver(batch) => {
                for d in &batch {
                    let key = ChannelRef {
                        app: d.channel.app,
                        name: &d.channel.name,
                    };
                    self.deliver_local(key, &d.frame, d.except, d.published);
                }
            }
            WorkerMsg::Terminate { app, user } => {
                for conn in self.conns_of(&self.signed_in, ChannelRef { app, name: &user }) {
                    conn.close(
                        codes::CONNECTION_UNAUTHORIZED,
                        "Connection terminated: the app ended this user's connections",
                    );
                }
            }
            WorkerMsg::Watchlist { app, user, online } => {
                let watching = self.conns_of(&self.watchers, ChannelRef { app, name: &user });
                if !watching.is_empty() {
                    let frame = messages::watchlist_event(online, &[&user]);
                    for conn in watching {
                        conn.push(frame.clone());
                    }
                }
            }
        }
    }

    fn conns_of(&self, map: &RefCell<ConnsByUser>, key: ChannelRef<'_>) -> Vec<Rc<Conn>> {
        let map = map.borrow();
        let Some(ids) = map.get(&key) else {
            return Vec::new();
        };
        let conns = self.conns.borrow();
        ids.iter()
            .filter_map(|id| conns.get(*id).cloned())
            .collect()
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
        let mut queued = 0;
        for (_, conn) in self.conns.borrow().iter() {
            queued += conn.queued_bytes() as u64;
            match conn.state() {
                ConnState::Open if conn.app.is_some_and(|a| !self.app(a).enabled) => {
                    // The app was disabled or removed by a reload.
                    conn.close(codes::APP_DISABLED, "Application is disabled");
                }
                ConnState::Open if self.unauthorized_too_long(conn, now) => {
                    let secs = self
                        .app(conn.app.unwrap_or_default())
                        .authorized_connections_timeout;
                    conn.close(
                        codes::CONNECTION_UNAUTHORIZED,
                        &format!(
                            "Connection not authorized within {secs} s: sign in or subscribe to a private or presence channel"
                        ),
                    );
                }
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
        self.stats
            .outbound_queue_bytes
            .store(queued, Ordering::Relaxed);
    }

    fn unauthorized_too_long(&self, conn: &Conn, now: Tick) -> bool {
        let Some(app) = conn.app else {
            return false;
        };
        let secs = self.app(app).authorized_connections_timeout;
        secs > 0
            && !conn.authorized.get()
            && now.wrapping_sub(conn.opened) >= (secs as Tick).saturating_mul(TICKS_PER_SEC)
    }

    /// Housekeeping that is not per connection: throttled subscription counts, and (on
    /// worker 0) expired cache entries.
    pub fn sweep_shared(&self, now: Tick) {
        self.flush_subscription_counts(now);
        if self.index == 0 {
            self.shared.cache.sweep();
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

fn remove_conn(map: &RefCell<ConnsByUser>, key: ChannelRef<'_>, conn_id: usize) {
    let mut map = map.borrow_mut();
    if let Some(ids) = map.get_mut(&key) {
        ids.retain(|&id| id != conn_id);
        if ids.is_empty() {
            map.remove(&key);
        }
    }
}
