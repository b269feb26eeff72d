//! Fan-out: handing each event frame to every worker with subscribers of its channel, and to
//! the broker for the other nodes; and the worker's inbox, where other workers' events, user
//! messages and the broker's answers arrive.

use std::rc::Rc;
use std::time::Duration;

use super::Worker;
use crate::app::ChannelRef;
use crate::hub::broker::{BrokerError, UserMsg};
use crate::hub::{Delivery, WorkerMsg};
use crate::metrics::WorkerStats;
use crate::protocol::SocketId;

/// How long a publisher waits for room in a full worker inbox before giving up.
const INBOX_WAIT: Duration = Duration::from_secs(2);

/// Messages a worker takes from its inbox before letting its connections run.
const INBOX_BATCH: usize = 64;

/// Why a publish did not reach every subscriber.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// A worker's inbox stayed full; its subscribers did not get the events.
    #[error("worker {0} is overloaded: its inbox stayed full for {INBOX_WAIT:?}")]
    Overloaded(usize),
    /// The events could not be handed to the other nodes.
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

impl Worker {
    /// Delivers each frame to its channel's subscribers on every worker, in order, and
    /// hands them to the broker for the other nodes. Local subscribers are served at once;
    /// other workers get one inbox message each. A full inbox is waited on
    /// (asynchronously) for a while, then reported, never silently skipped.
    pub async fn publish(&self, deliveries: Vec<Delivery>) -> Result<(), PublishError> {
        self.other_nodes_reachable()?;
        let other_nodes = self.shared.broker.publish(&deliveries);
        // Earlier events from other workers first (see `drain_inbox`): what is queued now,
        // not what keeps arriving, so a busy inbox cannot hold this worker here.
        self.drain_inbox(self.inbox.len());
        let mut result = Ok(());
        for (w, batch) in self.route(deliveries) {
            if let Err(e) = self.send_to(w, WorkerMsg::Deliver(batch)).await {
                result = Err(e);
            }
        }
        other_nodes.await?;
        result
    }

    /// Refuses a publish the other nodes cannot be told of now: the caller (the HTTP API)
    /// answers 503 and may retry, and no subscriber has had it twice.
    fn other_nodes_reachable(&self) -> Result<(), PublishError> {
        match self.shared.broker.available() {
            true => Ok(()),
            false => Err(PublishError::Broker(BrokerError::Unavailable(
                "Redis cannot be reached; nothing was delivered".into(),
            ))),
        }
    }

    /// Publishes for callers that cannot wait (the protocol rules): delivered to this
    /// worker's subscribers and queued to the other workers' inboxes now, so events follow
    /// one another in the order the rules decided them. Only an inbox found full is waited
    /// on, in a task of its own, and reported like [`Worker::publish`] does.
    pub fn publish_now(&self, deliveries: Vec<Delivery>) {
        self.shared.broker.publish_detached(&deliveries);
        for (w, batch) in self.route(deliveries) {
            if let Err(msg) = self.shared.inboxes[w].try_send(WorkerMsg::Deliver(batch)) {
                self.send_later(w, msg);
            }
        }
    }

    /// Delivers to this worker's subscribers, and returns the batches for the others.
    fn route(&self, deliveries: Vec<Delivery>) -> Vec<(usize, Vec<Delivery>)> {
        let index = &self.shared.index;
        let mut remote: Vec<Vec<Delivery>> = Vec::new();
        for d in deliveries {
            WorkerStats::add(&self.stats.events_published, 1);
            let key = d.channel.as_ref();
            let Some(occupancy) = index.get(key) else {
                continue;
            };
            for w in occupancy.workers.iter() {
                if w == self.index {
                    self.deliver_local(key, &d.frame, d.except, d.published_at);
                } else {
                    if remote.is_empty() {
                        remote.resize_with(self.shared.inboxes.len(), Vec::new);
                    }
                    remote[w].push(d.clone());
                }
            }
        }
        remote
            .into_iter()
            .enumerate()
            .filter(|(_, batch)| !batch.is_empty())
            .collect()
    }

    /// Sends a user-level message to every worker of every node; waits for full inboxes
    /// like [`Worker::publish`].
    pub async fn send_to_users(&self, msg: UserMsg) -> Result<(), PublishError> {
        self.other_nodes_reachable()?;
        let other_nodes = self.shared.broker.broadcast(&msg);
        let mut result = Ok(());
        for w in 0..self.shared.inboxes.len() {
            if w != self.index {
                if let Err(e) = self.send_to(w, WorkerMsg::User(msg.clone())).await {
                    result = Err(e);
                }
            }
        }
        self.apply_user_msg(&msg);
        other_nodes.await?;
        result
    }

    /// [`Worker::send_to_users`] for callers that cannot wait, queued now like
    /// [`Worker::publish_now`].
    pub(super) fn tell_users(&self, msg: UserMsg) {
        let other_nodes = self.shared.broker.broadcast(&msg);
        for w in 0..self.shared.inboxes.len() {
            if w != self.index {
                if let Err(m) = self.shared.inboxes[w].try_send(WorkerMsg::User(msg.clone())) {
                    self.send_later(w, m);
                }
            }
        }
        self.apply_user_msg(&msg);
        self.report_later(other_nodes);
    }

    /// Waits for room in worker `w`'s full inbox in a task of its own.
    fn send_later(&self, w: usize, msg: WorkerMsg) {
        let me = self.rc();
        self.rt.spawn(Box::pin(async move {
            let _ = me.send_to(w, msg).await;
        }));
    }

    /// Logs a broker's failure to take events from a caller that could not wait (in a
    /// task of its own if the broker has not answered yet).
    fn report_later(&self, pending: crate::hub::Pending<()>) {
        let report = |res: Result<(), crate::hub::BrokerError>| {
            if let Err(e) = res {
                tracing::warn!(error = %e, "events not handed to the other nodes");
            }
        };
        match pending.now() {
            Ok(res) => report(res),
            Err(pending) => self
                .rt
                .spawn(Box::pin(async move { report(pending.await) })),
        }
    }

    /// Sends `msg` to worker `w`'s inbox, waiting (asynchronously) up to [`INBOX_WAIT`] for
    /// room; a full inbox is logged, counted and reported.
    async fn send_to(&self, w: usize, mut msg: WorkerMsg) -> Result<(), PublishError> {
        let inbox = &self.shared.inboxes[w];
        msg = match inbox.try_send(msg) {
            Ok(()) => return Ok(()),
            Err(m) => m,
        };
        // Full: wait to be woken when that worker takes a message (one timer for the
        // whole wait, not a poll every millisecond).
        let mut deadline = std::pin::pin!(self.rt.sleep(INBOX_WAIT));
        loop {
            let room = inbox.room();
            msg = match inbox.try_send(msg) {
                Ok(()) => return Ok(()),
                Err(m) => m,
            };
            tokio::select! {
                biased;
                _ = room => {}
                _ = &mut deadline => {
                    WorkerStats::add(&self.stats.inbox_full, 1);
                    tracing::warn!(
                        worker = w,
                        "inbox full: message not delivered to that worker"
                    );
                    return Err(PublishError::Overloaded(w));
                }
            }
        }
    }

    /// Queues `frame` to this worker's subscribers of `channel`.
    fn deliver_local(
        &self,
        channel: ChannelRef<'_>,
        frame: &bytes::Bytes,
        except: Option<SocketId>,
        published_at: u64,
    ) {
        let d = self.channels.deliver(channel, frame, except, published_at);
        WorkerStats::add(&self.stats.frames_delivered, d.queued);
        crate::app::console::count_delivered(&self.shared.apps, channel.app, d.queued);
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

    /// Applies one message from a worker or the broker.
    fn apply(&self, msg: WorkerMsg) {
        match msg {
            WorkerMsg::Deliver(batch) => {
                for d in &batch {
                    self.deliver_local(d.channel.as_ref(), &d.frame, d.except, d.published_at);
                }
            }
            WorkerMsg::User(msg) => self.apply_user_msg(&msg),
            WorkerMsg::Answer(answer) => self.answer(*answer),
        }
    }

    /// The worker's inbox task: applies what other workers and the broker send it,
    /// yielding between batches so its connections keep running.
    pub async fn run_inbox(self: Rc<Self>) {
        loop {
            self.inbox.ready().await;
            while self.drain_inbox(INBOX_BATCH) == INBOX_BATCH {
                crate::runtime::yield_now().await;
            }
        }
    }
}
