//! Publishing: handing each event frame to every worker with subscribers of its channel.

use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::hub::{ChannelRef, Delivery, WorkerMsg};
use crate::metrics::WorkerStats;
use crate::worker::Worker;

/// How long a publisher waits for room in a full worker inbox before giving up.
const INBOX_WAIT: Duration = Duration::from_secs(2);

/// Messages a worker takes from its inbox before letting its connections run.
const INBOX_BATCH: usize = 64;

/// Why a publish did not reach every worker.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// A worker's inbox stayed full; its subscribers did not get the events.
    #[error("worker {0} is overloaded: its inbox stayed full for {INBOX_WAIT:?}")]
    Overloaded(usize),
}

/// Delivers each frame to its channel's subscribers on every worker, in order. Local
/// subscribers are served at once; other workers get one inbox message each. A full inbox
/// is waited on (asynchronously) for a while, then reported, never silently skipped.
pub async fn publish(worker: &Worker, deliveries: Vec<Delivery>) -> Result<(), PublishError> {
    let shared = &worker.shared;
    // Earlier events from other workers first (see `Worker::drain_inbox`): what is queued
    // now, not what keeps arriving, so a busy inbox cannot hold this worker here.
    worker.drain_inbox(worker.inbox.len());
    let mut remote: Vec<Vec<Delivery>> = (0..shared.inboxes.len()).map(|_| Vec::new()).collect();
    for d in deliveries {
        WorkerStats::add(&worker.stats.events_published, 1);
        let key = ChannelRef {
            app: d.channel.app,
            name: &d.channel.name,
        };
        let Some(occupancy) = shared.index.get(key) else {
            continue;
        };
        for w in occupancy.workers.iter() {
            if w == worker.index {
                worker.deliver_local(key, &d.frame, d.except, d.published);
            } else {
                remote[w].push(d.clone());
            }
        }
    }
    let mut result = Ok(());
    for (w, batch) in remote.into_iter().enumerate() {
        if !batch.is_empty() {
            if let Err(e) = send_to(worker, w, WorkerMsg::Deliver(batch)).await {
                result = Err(e);
            }
        }
    }
    result
}

/// Sends `msg` to worker `w`'s inbox, waiting (asynchronously) up to [`INBOX_WAIT`] for
/// room; a full inbox is logged, counted and reported.
async fn send_to(worker: &Worker, w: usize, mut msg: WorkerMsg) -> Result<(), PublishError> {
    let deadline = Instant::now() + INBOX_WAIT;
    loop {
        match worker.shared.inboxes[w].try_send(msg) {
            Ok(()) => return Ok(()),
            Err(m) if Instant::now() < deadline => {
                msg = m;
                worker.rt.sleep(Duration::from_millis(1)).await;
            }
            Err(_) => {
                WorkerStats::add(&worker.stats.inbox_full, 1);
                tracing::warn!(
                    worker = w,
                    "inbox full: message not delivered to that worker"
                );
                return Err(PublishError::Overloaded(w));
            }
        }
    }
}

/// Applies `msg` on this worker and sends it to every other one (user-level messages,
/// which do not know where the user's connections are).
pub async fn send_to_all(worker: &Worker, msg: WorkerMsg) -> Result<(), PublishError> {
    let mut result = Ok(());
    for w in 0..worker.shared.inboxes.len() {
        if w != worker.index {
            if let Err(e) = send_to(worker, w, msg.clone()).await {
                result = Err(e);
            }
        }
    }
    worker.apply(msg);
    result
}

/// Publishes in a task of its own, for callers that cannot wait (protocol handlers): the
/// same delivery, and a full inbox is logged and counted by [`publish`].
pub fn publish_detached(worker: &Rc<Worker>, deliveries: Vec<Delivery>) {
    let w = worker.clone();
    worker.rt.spawn(Box::pin(async move {
        let _ = publish(&w, deliveries).await;
    }));
}

/// A worker's inbox task: applies what other workers send it, yielding between batches so
/// its connections keep running.
pub async fn run_inbox(worker: &Worker) {
    loop {
        worker.inbox.ready().await;
        while worker.drain_inbox(INBOX_BATCH) == INBOX_BATCH {
            crate::runtime::yield_now().await;
        }
    }
}
