//! Webhooks: telling an app's backend what happened on its channels.
//!
//! Workers hand events to [`Webhooks::send`], which never blocks: a bounded queue feeds one
//! dedicated sender thread (a current-thread tokio runtime with hyper's pooled HTTP/1
//! client), so a slow or hanging receiver can never stall a worker's event loop. On that
//! thread:
//!
//! * `channel_vacated` and `member_removed` wait [`DEBOUNCE`]; a `channel_occupied` (or
//!   `member_added` of the same user) arriving meanwhile cancels both, so a page reload
//!   sends nothing. The delay is constant, so waiting events sit in a deadline-ordered
//!   queue: nothing is scanned.
//! * Each event goes to every URL of its app whose filter takes it: one request per event,
//!   or, with the app's `webhook_batching`, up to [`BATCH_MAX`] events gathered for at most
//!   [`BATCH_WINDOW`] (never mixing apps or URLs). The URL is looked up again when a batch
//!   is sent, so a reload that removes it drops the batch instead of misdirecting it.
//! * A request is `{"time_ms":…,"events":[…]}`, signed with `X-Pusher-Key` and
//!   `X-Pusher-Signature` (hex HMAC-SHA256 of the body with the app secret). A non-2xx
//!   answer, a connection failure or no answer within [`ATTEMPT_TIMEOUT`] is retried with
//!   exponential backoff (1 s doubling, at most 60 s apart) for [`RETRY_FOR`]; then the
//!   request is dropped with a warning and counted.
//! * Each URL has its own [`PER_URL_IN_FLIGHT`] concurrent requests, and its own share of
//!   what waits: [`PER_URL_QUEUE`] requests and [`PER_URL_BYTES`] (in flight, waiting for
//!   a slot or to retry). A receiver that hangs fills only its own share: other URLs' and
//!   other apps' webhooks keep going out.
//! * Memory is bounded: at most [`MAX_BYTES`] of events and request bodies in all (queued,
//!   waiting out the debounce, batched, in flight or waiting to retry), [`QUEUE`] events
//!   waiting for the thread, and each URL's share. Beyond any of them, events are
//!   dropped, logged (at most every 10 s) and counted — never queued without limit.
//!
//! What each event is, and when one is sent, is decided by the protocol rules
//! ([`crate::pusher`]); this module only delivers.

mod budget;
mod debounce;
mod sender;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::app::{AppIdx, LiveApps};
use crate::metrics::WebhookStats;
use crate::protocol::webhook::Event;
use budget::Budget;

/// How long `channel_vacated` and `member_removed` wait for the channel or member to
/// come back.
pub const DEBOUNCE: Duration = Duration::from_secs(3);
/// How long a failing request is retried.
pub const RETRY_FOR: Duration = Duration::from_secs(5 * 60);
/// Longest wait for one attempt's answer.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for a connection to a receiver.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest a batch is held open.
pub const BATCH_WINDOW: Duration = Duration::from_secs(1);
/// Most events in one batched request.
pub const BATCH_MAX: usize = 100;
/// Events waiting for the sender thread.
pub const QUEUE: usize = 65_536;
/// Requests one URL may have in flight, waiting for a slot or waiting to retry.
pub const PER_URL_QUEUE: usize = 1_000;
/// Bytes of request bodies one URL may hold (in flight, waiting for a slot or to retry).
pub const PER_URL_BYTES: usize = 8 << 20;
/// Bytes of events and request bodies the sender may hold at once.
pub const MAX_BYTES: usize = 64 << 20;
/// Requests in flight at once to one URL.
pub const PER_URL_IN_FLIGHT: usize = 8;
/// First retry delay.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// Longest retry delay.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// One event on its way to an app's webhooks.
#[derive(Debug, Clone)]
struct Job {
    /// The app.
    app: AppIdx,
    /// What happened.
    event: Event,
    /// When it happened, in Unix milliseconds.
    time_ms: u64,
    /// Bytes charged to the sender's budget for it.
    cost: usize,
}

impl Job {
    fn new(app: AppIdx, event: Event) -> Self {
        Self {
            app,
            cost: event.size(),
            event,
            time_ms: crate::clock::unix_ms(),
        }
    }
}

/// Asks the cluster whether a held leave still stands at the end of its debounce (no
/// return on another node took its decision back). Installed by a clustered node's
/// broker; without one, held leaves are sent when due.
pub trait Confirm: Send + Sync + 'static {
    /// Resolves to whether `event` (which carries its decision's token) is to be sent.
    /// A broker that cannot tell answers `true`: a webhook is never dropped for lack of an
    /// answer.
    fn confirm(&self, app: AppIdx, event: &Event) -> tokio::sync::oneshot::Receiver<bool>;
}

/// Where the sender finds the [`Confirm`], once installed.
type ConfirmSlot = Arc<std::sync::OnceLock<Arc<dyn Confirm>>>;

/// The workers' handle on the sender thread.
#[derive(Clone)]
pub struct Webhooks {
    tx: tokio::sync::mpsc::Sender<Job>,
    budget: Arc<Budget>,
    stats: Arc<WebhookStats>,
    confirm: ConfirmSlot,
    flush: tokio::sync::mpsc::Sender<std::sync::mpsc::Sender<()>>,
}

impl Webhooks {
    /// Starts the sender thread (even when no app has a webhook yet: a reload may add
    /// one).
    pub fn start(apps: LiveApps, stats: Arc<WebhookStats>) -> std::io::Result<Self> {
        let (tx, rx) = tokio::sync::mpsc::channel(QUEUE);
        let budget = Arc::new(Budget::default());
        let confirm = ConfirmSlot::default();
        let (thread_stats, thread_budget) = (stats.clone(), budget.clone());
        let thread_confirm = confirm.clone();
        let (flush, flush_rx) = tokio::sync::mpsc::channel(1);
        std::thread::Builder::new()
            .name("ringcast-webhooks".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a current-thread runtime builds");
                rt.block_on(sender::run(
                    apps,
                    rx,
                    thread_stats,
                    thread_budget,
                    thread_confirm,
                    flush_rx,
                ));
            })?;
        Ok(Self {
            tx,
            budget,
            stats,
            confirm,
            flush,
        })
    }

    /// At shutdown: waits, at most `within`, until every event handed over so far has
    /// been sent (held leaves at the end of their debounce, batches at once) and answered.
    /// Returns whether everything went out.
    pub fn flush(&self, within: std::time::Duration) -> bool {
        let (done, wait) = std::sync::mpsc::channel();
        if self.flush.try_send(done).is_err() {
            return false;
        }
        wait.recv_timeout(within).is_ok()
    }

    /// Installs the cluster's [`Confirm`] (once; later calls are ignored).
    pub fn set_confirm(&self, confirm: Arc<dyn Confirm>) {
        let _ = self.confirm.set(confirm);
    }

    /// Hands `event` of `app`, happening now, to the sender thread; never blocks. Over the
    /// memory budget, or with the queue full, the event is dropped, counted and (at most
    /// every 10 s) logged.
    pub fn send(&self, app: AppIdx, event: Event) {
        let job = Job::new(app, event);
        if !self.budget.take(job.cost) {
            self.stats.dropped_overload.fetch_add(1, Ordering::Relaxed);
            budget::warn_dropped(
                "the webhook memory budget is used up (receivers too slow or down)",
            );
            return;
        }
        let cost = job.cost;
        match self.tx.try_send(job) {
            Ok(()) => {}
            Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => {
                self.budget.give(cost);
                self.stats.dropped_overload.fetch_add(1, Ordering::Relaxed);
                budget::warn_dropped("the webhook queue is full");
            }
            Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => {
                self.budget.give(cost);
                self.stats.dropped_overload.fetch_add(1, Ordering::Relaxed);
                budget::warn_dropped("the webhook sender thread has stopped");
            }
        }
    }
}
