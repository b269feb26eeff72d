//! Handing an event to every worker of this node with subscribers of its channel, through
//! their inboxes: how a broker delivers the events it publishes itself (presence member
//! events, decided and sent in one step so they keep the order of the decisions) and the
//! events other nodes publish.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::broker::{Answer, UserMsg};
use super::inbox::{Delivery, InboxSender, WorkerMsg};
use super::ChannelIndex;
use crate::app::ChannelKey;
use crate::metrics::Telemetry;

/// The node's routing table and inboxes.
#[derive(Clone)]
pub struct Router {
    index: Arc<ChannelIndex>,
    inboxes: Vec<InboxSender>,
    telemetry: Arc<Telemetry>,
}

impl Router {
    /// Routes over `index` into `inboxes` (by worker index), counting in `telemetry`.
    pub fn new(
        index: Arc<ChannelIndex>,
        inboxes: Vec<InboxSender>,
        telemetry: Arc<Telemetry>,
    ) -> Self {
        Self {
            index,
            inboxes,
            telemetry,
        }
    }

    /// Queues `delivery` to every worker with subscribers of its channel, without waiting:
    /// each inbox is FIFO, so deliveries routed one after another reach every subscriber in
    /// that order. An inbox found full is skipped, counted as `ringcast_inbox_full_total`
    /// of worker `from` (the one whose call made the event) and logged.
    pub fn route(&self, from: usize, delivery: Delivery) {
        let Some(occupancy) = self.index.get(delivery.channel.as_ref()) else {
            return;
        };
        for w in occupancy.workers.iter() {
            let msg = WorkerMsg::Deliver(vec![delivery.clone()]);
            if self.inboxes[w].try_send(msg).is_err() {
                self.full(from, w, "event");
            }
        }
    }

    /// Queues a user message to every worker (a user's connections may be on any), like
    /// [`Router::route`].
    pub fn route_user(&self, from: usize, msg: &UserMsg) {
        for (w, inbox) in self.inboxes.iter().enumerate() {
            if inbox.try_send(WorkerMsg::User(msg.clone())).is_err() {
                self.full(from, w, "user message");
            }
        }
    }

    /// Hands `answer` to worker `worker`; gives it back if the inbox is full (the caller
    /// keeps it and tries again: an answer is never dropped).
    pub fn answer(&self, worker: usize, answer: Box<Answer>) -> Result<(), Box<Answer>> {
        match self.inboxes[worker].try_send(WorkerMsg::Answer(answer)) {
            Ok(()) => Ok(()),
            Err(WorkerMsg::Answer(a)) => Err(a),
            Err(_) => unreachable!("try_send gives back what it was given"),
        }
    }

    /// Workers on this node.
    pub fn workers(&self) -> usize {
        self.inboxes.len()
    }

    /// Every channel with subscribers on this node, with how many.
    pub fn channels(&self) -> Vec<(ChannelKey, u64)> {
        self.index.all()
    }

    /// Counts and logs (at most every 10 s, with how many since) a message dropped because
    /// worker `worker`'s inbox was full. `from` is the worker whose call made it, or
    /// [`FROM_BROKER`] for what another node published (counted as the broker's too).
    fn full(&self, from: usize, worker: usize, what: &str) {
        let by = if from == FROM_BROKER { worker } else { from };
        if let Some(stats) = self.telemetry.workers.get(by) {
            stats.inbox_full.fetch_add(1, Ordering::Relaxed);
        }
        if from == FROM_BROKER {
            if let Some(b) = &self.telemetry.broker {
                b.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
        DROPPED_SINCE_LOG.fetch_add(1, Ordering::Relaxed);
        let now = crate::clock::unix_ms() / 1000;
        let last = LAST_LOG_SECS.load(Ordering::Relaxed);
        if now >= last + 10
            && LAST_LOG_SECS
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let dropped = DROPPED_SINCE_LOG.swap(0, Ordering::Relaxed);
            tracing::warn!(
                worker,
                dropped,
                "inbox full: {what} not delivered to that worker ({dropped} messages dropped since the last such warning): the worker cannot keep up"
            );
        }
    }
}

/// The `from` of what the broker routes for other nodes (no worker of this node made it).
pub const FROM_BROKER: usize = usize::MAX;

static DROPPED_SINCE_LOG: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static LAST_LOG_SECS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::inbox;
    use crate::metrics::BrokerStats;
    use crate::runtime::Backend;
    use bytes::Bytes;

    fn delivery(channel: &str) -> Delivery {
        Delivery {
            channel: ChannelKey::new(0, channel),
            frame: Bytes::from_static(b"\x81\x02{}"),
            except: None,
            published_at: 0,
        }
    }

    /// A full inbox skips that worker only, and the drop is counted against the worker
    /// whose call made the event — or, for another node's event, against the receiving
    /// worker and the broker.
    #[test]
    fn a_full_inbox_is_skipped_and_counted_not_waited_on() {
        let index = Arc::new(ChannelIndex::default());
        let (a, ra) = inbox::inbox(1);
        let (b, rb) = inbox::inbox(1);
        let broker = Arc::new(BrokerStats::default());
        let telemetry = Arc::new(
            Telemetry::new(2, Backend::Epoll, Default::default())
                .with_broker(broker.clone(), false),
        );
        let router = Router::new(index.clone(), vec![a, b], telemetry.clone());
        assert_eq!(router.workers(), 2);
        router.route(0, delivery("nobody"));
        assert!(
            ra.try_recv().is_none() && rb.try_recv().is_none(),
            "no subscribers"
        );
        index.add(ChannelKey::new(0, "news"), 1);
        router.route(0, delivery("news"));
        router.route(0, delivery("news"));
        assert!(ra.try_recv().is_none());
        assert!(matches!(rb.try_recv(), Some(WorkerMsg::Deliver(_))));
        assert!(rb.try_recv().is_none(), "the second found the inbox full");
        let full = |w: usize| telemetry.workers[w].inbox_full.load(Ordering::Relaxed);
        assert_eq!(
            (full(0), full(1)),
            (1, 0),
            "counted against the publishing worker"
        );
        router.route(FROM_BROKER, delivery("news"));
        router.route(FROM_BROKER, delivery("news"));
        assert_eq!(
            full(1),
            1,
            "another node's event: against the receiving worker"
        );
        assert_eq!(broker.dropped.load(Ordering::Relaxed), 1);
        let user = UserMsg::Terminate {
            app: 0,
            user: Arc::from("u"),
        };
        router.route_user(0, &user);
        assert!(matches!(ra.try_recv(), Some(WorkerMsg::User(_))));
        assert!(matches!(rb.try_recv(), Some(WorkerMsg::Deliver(_))));
        assert_eq!(full(0), 2, "worker 1's inbox was still full");
        assert_eq!(router.channels().len(), 1);
    }
}
