//! The coordinator's side of a run, after the threads start: waiting for set-up (every
//! connection subscribed), then the run itself (the threads' ticks, server and harness
//! samples at the measured window's ends, server RSS over time for a soak) and the drain,
//! until every delivery is in or the drain times out.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::bail;

use crate::cli::{FanoutArgs, Via};
use crate::machine::{self, ProcSample};
use crate::pool;
use crate::progress::{Coordinator, Tick};
use crate::stats::now_ns;

use super::accounting::{expected_deliveries, ThreadResult};
use super::schedule::Plan;
use super::Soak;

/// The harness threads.
pub(super) type Threads = Vec<JoinHandle<anyhow::Result<ThreadResult>>>;

/// Waits until every subscriber (and client-event publisher) has connected and subscribed;
/// on an error or a timeout, stops and joins the threads and fails.
pub(super) fn wait_for_set_up(
    plan: &Plan,
    args: &FanoutArgs,
    coord: &Coordinator,
    handles: Threads,
) -> anyhow::Result<Threads> {
    let needed = args.subscribers
        + if args.via == Via::ClientEvent {
            args.publishers
        } else {
            0
        };
    let setup_deadline =
        Instant::now() + Duration::from_secs_f64(needed as f64 / args.connect_rate.max(1.0) + 30.0);
    loop {
        let ready = plan.ready.load(Relaxed);
        if ready >= needed {
            return Ok(handles);
        }
        if !plan.errors.lock().expect("not poisoned").is_empty() || Instant::now() > setup_deadline
        {
            plan.stop.store(true, Relaxed);
            let _ = pool::join(handles);
            let errors = plan.errors.lock().expect("not poisoned").clone();
            bail!("set-up failed ({ready} of {needed} connections subscribed): {errors:?}");
        }
        coord.say(&format!("connecting {ready}/{needed}"));
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What the coordinator sampled during the run.
pub(super) struct Samples {
    /// The server at the start and at the end of the measured window (`None` until
    /// reached; `Some(None)` when it could not be read).
    pub server_start: Option<Option<ProcSample>>,
    pub server_end: Option<Option<ProcSample>>,
    /// This process's CPU time at the start and at the end of the measured window.
    pub cpu_start: u64,
    pub cpu_end: u64,
    /// Server RSS over time (soak; summed over the pids): `[seconds since t0, KiB]`.
    pub rss: Vec<[f64; 2]>,
}

impl Samples {
    /// Samples the server (the sum of `pids`) and this process once `now` reaches each end
    /// of the measured window.
    fn window_ends(&mut self, plan: &Plan, pids: &[u32], now: u64) {
        if self.server_start.is_none() && now >= plan.measure_start() {
            self.server_start = Some(machine::sample_sum(pids));
            self.cpu_start = pool::process_cpu_ns();
        }
        if self.server_end.is_none() && now >= plan.publish_end() {
            self.server_end = Some(machine::sample_sum(pids));
            self.cpu_end = pool::process_cpu_ns();
        }
    }
}

/// From t0 (already set) until publishing and the drain are over: passes the threads'
/// ticks to the coordinator and samples the server (the sum of `pids`: one per node).
pub(super) fn publish_and_measure(
    plan: &Plan,
    pids: &[u32],
    soak: Option<Soak>,
    drain: Duration,
    tick_rx: &mpsc::Receiver<Tick>,
    coord: &mut Coordinator,
) -> anyhow::Result<Samples> {
    let mut samples = Samples {
        server_start: None,
        server_end: None,
        cpu_start: 0,
        cpu_end: 0,
        rss: Vec::new(),
    };
    let mut next_sample = plan.t0();
    let sample_every = soak.map(|s| s.sample_every.as_nanos() as u64);
    let drain_until = plan.publish_end() + drain.as_nanos() as u64;
    loop {
        match tick_rx.recv_timeout(Duration::from_millis(20)) {
            Ok(t) => coord.on_tick(t)?,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        let now = now_ns();
        samples.window_ends(plan, pids, now);
        if let Some(every) = sample_every.filter(|_| !pids.is_empty()) {
            if now >= next_sample {
                if let Some(s) = machine::sample_sum(pids) {
                    samples.rss.push([
                        (now.saturating_sub(plan.t0())) as f64 / 1e9,
                        s.rss_kib as f64,
                    ]);
                }
                next_sample += every;
            }
        }
        if now >= plan.publish_end() {
            // Only once every publisher has counted its last answer is `expected` final:
            // before that, deliveries of the last request may outrun its acknowledgement.
            let final_counts = plan.publishers_done.load(Relaxed) >= plan.publishers;
            let expected = expected_deliveries(plan);
            let done =
                soak.is_none() && final_counts && plan.unique_total.load(Relaxed) >= expected;
            if done || now >= drain_until || plan.stop.load(Relaxed) {
                break;
            }
            coord.say(&format!(
                "draining: {}/{} delivered",
                plan.unique_total.load(Relaxed),
                expected
            ));
        }
    }
    Ok(samples)
}
