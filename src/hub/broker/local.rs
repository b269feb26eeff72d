//! The broker of a cluster of one: this process's workers share presence members,
//! signed-in users, occupancy counts and cache channels' last events in memory, and there
//! is no other node to send events to. Every answer is given at once; member events are
//! routed to the workers under the presence channel's lock, so they keep the order of the
//! decisions.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::cache::EventCache;
use super::presence::PresenceRegistry;
use super::users::UserRegistry;
use super::*;
use crate::hub::{ChannelIndex, Router};

/// Most cache channels whose last event is kept (over all apps).
pub const MAX_CACHED_CHANNELS: usize = 100_000;
/// Bytes of cached events (frames and data) a single node keeps over all apps.
pub const MAX_CACHED_BYTES: usize = 256 << 20;

/// The in-process [`Broker`].
pub struct LocalBroker {
    /// The node's channel index: with one node, its counts are the cluster's.
    index: Arc<ChannelIndex>,
    router: Router,
    presence: PresenceRegistry,
    users: UserRegistry,
    cache: EventCache,
}

impl LocalBroker {
    /// A broker over this node's channel `index`, delivering member events with `router`.
    pub fn new(index: Arc<ChannelIndex>, router: Router) -> Self {
        Self {
            index,
            router,
            presence: PresenceRegistry::default(),
            users: UserRegistry::default(),
            cache: EventCache::new(MAX_CACHED_CHANNELS, MAX_CACHED_BYTES),
        }
    }
}

impl LocalBroker {
    /// Delivers a member event to the channel's subscribers on every worker.
    fn announce(
        &self,
        worker: usize,
        channel: &ChannelKey,
        frame: &Bytes,
        except: Option<SocketId>,
    ) {
        let delivery = Delivery {
            channel: channel.clone(),
            frame: frame.clone(),
            except,
            published_at: 0,
        };
        self.router.route(worker, delivery);
    }
}

impl Broker for LocalBroker {
    fn publish(&self, _deliveries: &[Delivery]) -> Pending<()> {
        Pending::ready(())
    }

    fn publish_detached(&self, _deliveries: &[Delivery]) {}

    fn broadcast(&self, _msg: &UserMsg) -> Pending<()> {
        Pending::ready(())
    }

    fn interest(
        &self,
        _worker: usize,
        channel: ChannelRef<'_>,
        interested: bool,
    ) -> Option<Answer> {
        // Every event of this process reaches its workers through the index already.
        interested.then(|| Answer::Interested(channel.to_key()))
    }

    fn count(&self, _worker: usize, req: Count) -> Option<Answer> {
        let count = req.node_count;
        Some(Answer::Counted(req, count, Verdict::Send))
    }

    fn join(&self, worker: usize, req: Join) -> Option<Answer> {
        let joined = self.presence.join(
            &req.channel,
            &req.member,
            req.conn.socket_id,
            req.max_members,
            || {
                self.announce(
                    worker,
                    &req.channel,
                    &req.announce,
                    Some(req.conn.socket_id),
                )
            },
        );
        Some(Answer::Joined(req, joined))
    }

    fn leave(&self, worker: usize, req: Leave) -> Option<Answer> {
        let last = self
            .presence
            .leave(req.channel.as_ref(), &req.user, req.socket_id, || {
                self.announce(worker, &req.channel, &req.announce, None)
            });
        Some(Answer::Left(req, last, Verdict::Send))
    }

    fn members(&self, _worker: usize, req: ForConn) -> Option<Answer> {
        let roster = self.presence.roster(req.channel.as_ref());
        Some(Answer::Members(req, roster))
    }

    fn sign_in(&self, _worker: usize, req: SignIn) -> Option<Answer> {
        let watched_online = req
            .watchlist
            .iter()
            .filter(|w| self.users.is_online(req.app, w))
            .cloned()
            .collect();
        let came_online = self.users.sign_in(req.app, &req.user, req.conn.socket_id);
        Some(Answer::SignedIn {
            req,
            came_online,
            watched_online,
        })
    }

    fn sign_out(&self, _worker: usize, req: SignOut) -> Option<Answer> {
        let went_offline = self.users.sign_out(req.app, &req.user, req.socket_id);
        Some(Answer::SignedOut(req, went_offline))
    }

    fn remember(&self, channel: ChannelKey, frame: Bytes, event: &str, data: &str, ttl: Duration) {
        let name = channel.name.clone();
        if !self.cache.put(channel, frame, event, data, ttl) {
            // Once a minute at most: a full cache would otherwise log every event.
            static LAST_WARNED: AtomicU32 = AtomicU32::new(0);
            let now = crate::clock::tick_now().max(1);
            let last = LAST_WARNED.load(Ordering::Relaxed);
            if last == 0 || now.wrapping_sub(last) >= 60 * crate::clock::TICKS_PER_SEC {
                LAST_WARNED.store(now, Ordering::Relaxed);
                tracing::warn!(
                    channel = &*name,
                    max_channels = MAX_CACHED_CHANNELS,
                    max_bytes = MAX_CACHED_BYTES,
                    "event cache is full: new cache events are not kept"
                );
            }
        }
    }

    fn replay(&self, _worker: usize, req: ForConn) -> Option<Answer> {
        let r = req.channel.as_ref();
        let replay = match self.cache.get(r) {
            Some(cached) => Replay::Hit(cached.frame),
            None => Replay::Miss {
                first: self.cache.note_miss(r),
            },
        };
        Some(Answer::Replayed(req, replay))
    }

    fn channel(&self, channel: ChannelRef<'_>) -> Pending<ChannelInfo> {
        Pending::ready(ChannelInfo {
            subscription_count: self.index.get(channel).map_or(0, |o| o.subscription_count),
            user_count: self.presence.user_count(channel),
        })
    }

    fn channels(&self, app: AppIdx, prefix: &str) -> Pending<Vec<(Arc<str>, u64)>> {
        Pending::ready(
            self.index
                .channels(app, prefix)
                .into_iter()
                .map(|(name, o)| (name, o.subscription_count))
                .collect(),
        )
    }

    fn presence(&self, channel: ChannelRef<'_>) -> Pending<Vec<Member>> {
        Pending::ready(self.presence.members(channel))
    }

    fn cached(&self, channel: ChannelRef<'_>) -> Pending<Option<Cached>> {
        Pending::ready(self.cache.get(channel))
    }

    fn sweep(&self) {
        self.cache.sweep();
    }

    fn user_connections(&self, app: AppIdx, user: &str) -> Pending<Vec<UserConn>> {
        let conns = self.users.connections(app, user);
        Pending::ready(
            conns
                .into_iter()
                .map(|s| UserConn {
                    socket_id: s.to_string(),
                    node: None,
                })
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(n: u64) -> ConnRef {
        ConnRef {
            id: n as usize,
            socket_id: SocketId { random: 1, seq: n },
        }
    }

    fn broker(index: Arc<ChannelIndex>) -> LocalBroker {
        let telemetry = Arc::new(crate::metrics::Telemetry::new(
            1,
            crate::runtime::Backend::Epoll,
            Default::default(),
        ));
        LocalBroker::new(index.clone(), Router::new(index, Vec::new(), telemetry))
    }

    fn join(b: &LocalBroker, user: &str, n: u64) -> Joined {
        let req = Join {
            conn: conn(n),
            channel: ChannelKey::new(0, "presence-a"),
            member: Member {
                user_id: Arc::from(user),
                user_info: Arc::from("null"),
            },
            max_members: 100,
            announce: Bytes::new(),
        };
        match b.join(0, req) {
            Some(Answer::Joined(_, joined)) => joined,
            other => panic!("{other:?}"),
        }
    }

    fn leave(b: &LocalBroker, user: &str, n: u64) -> bool {
        let req = Leave {
            socket_id: conn(n).socket_id,
            channel: ChannelKey::new(0, "presence-a"),
            user: Arc::from(user),
            announce: Bytes::new(),
        };
        match b.leave(0, req) {
            Some(Answer::Left(_, last, _)) => last,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn member_events_go_to_every_subscribed_worker_as_they_are_decided() {
        let index = Arc::new(ChannelIndex::default());
        let (tx, rx) = crate::hub::inbox(16);
        index.add(ChannelKey::new(0, "presence-a"), 0);
        let telemetry = Arc::new(crate::metrics::Telemetry::new(
            1,
            crate::runtime::Backend::Epoll,
            Default::default(),
        ));
        let b = LocalBroker::new(index.clone(), Router::new(index, vec![tx], telemetry));
        let announced = |seq: u64, frame: &[u8]| {
            let mut req = Join {
                conn: conn(1),
                channel: ChannelKey::new(0, "presence-a"),
                member: Member {
                    user_id: Arc::from("ann"),
                    user_info: Arc::from("null"),
                },
                max_members: 100,
                announce: Bytes::copy_from_slice(frame),
            };
            req.conn.socket_id.seq = seq;
            req
        };
        b.join(0, announced(1, b"added"));
        b.join(0, announced(2, b"again"));
        b.leave(
            0,
            Leave {
                socket_id: SocketId { random: 1, seq: 1 },
                channel: ChannelKey::new(0, "presence-a"),
                user: Arc::from("ann"),
                announce: Bytes::from_static(b"not last"),
            },
        );
        b.leave(
            0,
            Leave {
                socket_id: SocketId { random: 1, seq: 2 },
                channel: ChannelKey::new(0, "presence-a"),
                user: Arc::from("ann"),
                announce: Bytes::from_static(b"removed"),
            },
        );
        let mut got = Vec::new();
        while let Some(crate::hub::WorkerMsg::Deliver(batch)) = rx.try_recv() {
            for d in batch {
                got.push((d.frame, d.except));
            }
        }
        assert_eq!(
            got,
            vec![
                (
                    Bytes::from_static(b"added"),
                    Some(SocketId { random: 1, seq: 1 })
                ),
                (Bytes::from_static(b"removed"), None),
            ],
            "one event for the first join and one for the last leave, joiner excepted"
        );
    }

    #[test]
    fn presence_first_join_and_last_leave_are_each_decided_once() {
        let b = broker(Arc::default());
        assert!(matches!(join(&b, "ann", 1), Joined::First(_)));
        assert!(matches!(join(&b, "ann", 2), Joined::Again(_)));
        assert!(!leave(&b, "ann", 1));
        assert!(leave(&b, "ann", 2));
        assert!(!leave(&b, "ann", 2));
    }

    #[test]
    fn a_user_is_online_from_its_first_sign_in_to_its_last_sign_out() {
        let b = broker(Arc::default());
        // One connection signs in once (the rules see to it): a second one of ann is conn 2.
        let sign_in = |c: u64, user: &str, watch: &[&str]| {
            let req = SignIn {
                conn: conn(c),
                app: 0,
                user: Arc::from(user),
                watchlist: watch.iter().map(|w| Arc::from(*w)).collect(),
            };
            match b.sign_in(0, req) {
                Some(Answer::SignedIn {
                    came_online,
                    watched_online,
                    ..
                }) => (came_online, watched_online),
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(sign_in(1, "ann", &["bob"]), (true, vec![]));
        assert_eq!(
            sign_in(3, "bob", &["ann", "cy"]),
            (true, vec![Arc::from("ann")])
        );
        assert_eq!(sign_in(2, "ann", &[]), (false, vec![]));
        let names = |u: &str| -> Vec<String> {
            match b.user_connections(0, u).now() {
                Ok(Ok(c)) => c.into_iter().map(|c| c.socket_id).collect(),
                _ => panic!("answered at once"),
            }
        };
        assert_eq!(
            names("ann"),
            [conn(1).socket_id.to_string(), conn(2).socket_id.to_string()]
        );
        let sign_out = |c: u64, user: &str| match b.sign_out(
            0,
            SignOut {
                socket_id: conn(c).socket_id,
                app: 0,
                user: Arc::from(user),
            },
        ) {
            Some(Answer::SignedOut(_, offline)) => offline,
            other => panic!("{other:?}"),
        };
        assert!(!sign_out(1, "ann"));
        assert_eq!(names("ann"), [conn(2).socket_id.to_string()]);
        assert!(sign_out(2, "ann"));
        assert!(names("ann").is_empty());
    }

    #[test]
    fn cache_replays_the_last_event_and_reports_the_first_miss_once() {
        let b = broker(Arc::default());
        let replay = |n| match b.replay(
            0,
            ForConn {
                conn: conn(n),
                channel: ChannelKey::new(0, "cache-a"),
            },
        ) {
            Some(Answer::Replayed(_, r)) => r,
            other => panic!("{other:?}"),
        };
        assert_eq!(replay(1), Replay::Miss { first: true });
        assert_eq!(replay(2), Replay::Miss { first: false });
        let frame = Bytes::from_static(b"frame");
        b.remember(
            ChannelKey::new(0, "cache-a"),
            frame.clone(),
            "e",
            "d",
            Duration::from_secs(60),
        );
        assert_eq!(replay(3), Replay::Hit(frame));
    }

    #[tokio::test]
    async fn counts_come_from_the_node_index() {
        let index = Arc::new(ChannelIndex::default());
        index.add(ChannelKey::new(0, "a"), 0);
        index.add(ChannelKey::new(0, "a"), 1);
        let b = broker(index);
        let info = b.channel(ChannelRef { app: 0, name: "a" }).await.unwrap();
        assert_eq!(info.subscription_count, 2);
        assert_eq!(b.channels(0, "").await.unwrap(), vec![(Arc::from("a"), 2)]);
        let req = Count {
            channel: ChannelKey::new(0, "a"),
            kind: ChannelKind::Public,
            change: Change::Subscribed,
            node_count: 2,
        };
        assert!(matches!(b.count(0, req), Some(Answer::Counted(_, 2, _))));
    }
}
