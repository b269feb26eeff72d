//! The [`Broker`]: what a node shares with the rest of the cluster — events for other
//! nodes' subscribers, presence members, signed-in users, occupancy counts and cache
//! channels' last events — behind one trait, so the workers do not know whether the cluster
//! is this process ([`LocalBroker`]) or several nodes sharing a Redis.
//!
//! # How calls and answers travel
//!
//! Workers never wait on the broker. A call that needs an answer for the protocol rules
//! (is this user already a member? is this the channel's first subscriber anywhere?) takes
//! a request and returns either the answer at once (`Some`) or `None`, in which case the
//! broker delivers [`WorkerMsg::Answer`](super::WorkerMsg::Answer) to the asking worker's
//! inbox later. Each answer carries its request back, so the worker needs no table of what
//! it asked. Calls made for the HTTP API return a [`Pending`] future instead. Fire-and-forget
//! calls (interest, cache writes) return nothing. A networked broker is expected to batch:
//! the calls a worker makes in one turn of its loop can go out as one pipeline.
//!
//! # The contract
//!
//! * **Answers to one worker arrive in the order it asked.**
//! * **A subscription is live once answered.** A worker declares its interest in a channel
//!   when the channel gets its first subscriber there, and answers its clients'
//!   subscriptions only after [`Answer::Interested`]: from then on, every event published
//!   to the channel on any node reaches this node.
//! * **Presence is decided atomically per channel.** [`Broker::join`] answers
//!   [`Joined::First`] for exactly one connection of a user (its first anywhere), and
//!   [`Broker::leave`] answers `true` for exactly one (its last); a join and a leave of the
//!   same connection are applied in the order they were asked. Membership is per
//!   connection: leaving with a connection that never joined changes nothing.
//! * **Member events keep the order of the decisions.** The broker publishes
//!   `member_added` and `member_removed` itself, in the same step as the decision, so every
//!   subscriber on every node sees a user's arrivals and departures in the order they were
//!   decided, whichever workers or nodes decided them.
//! * **Counts are exact.** [`Broker::count`] answers the channel's subscriptions over the
//!   whole cluster after the change; 1 after [`Change::Subscribed`] and 0 after
//!   [`Change::Unsubscribed`] each happen once per occupancy.
//! * **Events are at most once, in order per publisher and channel.** [`Broker::publish`]
//!   reaches every other node that declared interest in the channel before the event was
//!   published; a node that was not interested receives nothing. `Pending` resolves once
//!   the broker has accepted the events (not once they are delivered).
//! * **Interest is batched.** Declarations made in one turn may share one round trip;
//!   withdrawals may be applied later, letting a few more events arrive (workers drop
//!   events for channels they have no subscriber of).
//! * **When the broker is unavailable** calls with answers report [`BrokerError`] through
//!   `Pending`, or (for worker calls) answer as if this node were alone, and the broker
//!   restores its view of this node's state when it is back. [`LocalBroker`] is never
//!   unavailable.

mod cache;
mod local;
mod presence;
pub mod redis;
mod sharded;
mod users;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;

pub use cache::Cached;
pub use local::LocalBroker;
pub use presence::PresenceRegistry;

use super::inbox::Delivery;
use crate::app::{AppIdx, ChannelKey, ChannelRef};
use crate::protocol::channel::ChannelKind;
use crate::protocol::SocketId;
use crate::pusher::occupancy::Change;
use crate::pusher::{Joined, Member, Roster, Verdict};

/// A connection on a worker, as answers name it: its slot in the worker's table and its
/// socket id (a slot is reused; the socket id tells whether it is still the same
/// connection).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnRef {
    /// Its slot.
    pub id: usize,
    /// Its socket id.
    pub socket_id: SocketId,
}

/// Join a presence channel's members.
#[derive(Debug, Clone, PartialEq)]
pub struct Join {
    /// The connection joining.
    pub conn: ConnRef,
    /// The channel.
    pub channel: ChannelKey,
    /// As whom.
    pub member: Member,
    /// The app's `max_presence_members`.
    pub max_members: usize,
    /// `pusher_internal:member_added`, published by the broker to the channel's other
    /// subscribers everywhere if this is the user's first connection.
    pub announce: Bytes,
}

/// Leave a presence channel's members.
#[derive(Debug, Clone, PartialEq)]
pub struct Leave {
    /// The connection leaving.
    pub socket_id: SocketId,
    /// The channel.
    pub channel: ChannelKey,
    /// The user id it joined as.
    pub user: Arc<str>,
    /// `pusher_internal:member_removed`, published by the broker to the channel's
    /// subscribers everywhere if this was the user's last connection.
    pub announce: Bytes,
}

/// A change of a channel's subscriptions on this node.
#[derive(Debug, Clone, PartialEq)]
pub struct Count {
    /// The channel.
    pub channel: ChannelKey,
    /// Its kind.
    pub kind: ChannelKind,
    /// What changed.
    pub change: Change,
    /// The channel's subscriptions on this node after the change.
    pub node_count: u64,
}

/// Ask for a presence channel's members, or a cache channel's last event, for a connection.
#[derive(Debug, Clone, PartialEq)]
pub struct ForConn {
    /// The connection asking.
    pub conn: ConnRef,
    /// The channel.
    pub channel: ChannelKey,
}

/// A connection signed in.
#[derive(Debug, Clone, PartialEq)]
pub struct SignIn {
    /// The connection.
    pub conn: ConnRef,
    /// The app.
    pub app: AppIdx,
    /// The user id.
    pub user: Arc<str>,
    /// The user ids it watches.
    pub watchlist: Vec<Arc<str>>,
}

/// A signed-in connection went away.
#[derive(Debug, Clone, PartialEq)]
pub struct SignOut {
    /// The connection.
    pub socket_id: SocketId,
    /// The app.
    pub app: AppIdx,
    /// The user id.
    pub user: Arc<str>,
}

/// A cache channel's last event, as [`Broker::replay`] answers.
#[derive(Debug, Clone, PartialEq)]
pub enum Replay {
    /// The event frame, as subscribers got it.
    Hit(Bytes),
    /// Nothing cached; `first` is true for the first miss since the channel's last event
    /// (the `cache_miss` webhook is not repeated for every subscriber).
    Miss {
        /// Whether this is the first miss.
        first: bool,
    },
}

/// A broker's answer to a worker, with the request it answers.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// To [`Broker::interest`]: this node receives the channel's events from every node now.
    Interested(ChannelKey),
    /// To [`Broker::barrier`]: every earlier request of the worker has been answered.
    Barrier,
    /// To [`Broker::join`]; the broker has published the member event if it was `First`.
    Joined(Join, Joined),
    /// To [`Broker::leave`]: whether that was the user's last connection in the channel (the
    /// broker has then published the member event).
    Left(Leave, bool, Verdict),
    /// To [`Broker::count`]: the subscriptions over the cluster.
    Counted(Count, u64, Verdict),
    /// To [`Broker::members`].
    Members(ForConn, Roster),
    /// To [`Broker::replay`].
    Replayed(ForConn, Replay),
    /// To [`Broker::sign_in`]: whether the user just came online, and which of the users it
    /// watches are online.
    SignedIn {
        /// The request.
        req: SignIn,
        /// The user's first signed-in connection anywhere.
        came_online: bool,
        /// The watched users online now.
        watched_online: Vec<Arc<str>>,
    },
    /// To [`Broker::sign_out`]: whether that was the user's last signed-in connection.
    SignedOut(SignOut, bool),
}

/// A user-level message for every worker of every node (a user's connections may be
/// anywhere).
#[derive(Debug, Clone, PartialEq)]
pub enum UserMsg {
    /// Close the connections signed in as this user (`terminate_connections`).
    Terminate {
        /// The app.
        app: AppIdx,
        /// The user id.
        user: Arc<str>,
    },
    /// A user came online (first sign-in) or went offline (last signed-in connection
    /// gone): tell the connections watching it.
    Watchlist {
        /// The app.
        app: AppIdx,
        /// The user id.
        user: Arc<str>,
        /// Online or offline.
        online: bool,
    },
}

/// A channel as the HTTP API reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChannelInfo {
    /// Subscriptions over the cluster (0: not occupied).
    pub subscription_count: u64,
    /// Distinct presence members (0 for other channels).
    pub user_count: usize,
}

/// A connection signed in as a user, as [`Broker::user_connections`] lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct UserConn {
    /// Its socket id.
    pub socket_id: String,
    /// The node holding it, over a cluster.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// Why the broker could not answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BrokerError {
    /// It cannot be reached now.
    #[error("the cluster broker is unavailable: {0}")]
    Unavailable(String),
}

/// See the [module documentation](self) for the contract.
pub trait Broker: Send + Sync + 'static {
    /// Whether the other nodes can be reached now. A caller that can be told "try again"
    /// (the HTTP API) is refused up front while they cannot, rather than reaching this
    /// node's subscribers only.
    fn available(&self) -> bool {
        true
    }

    /// At shutdown, once every worker has stopped: waits, at most `within`, until the
    /// other nodes have been told what this node's connections left (a networked broker
    /// hands over its queued requests and clears what its session still holds).
    fn depart(&self, within: Duration) {
        let _ = within;
    }

    /// Answered once every request `worker` made before it has been answered (at once, by
    /// a broker that answers everything at once): a worker shutting down waits for it so
    /// that no decision about its connections (and no webhook) is lost.
    fn barrier(&self, worker: usize) -> Option<Answer> {
        let _ = worker;
        Some(Answer::Barrier)
    }

    /// Sends event frames to their channels' subscribers on the other nodes (this node's
    /// workers are the caller's to reach). Resolves once the broker has them.
    fn publish(&self, deliveries: &[Delivery]) -> Pending<()>;

    /// [`Broker::publish`] for callers that cannot wait (the protocol rules): a failure is
    /// the broker's to count and log.
    fn publish_detached(&self, deliveries: &[Delivery]);

    /// Sends a user-level message to every other node.
    fn broadcast(&self, msg: &UserMsg) -> Pending<()>;

    /// Declares (`true`) or withdraws worker `worker`'s interest in `channel`'s events:
    /// called when the channel gets its first subscriber on that worker and when it loses
    /// its last. A declaration is answered ([`Answer::Interested`]) once this node receives
    /// the channel's events from every node; a withdrawal is not answered.
    fn interest(&self, worker: usize, channel: ChannelRef<'_>, interested: bool) -> Option<Answer>;

    /// A change of `channel`'s subscriptions on this node; answers the count over the
    /// cluster.
    fn count(&self, worker: usize, req: Count) -> Option<Answer>;

    /// Adds a connection to a presence channel's members (unless the channel has
    /// `max_members` other users), publishing `announce` to the channel's other subscribers
    /// if it is the user's first connection; answers with the members after it.
    fn join(&self, worker: usize, req: Join) -> Option<Answer>;

    /// Removes a connection from a presence channel's members, publishing `announce` if it
    /// was the user's last; answers whether it was.
    fn leave(&self, worker: usize, req: Leave) -> Option<Answer>;

    /// A presence channel's members, for a connection.
    fn members(&self, worker: usize, req: ForConn) -> Option<Answer>;

    /// Counts a signed-in connection; answers whether the user came online and which of
    /// the users it watches are online (looked at before counting it).
    fn sign_in(&self, worker: usize, req: SignIn) -> Option<Answer>;

    /// Counts a signed-in connection going away; answers whether the user went offline.
    fn sign_out(&self, worker: usize, req: SignOut) -> Option<Answer>;

    /// Keeps an event as the cache channel's last, for `ttl`: its frame as subscribers got
    /// it, its name and its data.
    fn remember(&self, channel: ChannelKey, frame: Bytes, event: &str, data: &str, ttl: Duration);

    /// A cache channel's last event, for a connection that just subscribed.
    fn replay(&self, worker: usize, req: ForConn) -> Option<Answer>;

    /// A channel's subscriptions and members, for the HTTP API.
    fn channel(&self, channel: ChannelRef<'_>) -> Pending<ChannelInfo>;

    /// An app's occupied channels whose name starts with `prefix` (not `#server-to-user-`
    /// ones), with their subscriptions, for the HTTP API.
    fn channels(&self, app: AppIdx, prefix: &str) -> Pending<Vec<(Arc<str>, u64)>>;

    /// A presence channel's members in joining order, for the HTTP API.
    fn presence(&self, channel: ChannelRef<'_>) -> Pending<Vec<Member>>;

    /// A cache channel's last event and when it expires, for the HTTP API.
    fn cached(&self, channel: ChannelRef<'_>) -> Pending<Option<Cached>>;

    /// The connections signed in as `user` (the console): socket ids, and over a cluster
    /// the node holding each.
    fn user_connections(&self, app: AppIdx, user: &str) -> Pending<Vec<UserConn>>;

    /// Periodic housekeeping (expired cache entries), called once a second by one worker.
    fn sweep(&self);
}

/// An answer for the HTTP API: ready at once, or coming from another thread.
pub struct Pending<T>(PendingInner<T>);

enum PendingInner<T> {
    Ready(Option<Result<T, BrokerError>>),
    Waiting(tokio::sync::oneshot::Receiver<Result<T, BrokerError>>),
}

impl<T> Pending<T> {
    /// An answer available now.
    pub fn ready(value: T) -> Self {
        Self(PendingInner::Ready(Some(Ok(value))))
    }

    /// A failure known now.
    pub fn failed(e: BrokerError) -> Self {
        Self(PendingInner::Ready(Some(Err(e))))
    }

    /// An answer another thread will send.
    pub fn waiting(rx: tokio::sync::oneshot::Receiver<Result<T, BrokerError>>) -> Self {
        Self(PendingInner::Waiting(rx))
    }

    /// The answer, if it is there already; otherwise the pending answer back.
    pub fn now(self) -> Result<Result<T, BrokerError>, Self> {
        match self.0 {
            PendingInner::Ready(Some(v)) => Ok(v),
            other => Err(Self(other)),
        }
    }
}

impl<T: Unpin> Future for Pending<T> {
    type Output = Result<T, BrokerError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.get_mut().0 {
            PendingInner::Ready(v) => Poll::Ready(v.take().expect("polled after completion")),
            PendingInner::Waiting(rx) => Pin::new(rx).poll(cx).map(|r| {
                r.unwrap_or_else(|_| Err(BrokerError::Unavailable("the answer was lost".into())))
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pending_answers_resolve_now_or_from_another_thread() {
        assert_eq!(Pending::ready(5).await, Ok(5));
        assert!(matches!(Pending::ready(5).now(), Ok(Ok(5))));
        let e = BrokerError::Unavailable("down".into());
        assert_eq!(Pending::<()>::failed(e.clone()).await, Err(e));
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || tx.send(Ok(7)));
        let pending = Pending::waiting(rx).now().expect_err("not there yet");
        assert_eq!(pending.await, Ok(7));
        let (tx, rx) = tokio::sync::oneshot::channel::<Result<(), BrokerError>>();
        drop(tx);
        assert!(matches!(
            Pending::waiting(rx).await,
            Err(BrokerError::Unavailable(_))
        ));
    }
}
