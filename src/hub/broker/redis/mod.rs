//! The broker of a cluster of nodes sharing one Redis (or Valkey): each node publishes an
//! event to Redis once per channel, receives a channel's events only while it has
//! subscribers of it, and keeps presence, users, counts and cache channels' last events in
//! Redis, changed by scripts that decide atomically ([`scripts`]; the keys are in
//! [`keys`]).
//!
//! Workers hand requests to the node's broker thread ([`node`]) through a bounded queue and
//! never wait: the thread pipelines them over one connection, and the answers come back
//! through the workers' inboxes, in the order asked. Events from other nodes arrive on the
//! thread's pub/sub connection and go to the workers with subscribers through the same
//! [`Router`] that routes this node's events.
//!
//! The node also keeps its own connections' presence memberships and sign-ins in memory
//! ([`Mirror`]): when Redis cannot be reached, requests are answered from it, as if this node
//! were alone, and when Redis is back the node registers everything it has again.

mod conn;
mod keys;
mod lease;
mod node;
mod scripts;
mod wire;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use super::cache::Cached;
use super::presence::PresenceRegistry;
use super::users::UserRegistry;
use super::*;
use crate::app::LiveApps;
use crate::hub::Router;
pub use crate::metrics::BrokerStats as BrokerStatus;
use crate::webhooks::Webhooks;

pub use conn::Target;
pub use keys::Keys;

/// Requests one node's workers may have queued for its broker thread.
const QUEUE: usize = 64 * 1024;

/// How a node joins the cluster.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// The Redis server or Cluster.
    pub target: Target,
    /// Prefix of every key and pub/sub channel.
    pub prefix: String,
    /// This node's id.
    pub node_id: String,
    /// How long its lease lasts without renewal.
    pub node_timeout: Duration,
}

/// What this node's own connections hold, kept in memory: the answer when Redis cannot be
/// reached, and what is registered again when it is back.
#[derive(Default)]
pub(super) struct Mirror {
    presence: PresenceRegistry,
    users: UserRegistry,
    /// Each signed-in connection. A mutex: touched per sign-in and sign-out, never per
    /// event.
    sign_ins: std::sync::Mutex<std::collections::HashSet<(AppIdx, Arc<str>, SocketId)>>,
}

impl Mirror {
    fn signed_in(&self, app: AppIdx, user: &Arc<str>, socket: SocketId, on: bool) {
        let mut set = self.sign_ins.lock().unwrap_or_else(|e| e.into_inner());
        if on {
            set.insert((app, user.clone(), socket));
        } else {
            set.remove(&(app, user.clone(), socket));
        }
    }

    /// Every signed-in connection.
    pub(super) fn sign_ins(&self) -> Vec<(AppIdx, Arc<str>, SocketId)> {
        let set = self.sign_ins.lock().unwrap_or_else(|e| e.into_inner());
        set.iter().cloned().collect()
    }
}

/// A request for the broker thread.
pub(super) enum Command {
    /// Events for other nodes; `done` hears when Redis has them.
    Publish {
        events: Vec<(ChannelKey, Bytes)>,
        done: Option<oneshot::Sender<Result<(), BrokerError>>>,
    },
    /// A user message for other nodes.
    Broadcast {
        msg: UserMsg,
        done: oneshot::Sender<Result<(), BrokerError>>,
    },
    Interest {
        worker: usize,
        channel: ChannelKey,
        interested: bool,
    },
    Count {
        worker: usize,
        req: Count,
    },
    Join {
        worker: usize,
        req: Join,
        /// This node's own decision, the answer if Redis fails.
        local: Joined,
    },
    Leave {
        worker: usize,
        req: Leave,
        local: bool,
    },
    Members {
        worker: usize,
        req: ForConn,
    },
    SignIn {
        worker: usize,
        req: SignIn,
        local: Answer,
    },
    SignOut {
        worker: usize,
        req: SignOut,
        local: bool,
    },
    Remember {
        channel: ChannelKey,
        event: Bytes,
        ttl: Duration,
    },
    Replay {
        worker: usize,
        req: ForConn,
    },
    Query(Query),
    /// Shutting down: clear what this node still holds once every earlier request is
    /// done, then say so.
    Depart {
        done: std::sync::mpsc::Sender<()>,
    },
    /// Answer the worker once everything it asked before is answered.
    Barrier {
        worker: usize,
    },
    /// Whether a held leave's webhook still stands.
    Confirm {
        app: AppIdx,
        event: crate::protocol::webhook::Event,
        reply: oneshot::Sender<bool>,
    },
}

/// Occupied channels with their subscription counts.
type Occupied = Vec<(Arc<str>, u64)>;

/// A question of the HTTP API.
pub(super) enum Query {
    Channel(
        ChannelKey,
        oneshot::Sender<Result<ChannelInfo, BrokerError>>,
    ),
    Channels(
        AppIdx,
        String,
        oneshot::Sender<Result<Occupied, BrokerError>>,
    ),
    Presence(
        ChannelKey,
        oneshot::Sender<Result<Vec<Member>, BrokerError>>,
    ),
    Cached(
        ChannelKey,
        oneshot::Sender<Result<Option<Cached>, BrokerError>>,
    ),
    UserConns(
        AppIdx,
        String,
        oneshot::Sender<Result<Vec<UserConn>, BrokerError>>,
    ),
}

/// The Redis [`Broker`].
pub struct RedisBroker {
    commands: mpsc::Sender<Command>,
    origin: wire::Origin,
    mirror: Arc<Mirror>,
    status: Arc<BrokerStatus>,
}

impl RedisBroker {
    /// Starts the node's broker thread, which connects (and keeps reconnecting) to Redis.
    pub fn start(
        settings: RedisSettings,
        apps: LiveApps,
        router: Router,
        status: Arc<BrokerStatus>,
        webhooks: Webhooks,
    ) -> std::io::Result<Self> {
        let (commands, rx) = mpsc::channel(QUEUE);
        let origin: wire::Origin = rand::random();
        let mirror = Arc::new(Mirror::default());
        let node = node::Node::new(
            settings,
            origin,
            apps,
            router,
            mirror.clone(),
            status.clone(),
            webhooks,
        );
        std::thread::Builder::new()
            .name("ringcast-broker".into())
            .spawn(move || node.run(rx))?;
        Ok(Self {
            commands,
            origin,
            mirror,
            status,
        })
    }

    /// Queues `cmd` for the thread; false if the queue is full (or the thread is gone).
    fn send(&self, cmd: Command) -> bool {
        match self.commands.try_send(cmd) {
            Ok(()) => true,
            Err(_) => {
                self.status.fallbacks.fetch_add(1, Ordering::Relaxed);
                tracing::warn!("the broker's queue is full: answering from this node's own view");
                false
            }
        }
    }

    fn events(&self, deliveries: &[Delivery]) -> Vec<(ChannelKey, Bytes)> {
        deliveries
            .iter()
            .map(|d| {
                let payload = wire::event(Some(self.origin), d.except, &d.frame);
                (d.channel.clone(), payload)
            })
            .collect()
    }

    /// A question for the thread, answered through a oneshot.
    fn query<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, BrokerError>>) -> Query,
    ) -> Pending<T> {
        if !self.available() {
            return Pending::failed(BrokerError::Unavailable(
                "Redis cannot be reached: no cluster-wide answer".into(),
            ));
        }
        let (tx, rx) = oneshot::channel();
        if self.send(Command::Query(make(tx))) {
            Pending::waiting(rx)
        } else {
            Pending::failed(BrokerError::Unavailable("the broker is overloaded".into()))
        }
    }
}

impl RedisBroker {
    /// The webhook sender's way to confirm held leaves with the cluster.
    pub fn confirmer(&self) -> Arc<dyn crate::webhooks::Confirm> {
        Arc::new(Confirmer {
            commands: self.commands.clone(),
        })
    }
}

/// Confirms held leaves through the broker thread.
struct Confirmer {
    commands: mpsc::Sender<Command>,
}

impl crate::webhooks::Confirm for Confirmer {
    fn confirm(
        &self,
        app: AppIdx,
        event: &crate::protocol::webhook::Event,
    ) -> oneshot::Receiver<bool> {
        let (reply, rx) = oneshot::channel();
        let cmd = Command::Confirm {
            app,
            event: event.clone(),
            reply,
        };
        if let Err(e) = self.commands.try_send(cmd) {
            // No room: the webhook goes out unconfirmed rather than not at all.
            if let Command::Confirm { reply, .. } = e.into_inner() {
                let _ = reply.send(true);
            }
        }
        rx
    }
}

impl Broker for RedisBroker {
    fn available(&self) -> bool {
        self.status.connected.load(Ordering::Relaxed)
    }

    fn barrier(&self, worker: usize) -> Option<Answer> {
        match self.send(Command::Barrier { worker }) {
            true => None,
            false => Some(Answer::Barrier),
        }
    }

    fn depart(&self, within: Duration) {
        let (done, wait) = std::sync::mpsc::channel();
        if self.commands.try_send(Command::Depart { done }).is_ok()
            && wait.recv_timeout(within).is_ok()
        {
            tracing::info!("left the cluster: this node's entries cleared from Redis");
        } else {
            tracing::warn!("could not clear this node's entries from Redis before exiting: other nodes will after --node-timeout");
        }
    }

    fn publish(&self, deliveries: &[Delivery]) -> Pending<()> {
        if deliveries.is_empty() {
            return Pending::ready(());
        }
        let (tx, rx) = oneshot::channel();
        let events = self.events(deliveries);
        if self.send(Command::Publish {
            events,
            done: Some(tx),
        }) {
            Pending::waiting(rx)
        } else {
            Pending::failed(BrokerError::Unavailable("the broker is overloaded".into()))
        }
    }

    fn publish_detached(&self, deliveries: &[Delivery]) {
        if !deliveries.is_empty() {
            let events = self.events(deliveries);
            self.send(Command::Publish { events, done: None });
        }
    }

    fn broadcast(&self, msg: &UserMsg) -> Pending<()> {
        let (tx, rx) = oneshot::channel();
        if self.send(Command::Broadcast {
            msg: msg.clone(),
            done: tx,
        }) {
            Pending::waiting(rx)
        } else {
            Pending::failed(BrokerError::Unavailable("the broker is overloaded".into()))
        }
    }

    fn interest(&self, worker: usize, channel: ChannelRef<'_>, interested: bool) -> Option<Answer> {
        let cmd = Command::Interest {
            worker,
            channel: channel.to_key(),
            interested,
        };
        // A subscription must not wait for ever: if the thread cannot take the request,
        // the node's own events still reach it.
        match self.send(cmd) || !interested {
            true => None,
            false => Some(Answer::Interested(channel.to_key())),
        }
    }

    fn count(&self, worker: usize, req: Count) -> Option<Answer> {
        let fallback = req.node_count;
        let req2 = req.clone();
        match self.send(Command::Count { worker, req }) {
            true => None,
            false => Some(Answer::Counted(req2, fallback, Verdict::Send)),
        }
    }

    fn join(&self, worker: usize, req: Join) -> Option<Answer> {
        let local = self.mirror.presence.join(
            &req.channel,
            &req.member,
            req.conn.socket_id,
            req.max_members,
            || {},
        );
        let answer = Answer::Joined(req.clone(), local.clone());
        match self.send(Command::Join { worker, req, local }) {
            true => None,
            false => Some(answer),
        }
    }

    fn leave(&self, worker: usize, req: Leave) -> Option<Answer> {
        let local =
            self.mirror
                .presence
                .leave(req.channel.as_ref(), &req.user, req.socket_id, || {});
        let answer = Answer::Left(req.clone(), local, Verdict::Send);
        match self.send(Command::Leave { worker, req, local }) {
            true => None,
            false => Some(answer),
        }
    }

    fn members(&self, worker: usize, req: ForConn) -> Option<Answer> {
        let local = Answer::Members(
            req.clone(),
            self.mirror.presence.roster(req.channel.as_ref()),
        );
        match self.send(Command::Members { worker, req }) {
            true => None,
            false => Some(local),
        }
    }

    fn sign_in(&self, worker: usize, req: SignIn) -> Option<Answer> {
        let watched_online = req
            .watchlist
            .iter()
            .filter(|w| self.mirror.users.is_online(req.app, w))
            .cloned()
            .collect();
        let came_online = self
            .mirror
            .users
            .sign_in(req.app, &req.user, req.conn.socket_id);
        self.mirror
            .signed_in(req.app, &req.user, req.conn.socket_id, true);
        let local = Answer::SignedIn {
            req: req.clone(),
            came_online,
            watched_online,
        };
        match self.send(Command::SignIn {
            worker,
            req,
            local: local.clone(),
        }) {
            true => None,
            false => Some(local),
        }
    }

    fn sign_out(&self, worker: usize, req: SignOut) -> Option<Answer> {
        let local = self
            .mirror
            .users
            .sign_out(req.app, &req.user, req.socket_id);
        self.mirror
            .signed_in(req.app, &req.user, req.socket_id, false);
        let answer = Answer::SignedOut(req.clone(), local);
        match self.send(Command::SignOut { worker, req, local }) {
            true => None,
            false => Some(answer),
        }
    }

    fn remember(&self, channel: ChannelKey, frame: Bytes, event: &str, data: &str, ttl: Duration) {
        let event = node::encode_cached(&frame, event, data);
        self.send(Command::Remember {
            channel,
            event,
            ttl,
        });
    }

    fn replay(&self, worker: usize, req: ForConn) -> Option<Answer> {
        let fallback = Answer::Replayed(req.clone(), Replay::Miss { first: false });
        match self.send(Command::Replay { worker, req }) {
            true => None,
            false => Some(fallback),
        }
    }

    fn channel(&self, channel: ChannelRef<'_>) -> Pending<ChannelInfo> {
        let key = channel.to_key();
        self.query(|tx| Query::Channel(key, tx))
    }

    fn channels(&self, app: AppIdx, prefix: &str) -> Pending<Vec<(Arc<str>, u64)>> {
        let prefix = prefix.to_string();
        self.query(|tx| Query::Channels(app, prefix, tx))
    }

    fn presence(&self, channel: ChannelRef<'_>) -> Pending<Vec<Member>> {
        let key = channel.to_key();
        self.query(|tx| Query::Presence(key, tx))
    }

    fn cached(&self, channel: ChannelRef<'_>) -> Pending<Option<Cached>> {
        let key = channel.to_key();
        self.query(|tx| Query::Cached(key, tx))
    }

    fn sweep(&self) {}

    fn user_connections(&self, app: AppIdx, user: &str) -> Pending<Vec<UserConn>> {
        let user = user.to_string();
        self.query(|tx| Query::UserConns(app, user, tx))
    }
}
