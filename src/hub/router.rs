//! Handing an event to every worker of this node with subscribers of its channel, through
//! their inboxes: how a broker delivers the events it publishes itself (presence member
//! events, decided and sent in one step so they keep the order of the decisions) and the
//! events other nodes publish.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::inbox::{Delivery, InboxSender, WorkerMsg};
use super::ChannelIndex;
use crate::metrics::Telemetry;

/// The node's routing table and inboxes.
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
                if let Some(stats) = self.telemetry.workers.get(from) {
                    stats.inbox_full.fetch_add(1, Ordering::Relaxed);
                }
                tracing::warn!(
                    worker = w,
                    channel = &*delivery.channel.name,
                    "inbox full: event not delivered to that worker"
                );
            }
        }
    }
}
