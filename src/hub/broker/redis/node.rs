//! The node's broker thread: a current-thread tokio runtime holding one command connection
//! to Redis (requests of all workers pipelined over it, reconnected with backoff) and one
//! pub/sub connection (the channels this node has subscribers of, and the control channel).
//!
//! Requests are started in the order they arrive and their answers handed back in that
//! order ([`FuturesOrdered`]), so each worker hears its answers in the order it asked. A
//! request Redis cannot serve is answered from the node's own view (the local decision the
//! worker's call made alongside it). Interest changes made in one turn go out as one
//! `SUBSCRIBE`/`UNSUBSCRIBE`, and each declaring worker is answered once it is confirmed.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::stream::{FuturesOrdered, FuturesUnordered, StreamExt};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{RedisResult, Value};

use super::conn::{self, Conn, Subscriber, Target};
use super::keys::{Held, Keys};
use super::lease::{self, Beat, Reaped, Reaper};
use super::wire::{self, Origin, UserKind, UserMessage};
use super::{scripts, BrokerStatus, Command, Mirror, Query, RedisSettings};
use crate::app::{AppIdx, ChannelKey, LiveApps};
use crate::hub::broker::{Answer, BrokerError, Cached, ChannelInfo, Replay, UserConn, UserMsg};
use crate::hub::{Delivery, Router};
use crate::protocol::messages;
use crate::protocol::webhook::{Event, Kind};
use crate::pusher::{Joined, Member, Roster, Verdict};
use crate::webhooks::Webhooks;

/// Longest a Redis command may take before it counts as failed.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// Most channels in one `SUBSCRIBE` or `UNSUBSCRIBE`.
const SUBSCRIBE_BATCH: usize = 512;
/// First and longest pause between attempts to reach Redis again.
const RECONNECT_MIN: Duration = Duration::from_millis(100);
const RECONNECT_MAX: Duration = Duration::from_secs(5);

/// How often the node sweeps entries it no longer holds from its `held` set. An entry is
/// removed at the second sweep that finds it unused, long after any request that used it.
const SWEEP_HELD: Duration = Duration::from_secs(30);
/// How long after leaving one of its own sessions behind the node clears it: by then every
/// request made under it has been answered or has timed out.
const RETIRE_AFTER: Duration = Duration::from_secs(2 * COMMAND_TIMEOUT.as_secs());

/// A finished request: an answer for a worker, if it needs one.
type Done = Option<(usize, Answer)>;
type InFlight = Pin<Box<dyn Future<Output = Done>>>;

/// Background work that answers no worker: heartbeats and clearing dead sessions.
enum Upkeep {
    Beat(RedisResult<Beat>),
    Reaped(String, RedisResult<Option<Reaped>>),
    /// This node's own entries cleared at shutdown (or not).
    Departed,
}
type Background = Pin<Box<dyn Future<Output = Upkeep>>>;

/// The broker thread's state.
pub(super) struct Node {
    settings: RedisSettings,
    keys: Keys,
    origin: Origin,
    apps: LiveApps,
    router: Router,
    mirror: Arc<Mirror>,
    status: Arc<BrokerStatus>,
    /// How many of this node's workers want each channel's events.
    wanted: HashMap<ChannelKey, usize>,
    /// Workers waiting for their declaration of interest to be confirmed.
    waiting: HashMap<ChannelKey, Vec<usize>>,
    /// Pub/sub channels subscribed to (confirmed), and the channel each carries.
    subscribed: HashMap<String, ChannelKey>,
    /// Answers whose worker's inbox was full, in order, to hand over again.
    backlog: VecDeque<(usize, Box<Answer>)>,
    /// This run's session: every entry the node makes in Redis is under it.
    session: String,
    /// Whether anything has been registered under `session`.
    registered: bool,
    /// What `session`'s `held` set has, as far as this node wrote it.
    held: HashSet<Held>,
    /// Entries found no longer held at the last sweep.
    stale: HashSet<Held>,
    /// Sessions of this node id left behind (an earlier run's, or one whose lease expired),
    /// and when to clear them.
    retired: Vec<(String, Instant)>,
    /// Dead sessions this node is clearing.
    reaping: HashSet<String>,
    reaper: Reaper,
    webhooks: Webhooks,
    /// Decisions made, for their tokens.
    decisions: u64,
    /// Shutting down: who waits for this node's entries to be cleared.
    departing: Option<std::sync::mpsc::Sender<()>>,
}

impl Node {
    pub(super) fn new(
        settings: RedisSettings,
        origin: Origin,
        apps: LiveApps,
        router: Router,
        mirror: Arc<Mirror>,
        status: Arc<BrokerStatus>,
        webhooks: Webhooks,
    ) -> Self {
        let keys = Keys::new(&settings.prefix);
        Self {
            session: lease::new_session(&settings.node_id),
            registered: false,
            held: HashSet::new(),
            stale: HashSet::new(),
            retired: Vec::new(),
            reaping: HashSet::new(),
            reaper: Reaper {
                keys: keys.clone(),
                apps: apps.clone(),
                webhooks: webhooks.clone(),
                status: status.clone(),
                lease: settings.node_timeout,
                publish: settings.target.publish(),
            },
            webhooks,
            decisions: 0,
            departing: None,
            keys,
            settings,
            origin,
            apps,
            router,
            mirror,
            status,
            wanted: HashMap::new(),
            waiting: HashMap::new(),
            subscribed: HashMap::new(),
            backlog: VecDeque::new(),
        }
    }

    /// The thread's life: serve until every broker handle is dropped.
    pub(super) fn run(self, rx: tokio::sync::mpsc::Receiver<Command>) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a current-thread runtime builds");
        rt.block_on(self.serve(rx));
    }

    async fn serve(mut self, mut rx: tokio::sync::mpsc::Receiver<Command>) {
        let conn = match &self.settings.target {
            Target::Single(url) => {
                let client = match redis::Client::open(url.as_str()) {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::error!(error = %e, "invalid --redis-url: the node runs alone");
                        return;
                    }
                };
                let config = ConnectionManagerConfig::new()
                    .set_response_timeout(Some(COMMAND_TIMEOUT))
                    .set_connection_timeout(Some(COMMAND_TIMEOUT))
                    .set_number_of_retries(1)
                    .set_max_delay(RECONNECT_MAX);
                match ConnectionManager::new_lazy_with_config(client, config) {
                    Ok(c) => Conn::Single(c),
                    Err(e) => {
                        tracing::error!(error = %e, "cannot set up the Redis connection: the node runs alone");
                        return;
                    }
                }
            }
            // Connected at the first successful `connect`.
            Target::Cluster(_) => Conn::Cluster(Default::default()),
        };
        let mut pubsub: Option<Subscriber> = None;
        let mut in_flight: FuturesOrdered<InFlight> = FuturesOrdered::new();
        let mut retry_in = RECONNECT_MIN;
        let mut retry_at = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(5));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut upkeep: FuturesUnordered<Background> = FuturesUnordered::new();
        let mut beat =
            tokio::time::interval((self.settings.node_timeout / 3).max(Duration::from_millis(500)));
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut beating = false;
        let mut warned_at: Option<Instant> = None;
        let mut sweep = tokio::time::interval(SWEEP_HELD);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                cmd = rx.recv() => {
                    let Some(cmd) = cmd else { break };
                    self.start(cmd, &conn, &mut in_flight);
                    while let Ok(cmd) = rx.try_recv() {
                        self.start(cmd, &conn, &mut in_flight);
                    }
                }
                Some(done) = in_flight.next(), if !in_flight.is_empty() => {
                    if let Some((worker, answer)) = done {
                        self.answer(worker, answer);
                    }
                }
                Some(up) = upkeep.next(), if !upkeep.is_empty() => match up {
                    Upkeep::Beat(Ok(b)) => {
                        beating = false;
                        if b.held {
                            for dead in b.dead {
                                self.reap(dead, &conn, &upkeep);
                            }
                        } else if pubsub.is_some() {
                            pubsub = None;
                            self.lost();
                            retry_at = Instant::now();
                        }
                    }
                    Upkeep::Beat(Err(e)) => {
                        beating = false;
                        if pubsub.is_some() {
                            tracing::warn!(error = %e, "Redis did not answer the heartbeat: reconnecting");
                            pubsub = None;
                            self.lost();
                            retry_at = Instant::now() + retry_in;
                        }
                    }
                    Upkeep::Departed => {}
                    Upkeep::Reaped(session, res) => {
                        self.reaping.remove(&session);
                        match res {
                            Ok(Some(r)) => tracing::info!(
                                session = %session,
                                channels = r.channels,
                                members_removed = r.members,
                                users_offline = r.users,
                                "cleared what a dead node held"
                            ),
                            Ok(None) => {}
                            Err(e) => tracing::warn!(session = %session, error = %e, "clearing a dead node's state failed: retried at a later heartbeat"),
                        }
                    }
                },
                _ = beat.tick() => {
                    if pubsub.is_some() && !beating {
                        beating = true;
                        let (mut c, keys, session) = (conn.clone(), self.keys.clone(), self.session.clone());
                        let lease = self.settings.node_timeout;
                        let status = self.status.clone();
                        upkeep.push(Box::pin(async move {
                            let started = Instant::now();
                            let beat = lease::heartbeat(&mut c, &keys, &session, lease, false).await;
                            if beat.is_ok() {
                                status.round_trip(started);
                            }
                            Upkeep::Beat(beat)
                        }));
                    }
                }
                _ = sweep.tick() => {
                    if pubsub.is_some() {
                        self.sweep_held(&conn, &mut in_flight);
                    }
                }
                msg = next_message(&mut pubsub) => match msg {
                    Some((channel, payload)) => self.on_message(&channel, &payload),
                    None => {
                        pubsub = None;
                        self.lost();
                        retry_at = Instant::now() + retry_in;
                    }
                },
                _ = tick.tick() => {
                    self.retry_backlog();
                    if pubsub.is_some() && !self.retired.is_empty() {
                        let now = Instant::now();
                        let (due, later): (Vec<_>, Vec<_>) =
                            std::mem::take(&mut self.retired).into_iter().partition(|(_, at)| *at <= now);
                        self.retired = later;
                        for (session, _) in due {
                            self.reap(session, &conn, &upkeep);
                        }
                    }
                    if pubsub.is_none() && Instant::now() >= retry_at {
                        match self.connect(&conn).await {
                            Ok(p) => {
                                pubsub = Some(p);
                                retry_in = RECONNECT_MIN;
                                warned_at = None;
                            }
                            Err(e) => {
                                // Said once when it starts failing, then every 30 s.
                                let now = Instant::now();
                                if warned_at.is_none_or(|at| now >= at + Duration::from_secs(30)) {
                                    tracing::warn!(error = %e, "cannot reach Redis: retrying with backoff");
                                    warned_at = Some(now);
                                } else {
                                    tracing::debug!(error = %e, "Redis not reachable yet");
                                }
                                retry_in = (retry_in * 2).min(RECONNECT_MAX);
                                // Jitter: nodes restarted together do not retry together.
                                let jitter = rand::random::<u64>() % (retry_in.as_millis() as u64 / 2 + 1);
                                retry_at = Instant::now() + retry_in / 2 + Duration::from_millis(jitter);
                            }
                        }
                    }
                }
            }
            // Shutting down, and every earlier request is done: clear what this session
            // holds (its lease is left to expire, so anything a straggling request adds is
            // cleared by another node after the node timeout).
            if self.departing.is_some() && in_flight.is_empty() {
                let done = self.departing.take().expect("checked");
                match pubsub.is_some() {
                    true => {
                        let (reaper, c, me) =
                            (self.reaper.clone(), conn.clone(), self.session.clone());
                        upkeep.push(Box::pin(async move {
                            if let Err(e) = reaper.reap(c, &me, &me, false).await {
                                tracing::warn!(error = %e, "clearing this node's entries failed");
                            } else {
                                let _ = done.send(());
                            }
                            Upkeep::Departed
                        }));
                    }
                    false => drop(done),
                }
            }
            match pubsub.as_mut() {
                Some(sub) => {
                    if let Err(e) = self.flush_interest(sub).await {
                        tracing::warn!(error = %e, "Redis pub/sub failed: reconnecting");
                        pubsub = None;
                        self.lost();
                        retry_at = Instant::now() + retry_in;
                    }
                }
                // No Redis: this node's own events still reach its subscribers.
                None => self.confirm_all(),
            }
        }
    }

    /// Connects the pub/sub connection, subscribes the control channel and every channel
    /// this node wants, and registers the node's state again.
    async fn connect(&mut self, conn: &Conn) -> RedisResult<Subscriber> {
        if let (Conn::Cluster(cell), Target::Cluster(seeds)) = (conn, &self.settings.target) {
            if cell.get().is_none() {
                let c = tokio::time::timeout(
                    COMMAND_TIMEOUT,
                    conn::cluster(seeds, COMMAND_TIMEOUT, None),
                )
                .await
                .map_err(|_| {
                    redis::RedisError::from((redis::ErrorKind::Io, "connect timed out"))
                })??;
                let _ = cell.set(c);
            }
        }
        let mut sub = Subscriber::connect(&self.settings.target, COMMAND_TIMEOUT).await?;
        sub.subscribe(&[&self.keys.control()]).await?;
        self.subscribed.clear();
        let wanted: Vec<ChannelKey> = self.wanted.keys().cloned().collect();
        self.subscribe(&mut sub, wanted).await?;
        // The lease: kept if still valid; otherwise (cut off for longer than the node
        // timeout, or Redis lost its data) what the session held is, or will be, cleared by
        // another node, so the node registers under a new session and clears the old one.
        let mut c = conn.clone();
        let lease = self.settings.node_timeout;
        let held = lease::heartbeat(&mut c, &self.keys, &self.session, lease, false)
            .await?
            .held;
        if !held && self.registered {
            let old = std::mem::replace(
                &mut self.session,
                lease::new_session(&self.settings.node_id),
            );
            tracing::warn!(
                old = %old,
                new = %self.session,
                "this node's lease expired (out of touch with Redis for longer than --node-timeout): registering under a new session"
            );
            self.status.leases_lost.fetch_add(1, Ordering::Relaxed);
            self.retired.push((old, Instant::now() + RETIRE_AFTER));
            self.held.clear();
            self.stale.clear();
        }
        lease::heartbeat(&mut c, &self.keys, &self.session, lease, true).await?;
        let previous: Option<String> = redis::cmd("SET")
            .arg(self.keys.node_id(&self.settings.node_id))
            .arg(&self.session)
            .arg("GET")
            .query_async(&mut c)
            .await?;
        if let Some(previous) = previous.filter(|p| *p != self.session) {
            if !self.retired.iter().any(|(s, _)| *s == previous) {
                tracing::info!(
                    previous = %previous,
                    "clearing what the previous run of this node id held"
                );
                self.retired.push((previous, Instant::now()));
            }
        }
        let first = !self.registered;
        self.resync(conn.clone(), !held).await?;
        self.registered = true;
        self.status.connected.store(true, Ordering::Relaxed);
        if first {
            tracing::info!(node = %self.settings.node_id, session = %self.session, "connected to Redis: clustering on");
        } else {
            tracing::info!(node = %self.settings.node_id, session = %self.session, "Redis reachable again: state registered anew");
        }
        Ok(sub)
    }

    /// Redis went away: answers come from this node's own view until it is back.
    fn lost(&mut self) {
        if self.status.connected.swap(false, Ordering::Relaxed) {
            tracing::warn!(
                "Redis unreachable: serving this node's connections alone until it is back"
            );
        }
        self.subscribed.clear();
    }

    /// Registers what this node has (subscription counts, presence memberships, sign-ins)
    /// again, after (re)connecting; everything is idempotent. With `announce` (the session
    /// is new: others may have heard these members leave, or never heard them join), the
    /// members and occupancy this changes are announced and their webhooks sent.
    async fn resync(&mut self, mut conn: Conn, announce: bool) -> RedisResult<()> {
        let node = self.session.clone();
        let publish = self.settings.target.publish();
        let held_key = self.keys.held(&node);
        let mut held = HashSet::new();
        for (key, _) in self.router.channels() {
            if let Some(app_id) = self.app_id(key.app) {
                held.insert(Held::Channel(app_id, key.name.to_string()));
            }
        }
        for (app, user, _) in self.mirror.sign_ins() {
            if let Some(app_id) = self.app_id(app) {
                held.insert(Held::User(app_id, user.to_string()));
            }
        }
        // First what the session will hold, so a crash half-way leaves nothing unclearable.
        if !held.is_empty() {
            let mut sadd = redis::cmd("SADD");
            sadd.arg(&held_key);
            for h in &held {
                sadd.arg(h.entry());
            }
            sadd.query_async::<()>(&mut conn).await?;
        }
        self.held.extend(held);
        let apps = self.apps.load_full();
        for (key, count) in self.router.channels() {
            let Some(app_id) = self.app_id(key.app) else {
                continue;
            };
            let k = self.keys.channel(&app_id, &key.name);
            let (before, total, quiet): (i64, i64, i64) = scripts::SET_COUNT
                .key(&k.subs)
                .key(&k.total)
                .key(&k.vacated)
                .arg(&node)
                .arg(count)
                .invoke_async(&mut conn)
                .await?;
            let occupied = before == 0 && total > 0 && quiet == 0;
            if announce && occupied && !key.name.starts_with('#') {
                if let Some(app) = apps.try_get(key.app) {
                    if app.wants_webhook(Kind::ChannelOccupied) {
                        self.webhooks
                            .send(key.app, Event::new(Kind::ChannelOccupied, &key.name));
                    }
                }
            }
            if total > 0 && !key.name.starts_with('#') {
                redis::cmd("SADD")
                    .arg(self.keys.app_channels(&app_id))
                    .arg(&*key.name)
                    .query_async::<()>(&mut conn)
                    .await?;
            }
        }
        let mut memberships = Vec::new();
        self.mirror.presence.for_each(|channel, member, socket| {
            memberships.push((channel.clone(), member.clone(), socket));
        });
        for (channel, member, socket) in memberships {
            let Some(app_id) = self.app_id(channel.app) else {
                continue;
            };
            let k = self.keys.channel(&app_id, &channel.name);
            let entry = format!("{node}\n{socket}");
            // Every node's subscribers, this one's too: they may have had a
            // `member_removed` from the node that cleared the old session.
            let payload = match announce {
                true => wire::event(
                    None,
                    None,
                    &messages::member_added(&channel.name, &member.user_id, &member.user_info),
                ),
                false => Bytes::new(),
            };
            let joined = scripts::JOIN
                .key(&k.members)
                .key(&k.order)
                .key(&k.conns)
                .key(&k.uconns)
                .key(&k.seq)
                .key(&k.events)
                .key(&k.left)
                .arg(&*member.user_id)
                .arg(&*member.user_info)
                .arg(entry)
                .arg(usize::MAX)
                .arg(payload.as_ref())
                .arg(publish)
                .invoke_async::<Vec<Value>>(&mut conn)
                .await?;
            if announce && matches!(joined.first(), Some(Value::Int(1))) {
                if let Some(app) = apps.try_get(channel.app) {
                    if app.wants_webhook(Kind::MemberAdded) {
                        let e =
                            Event::new(Kind::MemberAdded, &channel.name).with_user(&member.user_id);
                        self.webhooks.send(channel.app, e);
                    }
                }
            }
        }
        for (app, user, socket) in self.mirror.sign_ins() {
            let Some(app_id) = self.app_id(app) else {
                continue;
            };
            scripts::SIGN_IN
                .key(self.keys.user(&app_id, &user))
                .arg(format!("{node}\n{socket}"))
                .invoke_async::<i64>(&mut conn)
                .await?;
        }
        self.status.resyncs.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// The id of app `app` (an index is this node's own; ids are the cluster's).
    fn app_id(&self, app: AppIdx) -> Option<String> {
        self.apps.load().try_get(app).map(|a| a.id.clone())
    }

    /// Starts one request.
    fn start(&mut self, cmd: Command, conn: &Conn, in_flight: &mut FuturesOrdered<InFlight>) {
        self.status.commands.fetch_add(1, Ordering::Relaxed);
        let node = self.session.clone();
        let publish = self.settings.target.publish();
        match cmd {
            Command::Interest {
                worker,
                channel,
                interested,
            } => return self.interest(worker, channel, interested, conn, in_flight),
            Command::SignIn { ref req, .. } => {
                if let Some(app_id) = self.app_id(req.app) {
                    self.note_held(Held::User(app_id, req.user.to_string()), conn, in_flight);
                }
            }
            _ => {}
        }
        let mut conn = conn.clone();
        match cmd {
            Command::Interest { .. } => unreachable!("handled above"),
            Command::Publish { events, done } => {
                let named: Vec<(String, Bytes)> = events
                    .into_iter()
                    .filter_map(|(channel, payload)| {
                        let app_id = self.app_id(channel.app)?;
                        Some((self.keys.events(&app_id, &channel.name), payload))
                    })
                    .collect();
                self.status
                    .published
                    .fetch_add(named.len() as u64, Ordering::Relaxed);
                let status = self.status.clone();
                in_flight.push_back(Box::pin(async move {
                    let started = Instant::now();
                    let res = conn::publish_all(&mut conn, publish, named)
                        .await
                        .map_err(unavailable);
                    if res.is_ok() {
                        status.round_trip(started);
                    }
                    match done {
                        Some(done) => {
                            let _ = done.send(res);
                        }
                        None => {
                            if let Err(e) = res {
                                tracing::warn!(error = %e, "events not handed to the other nodes");
                            }
                        }
                    }
                    None
                }));
            }
            Command::Broadcast { msg, done } => {
                let Some(payload) = self.user_message(&msg) else {
                    let _ = done.send(Ok(()));
                    return;
                };
                let control = self.keys.control();
                in_flight.push_back(Box::pin(async move {
                    let res = redis::cmd(publish)
                        .arg(control)
                        .arg(payload.as_ref())
                        .query_async::<i64>(&mut conn)
                        .await
                        .map(drop)
                        .map_err(unavailable);
                    let _ = done.send(res);
                    None
                }));
            }
            Command::Count { worker, req } => {
                let Some(app_id) = self.app_id(req.channel.app) else {
                    return self.answer(
                        worker,
                        Answer::Counted(req.clone(), req.node_count, Verdict::Send),
                    );
                };
                let k = self.keys.channel(&app_id, &req.channel.name);
                let app_channels = self.keys.app_channels(&app_id);
                let delta: i64 = match req.change {
                    crate::pusher::occupancy::Change::Subscribed => 1,
                    crate::pusher::occupancy::Change::Unsubscribed => -1,
                    crate::pusher::occupancy::Change::Due => 0,
                };
                let token = self.decision();
                in_flight.push_back(Box::pin(async move {
                    let res: RedisResult<(i64, i64)> = scripts::COUNT
                        .key(&k.subs)
                        .key(&k.total)
                        .key(&k.vacated)
                        .arg(&node)
                        .arg(delta)
                        .arg(&*token)
                        .invoke_async(&mut conn)
                        .await;
                    let mut verdict = Verdict::Send;
                    let count = match res {
                        Ok((n, v)) => {
                            verdict = match v {
                                1 => Verdict::Quiet,
                                2 => Verdict::Confirm(token),
                                _ => Verdict::Send,
                            };
                            // The app's list of channels follows occupancy (best effort: a
                            // listing checks each channel's count).
                            if !req.channel.name.starts_with('#') {
                                let op = match (delta, n) {
                                    (1, 1) => Some("SADD"),
                                    (-1, 0) => Some("SREM"),
                                    _ => None,
                                };
                                if let Some(op) = op {
                                    let _ = redis::cmd(op)
                                        .arg(&app_channels)
                                        .arg(&*req.channel.name)
                                        .query_async::<()>(&mut conn)
                                        .await;
                                }
                            }
                            n.max(0) as u64
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, "count not shared: this node's own");
                            req.node_count
                        }
                    };
                    Some((worker, Answer::Counted(req, count, verdict)))
                }));
            }
            Command::Join { worker, req, local } => {
                let Some(app_id) = self.app_id(req.channel.app) else {
                    return self.answer(worker, Answer::Joined(req, local));
                };
                let k = self.keys.channel(&app_id, &req.channel.name);
                let payload = wire::event(None, Some(req.conn.socket_id), &req.announce);
                let entry = format!("{node}\n{}", req.conn.socket_id);
                let status = self.status.clone();
                let router = self.router_handle();
                in_flight.push_back(Box::pin(async move {
                    let res: RedisResult<Vec<Value>> = scripts::JOIN
                        .key(&k.members)
                        .key(&k.order)
                        .key(&k.conns)
                        .key(&k.uconns)
                        .key(&k.seq)
                        .key(&k.events)
                        .key(&k.left)
                        .arg(&*req.member.user_id)
                        .arg(&*req.member.user_info)
                        .arg(entry)
                        .arg(req.max_members)
                        .arg(payload.as_ref())
                        .arg(publish)
                        .invoke_async(&mut conn)
                        .await;
                    let joined = match res.map(|v| parse_joined(&req.channel.name, v)) {
                        Ok(Some(joined)) => joined,
                        other => {
                            if let Err(e) = other {
                                tracing::debug!(error = %e, "presence not shared: this node's own");
                            }
                            status.fallbacks.fetch_add(1, Ordering::Relaxed);
                            if matches!(local, Joined::First(_)) {
                                let except = Some(req.conn.socket_id);
                                announce(&router, worker, &req.channel, &req.announce, except);
                            }
                            local
                        }
                    };
                    Some((worker, Answer::Joined(req, joined)))
                }));
            }
            Command::Leave { worker, req, local } => {
                let Some(app_id) = self.app_id(req.channel.app) else {
                    return self.answer(worker, Answer::Left(req, local, Verdict::Send));
                };
                let k = self.keys.channel(&app_id, &req.channel.name);
                let payload = wire::event(None, None, &req.announce);
                let entry = format!("{node}\n{}", req.socket_id);
                let status = self.status.clone();
                let router = self.router_handle();
                let token = self.decision();
                in_flight.push_back(Box::pin(async move {
                    let res: RedisResult<i64> = scripts::LEAVE
                        .key(&k.members)
                        .key(&k.order)
                        .key(&k.conns)
                        .key(&k.uconns)
                        .key(&k.seq)
                        .key(&k.events)
                        .key(&k.left)
                        .arg(&*req.user)
                        .arg(entry)
                        .arg(payload.as_ref())
                        .arg(publish)
                        .arg(&*token)
                        .invoke_async(&mut conn)
                        .await;
                    let mut verdict = Verdict::Send;
                    let last = match res {
                        Ok(n) => {
                            verdict = Verdict::Confirm(token);
                            n == 1
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, "presence not shared: this node's own");
                            status.fallbacks.fetch_add(1, Ordering::Relaxed);
                            if local {
                                announce(&router, worker, &req.channel, &req.announce, None);
                            }
                            local
                        }
                    };
                    Some((worker, Answer::Left(req, last, verdict)))
                }));
            }
            Command::Members { worker, req } => {
                let local = self.mirror.presence.roster(req.channel.as_ref());
                let Some(app_id) = self.app_id(req.channel.app) else {
                    return self.answer(worker, Answer::Members(req, local));
                };
                let k = self.keys.channel(&app_id, &req.channel.name);
                in_flight.push_back(Box::pin(async move {
                    let roster = match members(&mut conn, &k.members, &k.order).await {
                        Ok(members) => Roster::of(&req.channel.name, &members),
                        Err(_) => local,
                    };
                    Some((worker, Answer::Members(req, roster)))
                }));
            }
            Command::SignIn { worker, req, local } => {
                let Some(app_id) = self.app_id(req.app) else {
                    return self.answer(worker, local);
                };
                let user = self.keys.user(&app_id, &req.user);
                let watched: Vec<String> = req
                    .watchlist
                    .iter()
                    .map(|w| self.keys.user(&app_id, w))
                    .collect();
                let entry = format!("{node}\n{}", req.conn.socket_id);
                in_flight.push_back(Box::pin(async move {
                    let res: RedisResult<(Vec<bool>, i64)> = async {
                        let mut online = Vec::with_capacity(watched.len());
                        for w in &watched {
                            online.push(
                                redis::cmd("EXISTS")
                                    .arg(w)
                                    .query_async::<bool>(&mut conn)
                                    .await?,
                            );
                        }
                        let first: i64 = scripts::SIGN_IN
                            .key(&user)
                            .arg(entry)
                            .invoke_async(&mut conn)
                            .await?;
                        Ok((online, first))
                    }
                    .await;
                    let answer = match res {
                        Ok((online, first)) => Answer::SignedIn {
                            watched_online: req
                                .watchlist
                                .iter()
                                .zip(online)
                                .filter(|(_, on)| *on)
                                .map(|(w, _)| w.clone())
                                .collect(),
                            came_online: first == 1,
                            req,
                        },
                        Err(e) => {
                            tracing::debug!(error = %e, "sign-in not shared: this node's own");
                            local
                        }
                    };
                    Some((worker, answer))
                }));
            }
            Command::SignOut { worker, req, local } => {
                let Some(app_id) = self.app_id(req.app) else {
                    return self.answer(worker, Answer::SignedOut(req, local));
                };
                let user = self.keys.user(&app_id, &req.user);
                let entry = format!("{node}\n{}", req.socket_id);
                in_flight.push_back(Box::pin(async move {
                    let res: RedisResult<i64> = scripts::SIGN_OUT
                        .key(&user)
                        .arg(entry)
                        .invoke_async(&mut conn)
                        .await;
                    let offline = res.map_or(local, |n| n == 1);
                    Some((worker, Answer::SignedOut(req, offline)))
                }));
            }
            Command::Remember {
                channel,
                event,
                ttl,
            } => {
                let Some(app_id) = self.app_id(channel.app) else {
                    return;
                };
                let k = self.keys.channel(&app_id, &channel.name);
                let ttl_ms = ttl.as_millis().clamp(1, i64::MAX as u128) as i64;
                in_flight.push_back(Box::pin(async move {
                    let res: RedisResult<i64> = scripts::REMEMBER
                        .key(&k.cache)
                        .key(&k.missed)
                        .arg(event.as_ref())
                        .arg(ttl_ms)
                        .invoke_async(&mut conn)
                        .await;
                    if let Err(e) = res {
                        tracing::warn!(error = %e, "cache channel's last event not kept");
                    }
                    None
                }));
            }
            Command::Replay { worker, req } => {
                let Some(app_id) = self.app_id(req.channel.app) else {
                    return self
                        .answer(worker, Answer::Replayed(req, Replay::Miss { first: false }));
                };
                let k = self.keys.channel(&app_id, &req.channel.name);
                in_flight.push_back(Box::pin(async move {
                    let res: RedisResult<(i64, Value)> = scripts::REPLAY
                        .key(&k.cache)
                        .key(&k.missed)
                        .invoke_async(&mut conn)
                        .await;
                    let replay = match res {
                        Ok((1, Value::BulkString(event))) => match decode_cached(&event) {
                            Some((frame, _, _)) => Replay::Hit(frame),
                            None => Replay::Miss { first: false },
                        },
                        Ok((_, first)) => Replay::Miss {
                            first: matches!(first, Value::Int(1)),
                        },
                        Err(e) => {
                            tracing::debug!(error = %e, "cache not reachable");
                            Replay::Miss { first: false }
                        }
                    };
                    Some((worker, Answer::Replayed(req, replay)))
                }));
            }
            Command::Query(q) => self.query(q, conn, in_flight),
            Command::Depart { done } => self.departing = Some(done),
            // Answers are handed back in the order asked: this one comes after the rest.
            Command::Barrier { worker } => {
                in_flight.push_back(Box::pin(async move { Some((worker, Answer::Barrier)) }))
            }
            Command::Confirm { app, event, reply } => {
                let (Some(app_id), Some(token)) = (self.app_id(app), event.confirm.clone()) else {
                    let _ = reply.send(true);
                    return;
                };
                let k = self.keys.channel(&app_id, &event.channel);
                let mut script = scripts::CONFIRM.prepare_invoke();
                match &event.user_id {
                    Some(user) => script.key(&k.left).arg(&*token).arg(&**user),
                    None => script.key(&k.vacated).arg(&*token),
                };
                in_flight.push_back(Box::pin(async move {
                    let res: RedisResult<i64> = script.invoke_async(&mut conn).await;
                    // Redis out of reach: sent unconfirmed rather than lost.
                    let _ = reply.send(res.map_or(true, |n| n == 1));
                    None
                }));
            }
        }
    }

    /// A question of the HTTP API.
    fn query(&self, q: Query, mut conn: Conn, in_flight: &mut FuturesOrdered<InFlight>) {
        match q {
            Query::Channel(key, tx) => {
                let Some(app_id) = self.app_id(key.app) else {
                    let _ = tx.send(Ok(ChannelInfo::default()));
                    return;
                };
                let k = self.keys.channel(&app_id, &key.name);
                in_flight.push_back(Box::pin(async move {
                    let res = async {
                        let total: Option<i64> = redis::cmd("GET")
                            .arg(&k.total)
                            .query_async(&mut conn)
                            .await?;
                        let users: i64 = redis::cmd("HLEN")
                            .arg(&k.members)
                            .query_async(&mut conn)
                            .await?;
                        Ok(ChannelInfo {
                            subscription_count: total.unwrap_or(0).max(0) as u64,
                            user_count: users.max(0) as usize,
                        })
                    }
                    .await
                    .map_err(unavailable);
                    let _ = tx.send(res);
                    None
                }));
            }
            Query::Channels(app, prefix, tx) => {
                let Some(app_id) = self.app_id(app) else {
                    let _ = tx.send(Ok(Vec::new()));
                    return;
                };
                let set = self.keys.app_channels(&app_id);
                let keys = self.keys.clone();
                in_flight.push_back(Box::pin(async move {
                    let res = async {
                        let names: Vec<String> = redis::cmd("SMEMBERS")
                            .arg(&set)
                            .query_async(&mut conn)
                            .await?;
                        let mut out = Vec::new();
                        for name in names.into_iter().filter(|n| n.starts_with(&prefix)) {
                            let total: Option<i64> = redis::cmd("GET")
                                .arg(keys.channel(&app_id, &name).total)
                                .query_async(&mut conn)
                                .await?;
                            match total.unwrap_or(0) {
                                n if n > 0 => out.push((Arc::from(name.as_str()), n as u64)),
                                // Vacated meanwhile (the set follows occupancy a step behind).
                                _ => {
                                    redis::cmd("SREM")
                                        .arg(&set)
                                        .arg(&name)
                                        .query_async::<()>(&mut conn)
                                        .await?;
                                }
                            }
                        }
                        Ok(out)
                    }
                    .await
                    .map_err(unavailable);
                    let _ = tx.send(res);
                    None
                }));
            }
            Query::Presence(key, tx) => {
                let Some(app_id) = self.app_id(key.app) else {
                    let _ = tx.send(Ok(Vec::new()));
                    return;
                };
                let k = self.keys.channel(&app_id, &key.name);
                in_flight.push_back(Box::pin(async move {
                    let res = members(&mut conn, &k.members, &k.order)
                        .await
                        .map_err(unavailable);
                    let _ = tx.send(res);
                    None
                }));
            }
            Query::UserConns(app, user, tx) => {
                let Some(app_id) = self.app_id(app) else {
                    let _ = tx.send(Ok(Vec::new()));
                    return;
                };
                let key = self.keys.user(&app_id, &user);
                in_flight.push_back(Box::pin(async move {
                    let res: RedisResult<Vec<String>> = redis::cmd("SMEMBERS")
                        .arg(&key)
                        .query_async(&mut conn)
                        .await;
                    let res = res.map_err(unavailable).map(|entries| {
                        let mut conns: Vec<UserConn> = entries
                            .iter()
                            .filter_map(|e| {
                                let (node, socket) = e.split_once('\n')?;
                                Some(UserConn {
                                    socket_id: socket.to_string(),
                                    node: Some(node.to_string()),
                                })
                            })
                            .collect();
                        conns.sort_by(|a, b| a.socket_id.cmp(&b.socket_id));
                        conns
                    });
                    let _ = tx.send(res);
                    None
                }));
            }
            Query::Cached(key, tx) => {
                let Some(app_id) = self.app_id(key.app) else {
                    let _ = tx.send(Ok(None));
                    return;
                };
                let k = self.keys.channel(&app_id, &key.name);
                in_flight.push_back(Box::pin(async move {
                    let res = async {
                        let event: Option<Vec<u8>> = redis::cmd("GET")
                            .arg(&k.cache)
                            .query_async(&mut conn)
                            .await?;
                        let ttl: i64 = redis::cmd("PTTL")
                            .arg(&k.cache)
                            .query_async(&mut conn)
                            .await?;
                        Ok(event
                            .and_then(|e| decode_cached(&e))
                            .map(|(frame, event, data)| Cached {
                                frame,
                                event: Arc::from(event.as_str()),
                                data: Arc::from(data.as_str()),
                                expires: Instant::now() + Duration::from_millis(ttl.max(0) as u64),
                            }))
                    }
                    .await
                    .map_err(unavailable);
                    let _ = tx.send(res);
                    None
                }));
            }
        }
    }

    /// A worker's declaration (or withdrawal) of interest in a channel.
    fn interest(
        &mut self,
        worker: usize,
        channel: ChannelKey,
        interested: bool,
        conn: &Conn,
        in_flight: &mut FuturesOrdered<InFlight>,
    ) {
        if interested {
            *self.wanted.entry(channel.clone()).or_default() += 1;
            let Some(app_id) = self.app_id(channel.app) else {
                return self.answer(worker, Answer::Interested(channel));
            };
            let held = Held::Channel(app_id.clone(), channel.name.to_string());
            self.note_held(held, conn, in_flight);
            if self
                .subscribed
                .contains_key(&self.keys.events(&app_id, &channel.name))
            {
                self.answer(worker, Answer::Interested(channel));
            } else {
                self.waiting.entry(channel).or_default().push(worker);
            }
        } else if let Some(n) = self.wanted.get_mut(&channel) {
            *n -= 1;
            if *n == 0 {
                self.wanted.remove(&channel);
            }
        }
    }

    /// Subscribes and unsubscribes what the workers' declarations changed, and answers the
    /// workers waiting for a subscription.
    async fn flush_interest(&mut self, sink: &mut Subscriber) -> RedisResult<()> {
        let add: Vec<ChannelKey> = self
            .waiting
            .keys()
            .filter(|k| self.wanted.contains_key(*k))
            .cloned()
            .collect();
        self.subscribe(sink, add).await?;
        let remove: Vec<String> = self
            .subscribed
            .iter()
            .filter(|(_, k)| !self.wanted.contains_key(*k))
            .map(|(name, _)| name.clone())
            .collect();
        for chunk in remove.chunks(SUBSCRIBE_BATCH) {
            let names: Vec<&str> = chunk.iter().map(String::as_str).collect();
            sink.unsubscribe(&names).await?;
            for name in chunk {
                self.subscribed.remove(name);
            }
            self.status
                .interest_changes
                .fetch_add(chunk.len() as u64, Ordering::Relaxed);
        }
        self.confirm_all();
        Ok(())
    }

    /// Subscribes `channels`' pub/sub channels, in batches.
    async fn subscribe(
        &mut self,
        sink: &mut Subscriber,
        channels: Vec<ChannelKey>,
    ) -> RedisResult<()> {
        let named: Vec<(String, ChannelKey)> = channels
            .into_iter()
            .filter_map(|k| Some((self.keys.events(&self.app_id(k.app)?, &k.name), k)))
            .filter(|(name, _)| !self.subscribed.contains_key(name))
            .collect();
        for chunk in named.chunks(SUBSCRIBE_BATCH) {
            let names: Vec<&str> = chunk.iter().map(|(n, _)| n.as_str()).collect();
            sink.subscribe(&names).await?;
            self.status
                .interest_changes
                .fetch_add(chunk.len() as u64, Ordering::Relaxed);
            for (name, key) in chunk {
                self.subscribed.insert(name.clone(), key.clone());
            }
        }
        Ok(())
    }

    /// Answers every worker waiting for a declaration (confirmed, or Redis is away and this
    /// node's own events are all there is).
    fn confirm_all(&mut self) {
        for (channel, workers) in std::mem::take(&mut self.waiting) {
            for w in workers {
                self.answer(w, Answer::Interested(channel.clone()));
            }
        }
    }

    /// An event or user message from Redis.
    fn on_message(&self, name: &str, payload: &[u8]) {
        if name == self.keys.control() {
            return self.on_user_message(payload);
        }
        let Some(channel) = self.subscribed.get(name) else {
            return;
        };
        let Some(event) = wire::parse_event(payload) else {
            tracing::debug!(channel = name, "unreadable event from Redis ignored");
            return;
        };
        if event.origin == Some(self.origin) {
            // Published here: this node's subscribers have it.
            return;
        }
        self.status.received.fetch_add(1, Ordering::Relaxed);
        self.router.route(
            crate::hub::router::FROM_BROKER,
            Delivery {
                channel: channel.clone(),
                frame: event.frame,
                except: event.except,
                published_at: 0,
            },
        );
    }

    fn on_user_message(&self, payload: &[u8]) {
        let Some(m) = wire::parse_user_message(payload) else {
            return;
        };
        if m.origin == self.origin {
            return;
        }
        let Some(app) = self.apps.load().by_id(&m.app_id) else {
            return;
        };
        let user: Arc<str> = Arc::from(m.user.as_str());
        let msg = match m.kind {
            UserKind::Terminate => UserMsg::Terminate { app, user },
            UserKind::Online => UserMsg::Watchlist {
                app,
                user,
                online: true,
            },
            UserKind::Offline => UserMsg::Watchlist {
                app,
                user,
                online: false,
            },
        };
        self.router
            .route_user(crate::hub::router::FROM_BROKER, &msg);
    }

    fn user_message(&self, msg: &UserMsg) -> Option<Bytes> {
        let (app, user, kind) = match msg {
            UserMsg::Terminate { app, user } => (*app, user, UserKind::Terminate),
            UserMsg::Watchlist { app, user, online } => (
                *app,
                user,
                if *online {
                    UserKind::Online
                } else {
                    UserKind::Offline
                },
            ),
        };
        Some(wire::user_message(&UserMessage {
            origin: self.origin,
            app_id: self.app_id(app)?,
            user: user.to_string(),
            kind,
        }))
    }

    /// Hands an answer to its worker, after any still waiting for room in that inbox.
    fn answer(&mut self, worker: usize, answer: Answer) {
        let answer = Box::new(answer);
        if self.backlog.iter().any(|(w, _)| *w == worker) {
            self.backlog.push_back((worker, answer));
            return;
        }
        if let Err(answer) = self.router.answer(worker, answer) {
            self.backlog.push_back((worker, answer));
        }
    }

    fn retry_backlog(&mut self) {
        let mut blocked = Vec::new();
        let mut still = VecDeque::new();
        for (worker, answer) in std::mem::take(&mut self.backlog) {
            if blocked.contains(&worker) {
                still.push_back((worker, answer));
                continue;
            }
            if let Err(answer) = self.router.answer(worker, answer) {
                blocked.push(worker);
                still.push_back((worker, answer));
            }
        }
        self.backlog = still;
    }

    /// A token naming one decision of this node (a vacated channel, a member's last leave),
    /// unique in the cluster.
    fn decision(&mut self) -> Arc<str> {
        self.decisions += 1;
        Arc::from(format!("{}\n{}", self.session, self.decisions))
    }

    /// Records that the session registers something in `held` (before it does: requests
    /// run in order), so that it can be cleared if this node dies.
    fn note_held(&mut self, held: Held, conn: &Conn, in_flight: &mut FuturesOrdered<InFlight>) {
        self.stale.remove(&held);
        if self.held.contains(&held) {
            return;
        }
        let cmd = redis::cmd("SADD")
            .arg(self.keys.held(&self.session))
            .arg(held.entry())
            .to_owned();
        self.held.insert(held);
        let mut conn = conn.clone();
        in_flight.push_back(Box::pin(async move {
            if let Err(e) = cmd.query_async::<()>(&mut conn).await {
                tracing::debug!(error = %e, "held entry not recorded");
            }
            None
        }));
    }

    /// Removes from the `held` set what the node has not held for a whole sweep period.
    fn sweep_held(&mut self, conn: &Conn, in_flight: &mut FuturesOrdered<InFlight>) {
        let mut now = HashSet::new();
        for key in self.wanted.keys() {
            if let Some(app_id) = self.app_id(key.app) {
                now.insert(Held::Channel(app_id, key.name.to_string()));
            }
        }
        for (app, user, _) in self.mirror.sign_ins() {
            if let Some(app_id) = self.app_id(app) {
                now.insert(Held::User(app_id, user.to_string()));
            }
        }
        let unused: HashSet<Held> = self.held.difference(&now).cloned().collect();
        let (gone, fresh): (Vec<Held>, Vec<Held>) =
            unused.into_iter().partition(|h| self.stale.contains(h));
        self.stale = fresh.into_iter().collect();
        if gone.is_empty() {
            return;
        }
        let mut srem = redis::cmd("SREM");
        srem.arg(self.keys.held(&self.session));
        for h in &gone {
            srem.arg(h.entry());
            self.held.remove(h);
        }
        let mut conn = conn.clone();
        in_flight.push_back(Box::pin(async move {
            if let Err(e) = srem.query_async::<()>(&mut conn).await {
                tracing::debug!(error = %e, "held entries not removed");
            }
            None
        }));
    }

    /// Starts clearing dead session `dead`, unless it is already being cleared here.
    fn reap(&mut self, dead: String, conn: &Conn, upkeep: &FuturesUnordered<Background>) {
        if dead == self.session || !self.reaping.insert(dead.clone()) {
            return;
        }
        let (reaper, conn, me) = (self.reaper.clone(), conn.clone(), self.session.clone());
        upkeep.push(Box::pin(async move {
            let res = reaper.reap(conn, &me, &dead, true).await;
            Upkeep::Reaped(dead, res)
        }));
    }

    /// The router, for a request's future: a member event decided here when Redis is away
    /// goes to this node's subscribers only.
    fn router_handle(&self) -> Router {
        self.router.clone()
    }
}

/// Delivers a member event to this node's subscribers.
fn announce(
    router: &Router,
    worker: usize,
    channel: &ChannelKey,
    frame: &Bytes,
    except: Option<crate::protocol::SocketId>,
) {
    router.route(
        worker,
        Delivery {
            channel: channel.clone(),
            frame: frame.clone(),
            except,
            published_at: 0,
        },
    );
}

async fn next_message(pubsub: &mut Option<Subscriber>) -> Option<(String, Vec<u8>)> {
    match pubsub {
        Some(sub) => sub.next().await,
        None => std::future::pending().await,
    }
}

fn unavailable(e: redis::RedisError) -> BrokerError {
    BrokerError::Unavailable(format!("Redis did not answer ({e})"))
}

/// The `{kind, id, info, …}` of [`scripts::JOIN`] for `channel`.
fn parse_joined(channel: &str, v: Vec<Value>) -> Option<Joined> {
    let mut it = v.into_iter();
    let kind = match it.next()? {
        Value::Int(k) => k,
        _ => return None,
    };
    let members = pairs(it.collect())?;
    let roster = || Roster::of(channel, &members);
    match kind {
        0 => Some(Joined::Full),
        1 => Some(Joined::First(roster())),
        2 => Some(Joined::Again(roster())),
        3 => Some(Joined::Back(roster())),
        _ => None,
    }
}

/// Members from a flat `id, info, …` list.
fn pairs(v: Vec<Value>) -> Option<Vec<Member>> {
    let text = |v: &Value| match v {
        Value::BulkString(b) => std::str::from_utf8(b).ok().map(Arc::<str>::from),
        _ => None,
    };
    v.chunks(2)
        .map(|p| {
            Some(Member {
                user_id: text(p.first()?)?,
                user_info: text(p.get(1)?)?,
            })
        })
        .collect()
}

async fn members(conn: &mut Conn, members: &str, order: &str) -> RedisResult<Vec<Member>> {
    let v: Vec<Value> = scripts::MEMBERS
        .key(members)
        .key(order)
        .invoke_async(conn)
        .await?;
    pairs(v).ok_or_else(|| redis::RedisError::from((redis::ErrorKind::Parse, "members")))
}

/// A cache channel's last event as kept in Redis: its frame, name and data.
pub(super) fn encode_cached(frame: &[u8], event: &str, data: &str) -> Bytes {
    let mut b = BytesMut::with_capacity(8 + event.len() + data.len() + frame.len());
    b.put_u32(event.len() as u32);
    b.put_slice(event.as_bytes());
    b.put_u32(data.len() as u32);
    b.put_slice(data.as_bytes());
    b.put_slice(frame);
    b.freeze()
}

fn decode_cached(mut b: &[u8]) -> Option<(Bytes, String, String)> {
    let take = |b: &mut &[u8]| -> Option<String> {
        if b.len() < 4 {
            return None;
        }
        let n = b.get_u32() as usize;
        if b.len() < n {
            return None;
        }
        let s = std::str::from_utf8(&b[..n]).ok()?.to_string();
        b.advance(n);
        Some(s)
    };
    let event = take(&mut b)?;
    let data = take(&mut b)?;
    Some((Bytes::copy_from_slice(b), event, data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_events_round_trip() {
        let b = encode_cached(b"\x81\x02{}", "e", "d\"");
        assert_eq!(
            decode_cached(&b),
            Some((Bytes::from_static(b"\x81\x02{}"), "e".into(), "d\"".into()))
        );
        assert_eq!(decode_cached(&[0, 0]), None);
    }

    #[test]
    fn join_results_parse() {
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let parse = |v| parse_joined("presence-x", v);
        assert_eq!(parse(vec![Value::Int(0)]), Some(Joined::Full));
        let first = parse(vec![Value::Int(1), bulk("ann"), bulk("null")]).unwrap();
        let ann = Member {
            user_id: Arc::from("ann"),
            user_info: Arc::from("null"),
        };
        assert_eq!(first, Joined::First(Roster::of("presence-x", &[ann])));
        assert_eq!(parse(vec![Value::Int(2), bulk("a")]), None);
    }
}
