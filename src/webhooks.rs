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
//! * Each URL has its own [`PER_URL_IN_FLIGHT`] concurrent requests, so a receiver that
//!   hangs holds up only its own events, not other URLs' or other apps'.
//! * Memory is bounded: at most [`MAX_BYTES`] of events and request bodies (queued,
//!   waiting out the debounce, batched, in flight or waiting to retry), [`QUEUE`] events
//!   waiting for the thread and [`MAX_OUTSTANDING`] requests. Beyond any of them, events are
//!   dropped, logged (at most every 10 s) and counted — never queued without limit.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use serde_json::{Map, Value};

use crate::app::{AppIdx, Apps, WebhookEvent};

/// The apps as last (re)loaded.
pub type SharedApps = Arc<arc_swap::ArcSwap<Apps>>;

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
/// Requests in flight or waiting to retry.
pub const MAX_OUTSTANDING: usize = 10_000;
/// Bytes of events and request bodies the sender may hold at once.
pub const MAX_BYTES: usize = 64 << 20;
/// Requests in flight at once to one URL.
pub const PER_URL_IN_FLIGHT: usize = 8;
/// First retry delay.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// Longest retry delay.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// One thing that happened, for the app's webhooks.
#[derive(Debug, Clone)]
pub struct Job {
    /// The app.
    pub app: AppIdx,
    /// What happened.
    pub event: WebhookEvent,
    /// The channel.
    pub channel: Arc<str>,
    /// The user, for member events and presence client events.
    pub user_id: Option<Arc<str>>,
    /// More fields of the event object (`event`, `data`, `socket_id`,
    /// `subscription_count`).
    pub fields: Map<String, Value>,
    /// When it happened, in Unix milliseconds.
    pub time_ms: u64,
    /// Bytes charged to the sender's budget for it (set by [`Webhooks::send`]).
    cost: usize,
}

impl Job {
    /// A job for `event` on `channel`, happening now.
    pub fn new(app: AppIdx, event: WebhookEvent, channel: &str) -> Self {
        Self {
            app,
            event,
            channel: Arc::from(channel),
            user_id: None,
            fields: Map::new(),
            time_ms: unix_ms(),
            cost: 0,
        }
    }

    /// About how many bytes the job holds (its strings, plus the structure).
    fn size(&self) -> usize {
        let fields: usize = self
            .fields
            .iter()
            .map(|(k, v)| k.len() + v.as_str().map_or(16, str::len))
            .sum();
        128 + self.channel.len() + self.user_id.as_ref().map_or(0, |u| u.len()) + fields
    }

    fn to_json(&self) -> Value {
        let mut o = Map::new();
        o.insert("name".into(), self.event.name().into());
        o.insert("channel".into(), (*self.channel).into());
        if let Some(u) = &self.user_id {
            o.insert("user_id".into(), (**u).into());
        }
        for (k, v) in &self.fields {
            o.insert(k.clone(), v.clone());
        }
        Value::Object(o)
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Webhook counters, for `/metrics`.
#[derive(Debug, Default)]
pub struct WebhookStats {
    /// Requests answered 2xx.
    pub delivered: AtomicU64,
    /// Attempts that failed (and were retried or dropped).
    pub failed_attempts: AtomicU64,
    /// Requests given up after [`RETRY_FOR`].
    pub dropped_after_retries: AtomicU64,
    /// Events dropped because a queue was full.
    pub dropped_overload: AtomicU64,
    /// Events cancelled by the debounce.
    pub cancelled: AtomicU64,
    outstanding: AtomicUsize,
}

/// The webhook counters at one moment.
#[derive(Debug, Clone, Copy, Default)]
pub struct WebhookCounts {
    /// Requests answered with 2xx.
    pub delivered: u64,
    /// Attempts that failed (and will be retried, or were the last).
    pub failed_attempts: u64,
    /// Requests given up after [`RETRY_FOR`].
    pub dropped_after_retries: u64,
    /// Events dropped because the queue or the outstanding requests were full.
    pub dropped_overload: u64,
    /// `channel_vacated`/`member_removed` cancelled by a quick return.
    pub cancelled: u64,
}

impl WebhookStats {
    /// The counters now.
    pub fn snapshot(&self) -> WebhookCounts {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        WebhookCounts {
            delivered: l(&self.delivered),
            failed_attempts: l(&self.failed_attempts),
            dropped_after_retries: l(&self.dropped_after_retries),
            dropped_overload: l(&self.dropped_overload),
            cancelled: l(&self.cancelled),
        }
    }
}

/// Bytes the sender holds, against [`MAX_BYTES`].
#[derive(Debug, Default)]
struct Budget(AtomicUsize);

impl Budget {
    fn take(&self, n: usize) -> bool {
        let before = self.0.fetch_add(n, Ordering::Relaxed);
        if before + n > MAX_BYTES {
            self.0.fetch_sub(n, Ordering::Relaxed);
            return false;
        }
        true
    }

    fn give(&self, n: usize) {
        self.0.fetch_sub(n, Ordering::Relaxed);
    }
}

/// Logs a dropped event at most every 10 s, with how many were dropped since.
fn warn_dropped(why: &'static str) {
    static DROPPED: AtomicU64 = AtomicU64::new(0);
    static LAST: AtomicU64 = AtomicU64::new(0);
    let n = DROPPED.fetch_add(1, Ordering::Relaxed) + 1;
    let now = crate::metrics::now_ns() / 1_000_000_000;
    let last = LAST.load(Ordering::Relaxed);
    if (last == 0 || now >= last + 10)
        && LAST
            .compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        DROPPED.store(0, Ordering::Relaxed);
        tracing::warn!(dropped = n, "webhook events dropped: {why}");
    }
}

/// The workers' handle on the sender thread.
pub struct Webhooks {
    tx: tokio::sync::mpsc::Sender<Job>,
    budget: Arc<Budget>,
    /// Counters.
    pub stats: Arc<WebhookStats>,
}

impl Webhooks {
    /// Starts the sender thread (even when no app has a webhook yet: a reload may add
    /// one).
    pub fn start(apps: SharedApps) -> std::io::Result<Option<Self>> {
        let (tx, rx) = tokio::sync::mpsc::channel(QUEUE);
        let stats = Arc::new(WebhookStats::default());
        let budget = Arc::new(Budget::default());
        let (thread_stats, thread_budget) = (stats.clone(), budget.clone());
        std::thread::Builder::new()
            .name("ringcast-webhooks".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a current-thread runtime builds");
                rt.block_on(run(apps, rx, thread_stats, thread_budget));
            })?;
        Ok(Some(Self { tx, budget, stats }))
    }

    /// Hands `job` to the sender thread; never blocks. Over the memory budget, or with the
    /// queue full, the event is dropped, counted and (at most every 10 s) logged.
    pub fn send(&self, mut job: Job) {
        job.cost = job.size();
        if !self.budget.take(job.cost) {
            self.stats.dropped_overload.fetch_add(1, Ordering::Relaxed);
            warn_dropped("the webhook memory budget is used up (receivers too slow or down)");
            return;
        }
        let cost = job.cost;
        match self.tx.try_send(job) {
            Ok(()) => {}
            Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => {
                self.budget.give(cost);
                self.stats.dropped_overload.fetch_add(1, Ordering::Relaxed);
                warn_dropped("the webhook queue is full");
            }
            Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => {
                self.budget.give(cost);
                self.stats.dropped_overload.fetch_add(1, Ordering::Relaxed);
                warn_dropped("the webhook sender thread has stopped");
            }
        }
    }
}

/// Debounce key: the channel, and the user for member events.
type PendingKey = (AppIdx, Arc<str>, Option<Arc<str>>);

/// Events gathered for one (app, URL).
struct Batch {
    events: Vec<Value>,
    time_ms: u64,
    opened: Instant,
    cost: usize,
}

/// `channel_vacated`/`member_removed` events waiting out the debounce: by key (for
/// cancelling) and in deadline order (the delay is constant, so arrival order is deadline
/// order). A replaced or cancelled event leaves a stale entry in `order`, skipped by its
/// generation.
#[derive(Default)]
struct Pending {
    by_key: HashMap<PendingKey, (Job, u64)>,
    order: VecDeque<(Instant, PendingKey, u64)>,
    generation: u64,
}

async fn run(
    apps: SharedApps,
    mut rx: tokio::sync::mpsc::Receiver<Job>,
    stats: Arc<WebhookStats>,
    budget: Arc<Budget>,
) {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
    connector.set_nodelay(true);
    let client = Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(PER_URL_IN_FLIGHT)
        .build(connector);
    let sender = Sender {
        apps,
        stats: stats.clone(),
        budget: budget.clone(),
        client,
        limits: RefCell::default(),
    };
    let mut pending = Pending::default();
    let mut batches: HashMap<(AppIdx, Arc<str>), Batch> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            job = rx.recv() => {
                let Some(job) = job else { break };
                let key = (job.app, job.channel.clone(), job.user_id.clone());
                match job.event {
                    WebhookEvent::ChannelVacated | WebhookEvent::MemberRemoved => {
                        if pending.by_key.len() >= QUEUE && !pending.by_key.contains_key(&key) {
                            // Bounded: past this, send without waiting.
                            sender.route(job, &mut batches);
                        } else {
                            pending.generation += 1;
                            let generation = pending.generation;
                            pending.order.push_back((Instant::now() + DEBOUNCE, key.clone(), generation));
                            if let Some((old, _)) = pending.by_key.insert(key, (job, generation)) {
                                budget.give(old.cost);
                            }
                        }
                    }
                    WebhookEvent::ChannelOccupied | WebhookEvent::MemberAdded => {
                        if let Some((gone, _)) = pending.by_key.remove(&key) {
                            // Back within the debounce: neither the leave nor the return
                            // is reported.
                            stats.cancelled.fetch_add(1, Ordering::Relaxed);
                            budget.give(gone.cost + job.cost);
                        } else {
                            sender.route(job, &mut batches);
                        }
                    }
                    _ => sender.route(job, &mut batches),
                }
            }
            _ = tick.tick() => {}
        }
        let now = Instant::now();
        while let Some((at, _, _)) = pending.order.front() {
            if *at > now {
                break;
            }
            let (_, key, generation) = pending.order.pop_front().expect("front exists");
            if pending
                .by_key
                .get(&key)
                .is_some_and(|(_, g)| *g == generation)
            {
                let (job, _) = pending.by_key.remove(&key).expect("present");
                sender.route(job, &mut batches);
            }
        }
        let full: Vec<(AppIdx, Arc<str>)> = batches
            .iter()
            .filter(|(_, b)| b.events.len() >= BATCH_MAX || now >= b.opened + BATCH_WINDOW)
            .map(|(k, _)| k.clone())
            .collect();
        for k in full {
            if let Some(b) = batches.remove(&k) {
                sender.dispatch(k.0, &k.1, b.time_ms, b.events, b.cost);
            }
        }
    }
}

struct Sender {
    apps: SharedApps,
    stats: Arc<WebhookStats>,
    budget: Arc<Budget>,
    client: Client<HttpConnector, Full<Bytes>>,
    /// Each URL's concurrent requests.
    limits: RefCell<HashMap<Arc<str>, Arc<tokio::sync::Semaphore>>>,
}

impl Sender {
    /// Sends `job` to each of its app's URLs that wants it, now or in a batch. The job's
    /// cost goes with the first request (or batch) it joins.
    fn route(&self, job: Job, batches: &mut HashMap<(AppIdx, Arc<str>), Batch>) {
        let apps = self.apps.load();
        let app = apps.get(job.app);
        let event = job.to_json();
        let mut cost = job.cost;
        for hook in app
            .webhooks
            .iter()
            .filter(|h| h.events.contains(&job.event))
        {
            let url: Arc<str> = Arc::from(hook.url.as_str());
            if app.webhook_batching {
                let b = batches.entry((job.app, url)).or_insert_with(|| Batch {
                    events: Vec::new(),
                    time_ms: job.time_ms,
                    opened: Instant::now(),
                    cost: 0,
                });
                b.events.push(event.clone());
                b.cost += std::mem::take(&mut cost);
            } else {
                self.dispatch(
                    job.app,
                    &url,
                    job.time_ms,
                    vec![event.clone()],
                    std::mem::take(&mut cost),
                );
            }
        }
        // No URL (left) wants it.
        self.budget.give(cost);
    }

    /// Starts delivering one request to `url`, in a task of its own. `cost` is released
    /// when the request is done with.
    fn dispatch(
        &self,
        app_idx: AppIdx,
        url: &Arc<str>,
        time_ms: u64,
        events: Vec<Value>,
        cost: usize,
    ) {
        let apps = self.apps.load();
        let app = apps.get(app_idx);
        if !app.webhooks.iter().any(|h| *h.url == **url) {
            // The URL was removed by a reload while the events waited.
            tracing::debug!(app = %app.id, url = &**url, "webhook URL no longer configured: events dropped");
            self.budget.give(cost);
            return;
        }
        if self.stats.outstanding.load(Ordering::Relaxed) >= MAX_OUTSTANDING {
            self.stats
                .dropped_overload
                .fetch_add(events.len() as u64, Ordering::Relaxed);
            self.budget.give(cost);
            warn_dropped("too many webhook requests outstanding");
            return;
        }
        let body =
            Bytes::from(serde_json::json!({ "time_ms": time_ms, "events": events }).to_string());
        if !self.budget.take(body.len()) {
            self.stats
                .dropped_overload
                .fetch_add(events.len() as u64, Ordering::Relaxed);
            self.budget.give(cost);
            warn_dropped("the webhook memory budget is used up (receivers too slow or down)");
            return;
        }
        let held = cost + body.len();
        let signature =
            crate::api::auth::sign(&app.secret, std::str::from_utf8(&body).unwrap_or_default());
        let key = app.key.clone();
        let app_id = app.id.clone();
        let url = url.clone();
        let limit = self
            .limits
            .borrow_mut()
            .entry(url.clone())
            .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(PER_URL_IN_FLIGHT)))
            .clone();
        let (stats, budget, client) =
            (self.stats.clone(), self.budget.clone(), self.client.clone());
        stats.outstanding.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            let started = Instant::now();
            let mut backoff = FIRST_BACKOFF;
            loop {
                let result = {
                    let _permit = limit.acquire().await.expect("never closed");
                    tokio::time::timeout(
                        ATTEMPT_TIMEOUT,
                        post(&client, &url, &key, &signature, body.clone()),
                    )
                    .await
                    .unwrap_or_else(|_| Err(format!("no answer within {ATTEMPT_TIMEOUT:?}")))
                };
                match result {
                    Ok(()) => {
                        stats.delivered.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                    Err(e) => {
                        stats.failed_attempts.fetch_add(1, Ordering::Relaxed);
                        if started.elapsed() + backoff > RETRY_FOR {
                            stats.dropped_after_retries.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(app = %app_id, url = &*url, error = %e, "webhook dropped after retrying for 5 minutes");
                            break;
                        }
                        tracing::debug!(app = %app_id, url = &*url, error = %e, retry_in = ?backoff, "webhook attempt failed");
                        tokio::time::sleep(backoff).await;
                        backoff = next_backoff(backoff);
                    }
                }
            }
            stats.outstanding.fetch_sub(1, Ordering::Relaxed);
            budget.give(held);
        });
    }
}

fn next_backoff(d: Duration) -> Duration {
    (d * 2).min(MAX_BACKOFF)
}

/// One POST over the pooled client; `Ok` on a 2xx answer.
async fn post(
    client: &Client<HttpConnector, Full<Bytes>>,
    url: &str,
    key: &str,
    signature: &str,
    body: Bytes,
) -> Result<(), String> {
    let uri: Uri = url.parse().map_err(|e| format!("invalid URL: {e}"))?;
    let req = Request::post(uri)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header(
            hyper::header::USER_AGENT,
            concat!("ringcast/", env!("CARGO_PKG_VERSION")),
        )
        .header("X-Pusher-Key", key)
        .header("X-Pusher-Signature", signature)
        .body(Full::new(body))
        .map_err(|e| e.to_string())?;
    let resp = client
        .request(req)
        .await
        .map_err(|e| format!("request: {e}"))?;
    let status = resp.status();
    // Read (and discard) a bounded answer, so the connection can be reused.
    let _ = http_body_util::Limited::new(resp.into_body(), 64 * 1024)
        .collect()
        .await;
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("answered {status}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_a_minute_and_spans_five_minutes() {
        let mut d = FIRST_BACKOFF;
        let mut total = Duration::ZERO;
        let mut attempts = 1;
        while total + d <= RETRY_FOR {
            total += d;
            d = next_backoff(d);
            attempts += 1;
        }
        assert_eq!(d, MAX_BACKOFF);
        // First try, retries after 1+2+4+8+16+32 s (63 s), then every 60 s while the
        // total stays within 5 minutes (123, 183, 243 s): ten attempts.
        assert_eq!(attempts, 10);
    }

    #[test]
    fn event_objects_carry_the_documented_fields() {
        let mut job = Job::new(0, WebhookEvent::MemberAdded, "presence-room");
        job.user_id = Some(Arc::from("42"));
        assert_eq!(
            job.to_json(),
            serde_json::json!({"name":"member_added","channel":"presence-room","user_id":"42"})
        );
        let mut job = Job::new(0, WebhookEvent::SubscriptionCount, "news");
        job.fields.insert("subscription_count".into(), 3.into());
        assert_eq!(
            job.to_json(),
            serde_json::json!({"name":"subscription_count","channel":"news","subscription_count":3})
        );
    }
}
