//! The console's Server-Sent Events stream for one app: the app's event log as it is
//! recorded, and its counts once a second.
//!
//! Opening a stream starts the app's log (it records only while watched); closing the
//! last one stops it. A stream that cannot keep up (a slow browser, a paused tab) is told
//! how many entries it missed instead of holding the log back: the log is a bounded ring
//! and the stream's queue is bounded too.

use std::collections::HashMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Frame;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Response, StatusCode};
use serde_json::json;
use tokio::sync::mpsc;

use super::{kind_name, StreamSlot};
use crate::app::console::AppConsole;
use crate::app::AppIdx;
use crate::metrics::listener::Body;
use crate::protocol::channel;
use crate::worker::Shared;

/// How often counts are sent.
const STATS_EVERY: Duration = Duration::from_secs(1);
/// How long one listing of an app's channels by kind serves every stream of the app.
const KINDS_FRESH: Duration = Duration::from_secs(2);
/// Chunks a stream may have waiting to be written.
const QUEUE: usize = 16;
/// Bytes of log entries in one chunk (more wait for the next).
const CHUNK_BYTES: usize = 64 * 1024;

/// An app's occupied channels by kind, listed at most every [`KINDS_FRESH`] whatever the
/// number of open streams (over a cluster a listing is a Redis query).
#[derive(Default)]
pub(super) struct ChannelKinds {
    by_app: tokio::sync::Mutex<HashMap<AppIdx, (Instant, serde_json::Value)>>,
}

impl ChannelKinds {
    async fn of(&self, shared: &Shared, app: AppIdx) -> serde_json::Value {
        // Held while listing: streams of the same moment share one listing.
        let mut by_app = self.by_app.lock().await;
        if let Some((at, kinds)) = by_app.get(&app) {
            if at.elapsed() < KINDS_FRESH {
                return kinds.clone();
            }
        }
        let mut kinds = serde_json::Map::new();
        for k in ["public", "private", "encrypted", "presence", "cache"] {
            kinds.insert(k.into(), 0.into());
        }
        let listed = match shared.broker.channels(app, "").await {
            Ok(list) => {
                for (name, _) in list {
                    let kind = channel::parse(&name).map_or("public", kind_name);
                    if let Some(n) = kinds.get_mut(kind) {
                        *n = (n.as_u64().unwrap_or(0) + 1).into();
                    }
                }
                json!({ "channels": kinds, "error": null })
            }
            Err(e) => json!({ "channels": kinds, "error": e.to_string() }),
        };
        by_app.insert(app, (Instant::now(), listed.clone()));
        listed
    }
}

/// A response body fed from a channel.
struct ChannelBody(mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|c| c.map(|b| Ok(Frame::data(b))))
    }
}

/// Opens a stream of app `app`'s log and counts, after entry `after` (0: whatever the log
/// still holds; a reconnecting browser names the last entry it has).
pub(super) fn open(
    shared: Arc<Shared>,
    kinds: Arc<ChannelKinds>,
    app: AppIdx,
    after: u64,
    slot: StreamSlot,
) -> Response<Body> {
    let console = shared.apps.load().get(app).console.clone();
    let watch = console.watch();
    let (tx, rx) = mpsc::channel::<Bytes>(QUEUE);
    tokio::spawn(async move {
        let _held = (slot, watch);
        run(shared, kinds, app, console, after, tx).await;
    });
    let mut r = Response::new(ChannelBody(rx).boxed());
    *r.status_mut() = StatusCode::OK;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    // A proxy in front (with a token) must not hold the stream back.
    r.headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    r
}

async fn run(
    shared: Arc<Shared>,
    kinds: Arc<ChannelKinds>,
    app: AppIdx,
    console: Arc<AppConsole>,
    after: u64,
    tx: mpsc::Sender<Bytes>,
) {
    let mut cursor = after;
    // Tell the browser how soon to reconnect if the stream ends.
    if tx
        .send(Bytes::from_static(b"retry: 2000\n\n"))
        .await
        .is_err()
    {
        return;
    }
    if cursor > console.last_seq() {
        // The browser saw entries this log never had: the server restarted since.
        cursor = 0;
        let reset = Bytes::from_static(b"event: reset\ndata: {}\n\n");
        if tx.send(reset).await.is_err() {
            return;
        }
    }
    let mut report_gaps = cursor > 0;
    let mut stats = tokio::time::interval(STATS_EVERY);
    stats.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut rates = Rates::new(console.messages());
    loop {
        let changed = console.changed();
        tokio::pin!(changed);
        changed.as_mut().enable();
        let (entries, missed) = console.since(cursor);
        let mut chunk = String::new();
        if missed > 0 && report_gaps {
            let gap = json!({ "missed": missed });
            chunk.push_str(&format!("event: gap\ndata: {gap}\n\n"));
        }
        report_gaps = true;
        let mut more = false;
        for e in &entries {
            if chunk.len() >= CHUNK_BYTES {
                more = true;
                break;
            }
            cursor = e.seq;
            let data = serde_json::to_string(e).unwrap_or_default();
            chunk.push_str(&format!("id: {}\nevent: log\ndata: {data}\n\n", e.seq));
        }
        if !chunk.is_empty() && tx.send(Bytes::from(chunk)).await.is_err() {
            return;
        }
        if more {
            continue;
        }
        tokio::select! {
            _ = &mut changed => {}
            _ = stats.tick() => {
                let s = counts(&shared, &kinds, app, &console, &mut rates).await;
                let chunk = format!("event: stats\ndata: {s}\n\n");
                if tx.send(Bytes::from(chunk)).await.is_err() {
                    return;
                }
            }
            _ = shared.shutdown.cancelled() => return,
            _ = tx.closed() => return,
        }
    }
}

/// Messages in and out per second, from the counters' growth between two readings.
struct Rates {
    last: (u64, u64),
    at: Instant,
}

impl Rates {
    fn new(now: (u64, u64)) -> Self {
        Self {
            last: now,
            at: Instant::now(),
        }
    }

    fn per_second(&mut self, now: (u64, u64)) -> (f64, f64) {
        let secs = self.at.elapsed().as_secs_f64().max(0.001);
        let r = (
            now.0.saturating_sub(self.last.0) as f64 / secs,
            now.1.saturating_sub(self.last.1) as f64 / secs,
        );
        *self = Self::new(now);
        r
    }
}

/// The app's counts now: this node's connections and rates, the channels by kind.
async fn counts(
    shared: &Shared,
    kinds: &ChannelKinds,
    app: AppIdx,
    console: &AppConsole,
    rates: &mut Rates,
) -> serde_json::Value {
    let connections = shared
        .apps
        .load()
        .get(app)
        .counters
        .connections
        .load(std::sync::atomic::Ordering::Relaxed);
    let listed = kinds.of(shared, app).await;
    let (rate_in, rate_out) = rates.per_second(console.messages());
    json!({
        "at": crate::clock::unix_ms(),
        "connections": connections,
        "channels": listed["channels"],
        "messages_in_per_second": (rate_in * 10.0).round() / 10.0,
        "messages_out_per_second": (rate_out * 10.0).round() / 10.0,
        "error": listed["error"],
    })
}
