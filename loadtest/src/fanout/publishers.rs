//! Publishers: each owns a share of the channels and publishes their events in order, on
//! the constant-rate schedule, either through the signed HTTP API (one request at a time,
//! or pipelined) or as client events on a subscribed connection. A channel's events count
//! as published once the server has acknowledged them.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use crate::http::{self, ApiClient};
use crate::pusher::{self, Incoming};
use crate::stats::now_ns;

use super::connection::connect_subscribed;
use super::schedule::{owned, sleep_until_ns, slot, until_t0_is_set, Plan};

/// Counts a publisher as finished when it returns, whichever way.
struct Finished<'a>(&'a AtomicUsize);

impl Drop for Finished<'_> {
    fn drop(&mut self) {
        self.0.fetch_add(1, Relaxed);
    }
}

/// An HTTP publisher's numbering: the channels it owns, each channel's next sequence
/// number, and where its round robin over its channels is.
struct Numbering {
    own: Vec<usize>,
    next_seq: Vec<u64>,
    rr: usize,
}

/// One HTTP request: the channels it publishes to, each with its sequence number before
/// the request, and the request itself.
struct Request {
    before: Vec<(usize, u64)>,
    path: &'static str,
    body: Vec<u8>,
}

/// Requests sent and not answered yet: each one's (channel, sequence number after it).
type Inflight = VecDeque<Vec<(usize, u64)>>;

impl Numbering {
    /// Numbers the next `--batch` events, all meant for `intended`, into a request.
    fn request(&mut self, plan: &Plan, intended: u64) -> Request {
        let own = &self.own;
        let before: Vec<(usize, u64)> = (0..plan.batch.min(own.len()))
            .map(|e| own[(self.rr + e) % own.len()])
            .map(|c| (c, self.next_seq[c]))
            .collect();
        let mut events = Vec::with_capacity(plan.batch);
        for _ in 0..plan.batch {
            let c = own[self.rr % own.len()];
            self.rr += 1;
            let seq = self.next_seq[c];
            self.next_seq[c] += 1;
            events.push(serde_json::json!({"name": pusher::EVENT, "channel": plan.channels[c], "data": pusher::event_data(seq, intended, plan.payload)}));
        }
        let (path, body) = if plan.batch == 1 {
            ("/events", serde_json::to_vec(&events[0]).expect("json"))
        } else {
            (
                "/batch_events",
                serde_json::to_vec(&serde_json::json!({ "batch": events })).expect("json"),
            )
        };
        Request { before, path, body }
    }
}

/// Publisher `k`: its channels' events through the HTTP API, `--pipeline` requests in
/// flight at most, until the schedule ends or the run stops.
pub(super) async fn http_publisher(plan: Arc<Plan>, k: usize) {
    let _finished = Finished(&plan.publishers_done);
    let own = owned(&plan, k);
    if own.is_empty() {
        return;
    }
    until_t0_is_set(&plan).await;
    let mut client = ApiClient::new(&plan.target);
    let mut numbering = Numbering {
        own,
        next_seq: vec![0u64; plan.channels.len()],
        rr: 0,
    };
    let mut inflight = Inflight::new();
    let mut i = 0u64;
    let mut done = false;
    loop {
        while !done && inflight.len() < plan.pipeline && !plan.stop.load(Relaxed) {
            let Some(intended) = slot(&plan, i, plan.batch) else {
                done = true;
                break;
            };
            if intended > now_ns() && !inflight.is_empty() {
                break; // collect answers while waiting for the schedule
            }
            sleep_until_ns(intended).await;
            i += 1;
            let request = numbering.request(&plan, intended);
            let stop = if plan.pipeline == 1 {
                post_one(&plan, &mut client, &mut numbering, request).await
            } else {
                send_pipelined(&plan, &mut client, &numbering, request, &mut inflight).await
            };
            if stop {
                return;
            }
        }
        if inflight.is_empty() {
            if done || plan.stop.load(Relaxed) {
                return;
            }
            continue;
        }
        if collect_answer(&plan, &mut client, &mut inflight).await {
            return;
        }
    }
}

/// Sends `request` and waits for its answer (one at a time: a failed request is simply
/// sent again with the same numbers). Returns whether publishing should stop.
async fn post_one(
    plan: &Plan,
    client: &mut ApiClient,
    numbering: &mut Numbering,
    request: Request,
) -> bool {
    match client.post(request.path, &request.body).await {
        Ok(r) if r.status == 200 => {
            for &(c, _) in &request.before {
                plan.published[c].store(numbering.next_seq[c], Relaxed);
            }
            false
        }
        other => {
            for &(c, seq) in &request.before {
                numbering.next_seq[c] = seq;
            }
            numbering.rr -= plan.batch;
            publish_failed(plan, other)
        }
    }
}

/// Sends `request` without waiting for its answer (pipelined), recording what it publishes
/// once it is answered. Returns whether publishing should stop.
async fn send_pipelined(
    plan: &Plan,
    client: &mut ApiClient,
    numbering: &Numbering,
    request: Request,
    inflight: &mut Inflight,
) -> bool {
    if let Err(e) = client.send_post(request.path, &request.body).await {
        publish_failed(plan, Err(e));
        plan.error(
            "pipelined publishing stopped",
            "a request could not be sent".into(),
        );
        return true;
    }
    inflight.push_back(request.before.iter().map(|&(c, _)| (c, 0)).collect());
    // Record what this request publishes once it is answered.
    let last = inflight.back_mut().expect("just pushed");
    for entry in last.iter_mut() {
        entry.1 = numbering.next_seq[entry.0];
    }
    false
}

/// Waits for the oldest pipelined request's answer and counts what it published. Returns
/// whether publishing should stop.
async fn collect_answer(plan: &Plan, client: &mut ApiClient, inflight: &mut Inflight) -> bool {
    let answer = client.recv().await;
    let published = inflight.pop_front().expect("not empty");
    match answer {
        Ok(r) if r.status == 200 => {
            for (c, upto) in published {
                plan.published[c].store(upto, Relaxed);
            }
            false
        }
        other => {
            publish_failed(plan, other);
            plan.error(
                "pipelined publishing stopped",
                "later requests already used the next sequence numbers".into(),
            );
            true
        }
    }
}

/// Counts and records a failed publish; returns whether publishing should stop (nothing has
/// ever succeeded: wrong credentials or URL).
fn publish_failed(plan: &Plan, res: std::io::Result<http::Response>) -> bool {
    plan.publish_errors.fetch_add(1, Relaxed);
    let why = match res {
        Ok(r) => format!("HTTP {}: {}", r.status, String::from_utf8_lossy(&r.body)),
        Err(e) => e.to_string(),
    };
    plan.error("publish failed", why);
    if plan.publish_errors.load(Relaxed) >= 20
        && plan.published.iter().all(|p| p.load(Relaxed) == 0)
    {
        plan.stop.store(true, Relaxed);
        return true;
    }
    false
}

/// Publisher `k` for `--via client-event`: connects, subscribes to its channels (it must be
/// a member to trigger client events) and sends one event per slot of the schedule.
pub(super) async fn client_event_publisher(plan: Arc<Plan>, k: usize) {
    let _finished = Finished(&plan.publishers_done);
    let own = owned(&plan, k);
    let names: Vec<&str> = own.iter().map(|&c| plan.channels[c].as_str()).collect();
    // Publisher k connects to WebSocket URL k mod n, as subscriber k does.
    let mut conn = match connect_subscribed(&plan, k, &names).await {
        Ok((c, _)) => c,
        Err(e) => {
            plan.error(
                "publisher could not connect and subscribe",
                format!("publisher {k}: {e:#}"),
            );
            return;
        }
    };
    plan.ready.fetch_add(1, Relaxed);
    if own.is_empty() {
        return;
    }
    until_t0_is_set(&plan).await;
    let mut next_seq = vec![0u64; plan.channels.len()];
    for i in 0u64.. {
        if plan.stop.load(Relaxed) {
            return;
        }
        let Some(intended) = slot(&plan, i, 1) else {
            return;
        };
        sleep_until_ns(intended).await;
        let c = own[i as usize % own.len()];
        let frame = pusher::client_event(
            &plan.channels[c],
            &pusher::event_data(next_seq[c], intended, plan.payload),
        );
        if let Err(e) = conn.send(&frame).await {
            plan.publish_errors.fetch_add(1, Relaxed);
            plan.error("publish failed", format!("client event connection: {e}"));
            return;
        }
        next_seq[c] += 1;
        plan.published[c].store(next_seq[c], Relaxed);
        // Errors (e.g. rate limits) arrive as messages: read what is there without waiting.
        let mut err = None;
        let _ = tokio::time::timeout(
            Duration::ZERO,
            conn.recv_frames(|op, p| {
                if op == 1 {
                    if let Incoming::Error(e) = pusher::classify(p) {
                        err = Some(String::from_utf8_lossy(e).into_owned());
                    }
                }
            }),
        )
        .await;
        if let Some(e) = err {
            plan.error("server refused a client event", e);
        }
    }
}
