//! The sender thread: debounce, batching, signing, delivery and retries.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::app::console::DeliveryState;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use serde_json::Value;

use super::budget::{warn_dropped, Budget};
use super::debounce::{Debounce, Offer};
use super::*;

/// Events gathered for one (app, URL).
struct Batch {
    events: Vec<Value>,
    time_ms: u64,
    opened: Instant,
    cost: usize,
}

impl Batch {
    /// Whether the batch goes out at `now`: full ([`BATCH_MAX`] events), or open for
    /// [`BATCH_WINDOW`].
    fn is_due(&self, now: Instant) -> bool {
        self.events.len() >= BATCH_MAX || now >= self.opened + BATCH_WINDOW
    }
}

pub(super) async fn run(
    apps: LiveApps,
    mut rx: tokio::sync::mpsc::Receiver<Job>,
    stats: Arc<WebhookStats>,
    budget: Arc<Budget>,
    confirm: ConfirmSlot,
    mut flush: tokio::sync::mpsc::Receiver<std::sync::mpsc::Sender<()>>,
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
    let mut debounce = Debounce::new(QUEUE);
    let mut batches: HashMap<(AppIdx, Arc<str>), Batch> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Held leaves the cluster confirmed (at most as many as are held: bounded by QUEUE).
    let (confirmed_tx, mut confirmed) = tokio::sync::mpsc::unbounded_channel::<Job>();
    let confirming = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    // Shutting down: batches go out at once, and whoever waits hears when nothing is left.
    let mut flushing: Option<std::sync::mpsc::Sender<()>> = None;
    loop {
        tokio::select! {
            Some(done) = flush.recv() => flushing = Some(done),
            Some(job) = confirmed.recv() => sender.route(job, &mut batches),
            job = rx.recv() => {
                let Some(job) = job else { break };
                match debounce.offer(job, Instant::now()) {
                    Offer::Send(job) => sender.route(job, &mut batches),
                    Offer::Held(replaced) => {
                        if let Some(old) = replaced {
                            budget.give(old.cost);
                        }
                    }
                    Offer::Cancelled(left, back) => {
                        stats.cancelled.fetch_add(1, Ordering::Relaxed);
                        budget.give(left.cost + back.cost);
                    }
                }
            }
            _ = tick.tick() => {}
        }
        let now = Instant::now();
        // Shutting down a single node, nobody can come back before it exits: held leaves
        // go at once. A cluster's wait for the debounce, as a user may be back on another
        // node.
        let release = match (&flushing, confirm.get()) {
            (Some(_), None) => now + Duration::from_secs(86_400),
            _ => now,
        };
        for job in debounce.due(release) {
            match (confirm.get(), job.event.confirm.is_some()) {
                (Some(c), true) => {
                    let answer = c.confirm(job.app, &job.event);
                    let (tx, stats, budget) = (confirmed_tx.clone(), stats.clone(), budget.clone());
                    let pending = confirming.clone();
                    pending.fetch_add(1, Ordering::Relaxed);
                    tokio::spawn(async move {
                        // No answer (the broker stopped): send rather than lose it.
                        if answer.await.unwrap_or(true) {
                            let _ = tx.send(job);
                        } else {
                            stats.cancelled.fetch_add(1, Ordering::Relaxed);
                            budget.give(job.cost);
                        }
                        pending.fetch_sub(1, Ordering::Relaxed);
                    });
                }
                _ => sender.route(job, &mut batches),
            }
        }
        let full: Vec<(AppIdx, Arc<str>)> = batches
            .iter()
            .filter(|(_, b)| flushing.is_some() || b.is_due(now))
            .map(|(k, _)| k.clone())
            .collect();
        for k in full {
            if let Some(b) = batches.remove(&k) {
                sender.dispatch(k.0, &k.1, b.time_ms, b.events, b.cost);
            }
        }
        if flushing.is_some()
            && rx.is_empty()
            && debounce.is_empty()
            && batches.is_empty()
            && confirming.load(Ordering::Relaxed) == 0
            && confirmed.is_empty()
            && stats.outstanding.load(Ordering::Relaxed) == 0
        {
            if let Some(done) = flushing.take() {
                let _ = done.send(());
            }
        }
    }
}

struct Sender {
    apps: LiveApps,
    stats: Arc<WebhookStats>,
    budget: Arc<Budget>,
    client: Client<HttpConnector, Full<Bytes>>,
    /// Each URL's share.
    limits: RefCell<HashMap<Arc<str>, UrlShare>>,
}

/// One URL's concurrent requests, and what waits for it.
#[derive(Clone)]
struct UrlShare {
    in_flight: Arc<tokio::sync::Semaphore>,
    /// Requests in flight, waiting for a slot or to retry.
    queued: Arc<std::sync::atomic::AtomicUsize>,
    /// Their bodies' bytes.
    bytes: Arc<std::sync::atomic::AtomicUsize>,
}

impl Default for UrlShare {
    fn default() -> Self {
        Self {
            in_flight: Arc::new(tokio::sync::Semaphore::new(PER_URL_IN_FLIGHT)),
            queued: Default::default(),
            bytes: Default::default(),
        }
    }
}

impl Sender {
    /// Sends `job` to each of its app's URLs that wants it, now or in a batch. The job's
    /// cost goes with the first request (or batch) it joins.
    fn route(&self, job: Job, batches: &mut HashMap<(AppIdx, Arc<str>), Batch>) {
        let apps = self.apps.load();
        let app = apps.get(job.app);
        let event = job.event.to_json();
        let mut cost = job.cost;
        for hook in app
            .webhooks
            .iter()
            .filter(|h| h.events.contains(&job.event.kind))
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
        let share = self
            .limits
            .borrow_mut()
            .entry(url.clone())
            .or_default()
            .clone();
        let console = app.console.clone();
        let names: Vec<String> = events
            .iter()
            .map(|e| e["name"].as_str().unwrap_or("?").to_string())
            .collect();
        let body =
            Bytes::from(serde_json::json!({ "time_ms": time_ms, "events": events }).to_string());
        // The URL's own share first: a receiver that does not keep up fills only it.
        if share.queued.load(Ordering::Relaxed) >= PER_URL_QUEUE
            || share.bytes.load(Ordering::Relaxed) + body.len() > PER_URL_BYTES
        {
            self.stats
                .dropped_overload
                .fetch_add(events.len() as u64, Ordering::Relaxed);
            self.budget.give(cost);
            let why = "a webhook URL is not keeping up: its share of waiting requests is full";
            console.delivery_dropped(url, names, why);
            warn_dropped(why);
            return;
        }
        if !self.budget.take(body.len()) {
            self.stats
                .dropped_overload
                .fetch_add(events.len() as u64, Ordering::Relaxed);
            self.budget.give(cost);
            let why = "the webhook memory budget is used up (receivers too slow or down)";
            console.delivery_dropped(url, names, why);
            warn_dropped(why);
            return;
        }
        let held = cost + body.len();
        let signature = crate::protocol::signature::sign(
            &app.secret,
            std::str::from_utf8(&body).unwrap_or_default(),
        );
        let key = app.key.clone();
        let app_id = app.id.clone();
        let url = url.clone();
        let (stats, budget, client) =
            (self.stats.clone(), self.budget.clone(), self.client.clone());
        stats.outstanding.fetch_add(1, Ordering::Relaxed);
        share.queued.fetch_add(1, Ordering::Relaxed);
        share.bytes.fetch_add(body.len(), Ordering::Relaxed);
        let record = console.delivery_started(&url, names);
        tokio::spawn(async move {
            let started = Instant::now();
            let mut backoff = FIRST_BACKOFF;
            let mut attempts = 0;
            loop {
                attempts += 1;
                let result = {
                    let _permit = share.in_flight.acquire().await.expect("never closed");
                    tokio::time::timeout(
                        ATTEMPT_TIMEOUT,
                        post(&client, &url, &key, &signature, body.clone()),
                    )
                    .await
                    .unwrap_or_else(|_| Err(format!("no answer within {ATTEMPT_TIMEOUT:?}").into()))
                };
                match result {
                    Ok(status) => {
                        stats.delivered.fetch_add(1, Ordering::Relaxed);
                        console.delivery_update(record, |d| {
                            d.state = DeliveryState::Delivered;
                            d.http_status = Some(status);
                            d.error = None;
                            d.attempts = attempts;
                            d.next_retry_at = None;
                        });
                        break;
                    }
                    Err(e) => {
                        stats.failed_attempts.fetch_add(1, Ordering::Relaxed);
                        let give_up = started.elapsed() + backoff > RETRY_FOR;
                        console.delivery_update(record, |d| {
                            d.state = match give_up {
                                true => DeliveryState::Failed,
                                false => DeliveryState::Retrying,
                            };
                            d.http_status = e.status;
                            d.error = Some(e.message.clone());
                            d.attempts = attempts;
                            d.next_retry_at = (!give_up)
                                .then(|| crate::clock::unix_ms() + backoff.as_millis() as u64);
                        });
                        if give_up {
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
            share.queued.fetch_sub(1, Ordering::Relaxed);
            share.bytes.fetch_sub(body.len(), Ordering::Relaxed);
            budget.give(held);
        });
    }
}

fn next_backoff(d: Duration) -> Duration {
    (d * 2).min(MAX_BACKOFF)
}

/// Why an attempt failed: the answer's status, if there was one.
#[derive(Debug)]
struct Failure {
    status: Option<u16>,
    message: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<String> for Failure {
    fn from(message: String) -> Self {
        Self {
            status: None,
            message,
        }
    }
}

/// One POST over the pooled client; the status of a 2xx answer.
async fn post(
    client: &Client<HttpConnector, Full<Bytes>>,
    url: &str,
    key: &str,
    signature: &str,
    body: Bytes,
) -> Result<u16, Failure> {
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
        Ok(status.as_u16())
    } else {
        Err(Failure {
            status: Some(status.as_u16()),
            message: format!("answered {status}"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_go_out_at_100_events_or_after_one_second() {
        let opened = Instant::now();
        let mut b = Batch {
            events: vec![Value::Null; BATCH_MAX - 1],
            time_ms: 0,
            opened,
            cost: 0,
        };
        assert!(!b.is_due(opened));
        assert!(b.is_due(opened + BATCH_WINDOW));
        b.events.push(Value::Null);
        assert!(b.is_due(opened));
    }

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
}
