//! The console's Server-Sent Events stream for one app: the app's event log as it is
//! recorded, and its counts once a second.
//!
//! Opening a stream starts the app's log (it records only while watched); closing the
//! last one stops it. A stream that cannot keep up (a slow browser, a paused tab) is told
//! how many entries it missed instead of holding the log back: the log is a bounded ring
//! and the stream's queue is bounded too.

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
/// Chunks a stream may have waiting to be written.
const QUEUE: usize = 64;

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

/// Opens a stream of app `app`'s log and counts, resuming after entry `last_event_id` if
/// the browser is reconnecting.
pub(super) fn open(
    shared: Arc<Shared>,
    app: AppIdx,
    last_event_id: Option<u64>,
    slot: StreamSlot,
) -> Response<Body> {
    let console = shared.apps.load().get(app).console.clone();
    let watch = console.watch();
    let (tx, rx) = mpsc::channel::<Bytes>(QUEUE);
    tokio::spawn(async move {
        let _held = (slot, watch);
        run(shared, app, console, last_event_id, tx).await;
    });
    let mut r = Response::new(ChannelBody(rx).boxed());
    *r.status_mut() = StatusCode::OK;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    r
}

async fn run(
    shared: Arc<Shared>,
    app: AppIdx,
    console: Arc<AppConsole>,
    last_event_id: Option<u64>,
    tx: mpsc::Sender<Bytes>,
) {
    // A new page starts with what the log still holds; a reconnecting one where it was.
    let mut cursor = last_event_id.unwrap_or(0);
    let mut report_gaps = last_event_id.is_some();
    let mut stats = tokio::time::interval(STATS_EVERY);
    let mut rates = Rates::new(console.messages());
    // Tell the browser how soon to reconnect if the stream ends.
    if tx
        .send(Bytes::from_static(b"retry: 2000\n\n"))
        .await
        .is_err()
    {
        return;
    }
    loop {
        let changed = console.changed();
        tokio::pin!(changed);
        changed.as_mut().enable();
        let (entries, missed) = console.since(cursor);
        let mut chunk = String::new();
        if missed > 0 && report_gaps {
            chunk.push_str(&format!(
                "event: gap\ndata: {}\n\n",
                json!({ "missed": missed })
            ));
        }
        report_gaps = true;
        for e in &entries {
            cursor = e.seq;
            let data = serde_json::to_string(e).unwrap_or_default();
            chunk.push_str(&format!("id: {}\nevent: log\ndata: {data}\n\n", e.seq));
        }
        if !chunk.is_empty() && tx.send(Bytes::from(chunk)).await.is_err() {
            return;
        }
        tokio::select! {
            _ = &mut changed => {}
            _ = stats.tick() => {
                let s = counts(&shared, app, &console, &mut rates).await;
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
    let mut kinds = serde_json::Map::new();
    for k in ["public", "private", "encrypted", "presence", "cache"] {
        kinds.insert(k.into(), 0.into());
    }
    let mut broker_error = None;
    match shared.broker.channels(app, "").await {
        Ok(list) => {
            for (name, _) in list {
                let kind = channel::parse(&name).map_or("public", kind_name);
                if let Some(n) = kinds.get_mut(kind) {
                    *n = (n.as_u64().unwrap_or(0) + 1).into();
                }
            }
        }
        Err(e) => broker_error = Some(e.to_string()),
    }
    let (rate_in, rate_out) = rates.per_second(console.messages());
    json!({
        "at": crate::clock::unix_ms(),
        "connections": connections,
        "channels": kinds,
        "messages_in_per_second": (rate_in * 10.0).round() / 10.0,
        "messages_out_per_second": (rate_out * 10.0).round() / 10.0,
        "error": broker_error,
    })
}
