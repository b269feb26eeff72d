//! One harness thread's side of a run: its subscribers (connect, subscribe, count every
//! delivery, answer pings), its publishers, the ticker that reports each second to the
//! coordinator, and the churn that reconnects random subscribers during a soak.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::cli::Via;
use crate::progress::IntervalMeter;
use crate::pusher::{self, Incoming};
use crate::stats::{self, now_ns, SeqTracker};
use crate::wsclient;

use super::accounting::{Counts, ThreadResult};
use super::connection::connect_subscribed;
use super::publishers::{client_event_publisher, http_publisher};
use super::schedule::{connect_at, thread_publishers, thread_subscribers, Plan};

struct SubState {
    channel: usize,
    global: usize,
    tracker: SeqTracker,
    churned: bool,
    task: Option<JoinHandle<()>>,
}

struct ThreadState {
    counts: Counts,
    connections: u64,
    subs: Vec<SubState>,
}

/// Harness thread `me`: runs its subscribers and publishers until the run stops, then
/// hands back what it counted.
pub(super) async fn thread_main(plan: Arc<Plan>, me: usize) -> anyhow::Result<ThreadResult> {
    let mine = thread_subscribers(&plan, me);
    let state = Rc::new(RefCell::new(ThreadState {
        counts: Counts::new(),
        connections: 0,
        subs: mine
            .iter()
            .map(|&g| SubState {
                channel: plan.sub_channel[g],
                global: g,
                tracker: SeqTracker::default(),
                churned: false,
                task: None,
            })
            .collect(),
    }));
    for slot in 0..mine.len() {
        let task = tokio::task::spawn_local(subscriber(plan.clone(), state.clone(), slot, true));
        state.borrow_mut().subs[slot].task = Some(task);
    }
    for k in thread_publishers(&plan, me) {
        match plan.via {
            Via::Http => tokio::task::spawn_local(http_publisher(plan.clone(), k)),
            Via::ClientEvent => tokio::task::spawn_local(client_event_publisher(plan.clone(), k)),
        };
    }
    if let Some(presence) = &plan.presence {
        for p in (me..presence.connections).step_by(plan.threads) {
            tokio::task::spawn_local(super::presence::churner(plan.clone(), p));
        }
    }
    tokio::task::spawn_local(ticker(plan.clone(), state.clone(), me));
    if plan.churn_per_thread > 0.0 {
        tokio::task::spawn_local(churn(plan.clone(), state.clone()));
    }
    while !plan.stop.load(Relaxed) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut st = state.borrow_mut();
    for s in &mut st.subs {
        if let Some(t) = s.task.take() {
            t.abort();
        }
    }
    let hist = std::mem::replace(&mut st.counts.hist, stats::histogram());
    Ok(ThreadResult {
        hist,
        received_in_window: st.counts.received_in_window,
        subs: st
            .subs
            .iter()
            .map(|s| (s.global, s.channel, s.tracker.clone(), s.churned))
            .collect(),
    })
}

/// Sends this thread's interval data to the coordinator once a second from t0.
async fn ticker(plan: Arc<Plan>, state: Rc<RefCell<ThreadState>>, me: usize) {
    while plan.t0() == 0 {
        if plan.stop.load(Relaxed) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut meter = IntervalMeter::new(me, plan.t0());
    for index in 0u64.. {
        let at = plan.t0() + (index + 1) * 1_000_000_000;
        tokio::time::sleep(Duration::from_nanos(at.saturating_sub(now_ns()))).await;
        if plan.stop.load(Relaxed) {
            return;
        }
        let tick = {
            let mut st = state.borrow_mut();
            let hist = std::mem::replace(&mut st.counts.interval, stats::histogram());
            meter.tick(
                index,
                hist,
                std::mem::take(&mut st.counts.received_interval),
                st.connections,
            )
        };
        if plan.ticks.lock().expect("not poisoned").send(tick).is_err() {
            return;
        }
    }
}

/// Disconnects and reconnects random subscribers of this thread (soak).
async fn churn(plan: Arc<Plan>, state: Rc<RefCell<ThreadState>>) {
    let every = Duration::from_secs_f64(1.0 / plan.churn_per_thread);
    while plan.t0() == 0 || now_ns() < plan.t0() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    while now_ns() < plan.publish_end() && !plan.stop.load(Relaxed) {
        tokio::time::sleep(every).await;
        let slot = {
            let mut st = state.borrow_mut();
            if st.subs.is_empty() {
                return;
            }
            let slot = rand::random_range(0..st.subs.len());
            let s = &mut st.subs[slot];
            if let Some(t) = s.task.take() {
                t.abort();
            }
            s.churned = true;
            st.connections = st.connections.saturating_sub(1);
            slot
        };
        let task = tokio::task::spawn_local(subscriber(plan.clone(), state.clone(), slot, false));
        state.borrow_mut().subs[slot].task = Some(task);
    }
}

/// The subscriber in `slot` of this thread: connects (at its set-up time on the `first`
/// connection, at once when churned), then counts deliveries until the connection ends.
async fn subscriber(plan: Arc<Plan>, state: Rc<RefCell<ThreadState>>, slot: usize, first: bool) {
    let (global, channel) = {
        let st = state.borrow();
        (st.subs[slot].global, st.subs[slot].channel)
    };
    if first {
        let at = connect_at(&plan, global);
        tokio::time::sleep(Duration::from_nanos(at.saturating_sub(now_ns()))).await;
    }
    let mut conn = match connect_subscribed(&plan, global, &[&plan.channels[channel]]).await {
        Ok((c, _)) => c,
        Err(e) => {
            plan.error(
                "subscriber could not connect and subscribe",
                format!("subscriber {global}: {e:#}"),
            );
            return;
        }
    };
    state.borrow_mut().connections += 1;
    if first {
        plan.ready.fetch_add(1, Relaxed);
    }
    loop {
        let mut reply: Option<Vec<u8>> = None;
        let mut closed = false;
        let mut now = 0;
        let mut new_unique = 0u64;
        let res = conn
            .recv_frames(|op, payload| match op {
                0x1 => match pusher::classify(payload) {
                    Incoming::Event(data) => {
                        let Some((seq, intended)) = pusher::parse_event_data(data) else {
                            return;
                        };
                        if now == 0 {
                            now = now_ns();
                        }
                        let mut st = state.borrow_mut();
                        let st = &mut *st;
                        let tracker = &mut st.subs[slot].tracker;
                        new_unique += st.counts.delivery(&plan, tracker, seq, intended, now);
                    }
                    Incoming::Ping => reply = Some(pusher::pong()),
                    Incoming::Error(e) => plan.error(
                        "server sent an error",
                        String::from_utf8_lossy(e).into_owned(),
                    ),
                    _ => {}
                },
                0x8 => closed = true,
                0x9 => reply = Some(wsclient::frame(0xA, payload)),
                _ => {}
            })
            .await;
        if new_unique > 0 {
            plan.unique_total.fetch_add(new_unique, Relaxed);
        }
        if let Some(r) = reply {
            let _ = conn.send(&r).await;
        }
        let ended = match res {
            Ok(open) => !open || closed,
            Err(_) => true,
        };
        if ended {
            state.borrow_mut().connections -= 1;
            if !plan.stop.load(Relaxed) {
                plan.error(
                    "subscriber disconnected by the server",
                    format!("subscriber {global}: {res:?}"),
                );
            }
            return;
        }
    }
}
