//! The plan every thread shares and its timing: [`Plan`] (what to run, the clock the run
//! follows, the counters the coordinator watches), the spreading of subscribers over
//! channels and threads and of channels over publishers, and the constant-rate publishing
//! schedule.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{mpsc, Mutex};
use std::time::Duration;

use crate::cli::{Distribution, FanoutArgs, Target, Via};
use crate::progress::Tick;
use crate::stats::now_ns;

use super::Soak;

/// Most error examples kept per kind.
const MAX_EXAMPLES: usize = 5;

/// State shared by the coordinator and every harness thread.
pub(super) struct Plan {
    pub target: Target,
    pub channels: Vec<String>,
    /// Subscriber → channel.
    pub sub_channel: Vec<usize>,
    pub threads: usize,
    pub source_ips: Option<Vec<IpAddr>>,
    pub payload: usize,
    pub rate: f64,
    pub batch: usize,
    pub publishers: usize,
    pub pipeline: usize,
    pub via: Via,
    pub connect_interval_ns: u64,
    pub setup_start_ns: u64,
    /// Publishing starts here (0 until the coordinator sets it).
    pub t0_ns: AtomicU64,
    pub warmup_ns: u64,
    pub duration_ns: u64,
    /// Subscribers subscribed (publishers subscribed too, for client events).
    pub ready: AtomicUsize,
    pub stop: AtomicBool,
    /// Distinct deliveries so far (to know when the drain is complete).
    pub unique_total: AtomicU64,
    /// Publishers that have finished (their last answer counted in `published`).
    pub publishers_done: AtomicUsize,
    /// Per channel: events published and acknowledged (sequence numbers 0..n).
    pub published: Vec<AtomicU64>,
    pub publish_errors: AtomicU64,
    pub errors: Mutex<BTreeMap<String, (u64, Vec<String>)>>,
    pub churn_per_thread: f64,
    /// Soak: presence connections joining and leaving.
    pub presence: Option<PresencePlan>,
    pub ticks: Mutex<mpsc::Sender<Tick>>,
}

/// Soak: the presence connections' channels and how they fared.
pub(super) struct PresencePlan {
    pub connections: usize,
    pub channels: Vec<String>,
    /// Mean time a connection stays a member.
    pub hold: Duration,
    pub joins: AtomicU64,
    pub leaves: AtomicU64,
}

impl Plan {
    /// The plan for `args`, set-up starting now.
    pub fn new(
        args: &FanoutArgs,
        soak: Option<Soak>,
        target: Target,
        source_ips: Option<Vec<IpAddr>>,
        channels: Vec<String>,
        run: &str,
        ticks: mpsc::Sender<Tick>,
    ) -> Plan {
        let common = &args.common;
        let threads = common.threads;
        Plan {
            target,
            sub_channel: assign(args.subscribers, args.channels, args.distribution),
            channels,
            threads,
            source_ips,
            payload: args.payload.max(24),
            rate: args.rate,
            batch: args.batch,
            publishers: args.publishers,
            pipeline: args.pipeline.max(1),
            via: args.via,
            connect_interval_ns: (1e9 / args.connect_rate.max(1.0)) as u64,
            setup_start_ns: now_ns(),
            t0_ns: AtomicU64::new(0),
            warmup_ns: common.warmup.as_nanos() as u64,
            duration_ns: common.duration.as_nanos() as u64,
            ready: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            unique_total: AtomicU64::new(0),
            publishers_done: AtomicUsize::new(0),
            published: (0..args.channels).map(|_| AtomicU64::new(0)).collect(),
            publish_errors: AtomicU64::new(0),
            errors: Mutex::new(BTreeMap::new()),
            churn_per_thread: soak.map_or(0.0, |s| s.churn_per_sec / threads as f64),
            presence: soak.filter(|s| s.presence > 0).map(|s| PresencePlan {
                connections: s.presence,
                channels: (0..s.presence_channels.max(1))
                    .map(|j| super::presence::channel_name(run, j))
                    .collect(),
                hold: s.presence_hold,
                joins: AtomicU64::new(0),
                leaves: AtomicU64::new(0),
            }),
            ticks: Mutex::new(ticks),
        }
    }

    pub fn t0(&self) -> u64 {
        self.t0_ns.load(Relaxed)
    }
    pub fn measure_start(&self) -> u64 {
        self.t0() + self.warmup_ns
    }
    pub fn publish_end(&self) -> u64 {
        self.t0() + self.warmup_ns + self.duration_ns
    }
    pub fn error(&self, kind: &str, example: String) {
        let mut errors = self.errors.lock().expect("not poisoned");
        let e = errors.entry(kind.to_string()).or_default();
        e.0 += 1;
        if e.1.len() < MAX_EXAMPLES {
            e.1.push(example);
        }
    }
}

/// Spreads `n` subscribers over `c` channels.
fn assign(n: usize, c: usize, dist: Distribution) -> Vec<usize> {
    match dist {
        Distribution::Uniform => (0..n).map(|i| i % c).collect(),
        Distribution::Zipf => {
            let weights: Vec<f64> = (0..c).map(|k| 1.0 / (k as f64 + 1.0)).collect();
            let total: f64 = weights.iter().sum();
            // Largest remainder, at least one subscriber per channel while there are enough.
            let mut counts: Vec<usize> = weights
                .iter()
                .map(|w| (w / total * n as f64).floor() as usize)
                .collect();
            let mut left = n - counts.iter().sum::<usize>();
            let mut k = 0;
            while left > 0 {
                counts[k % c] += 1;
                left -= 1;
                k += 1;
            }
            counts
                .iter()
                .enumerate()
                .flat_map(|(ch, &m)| std::iter::repeat_n(ch, m))
                .collect()
        }
    }
}

/// When subscriber `global` connects during set-up: connections are spread at
/// `--connect-rate`.
pub(super) fn connect_at(plan: &Plan, global: usize) -> u64 {
    plan.setup_start_ns + global as u64 * plan.connect_interval_ns
}

/// The subscribers harness thread `me` runs.
pub(super) fn thread_subscribers(plan: &Plan, me: usize) -> Vec<usize> {
    (me..plan.sub_channel.len()).step_by(plan.threads).collect()
}

/// The publishers harness thread `me` runs.
pub(super) fn thread_publishers(plan: &Plan, me: usize) -> impl Iterator<Item = usize> {
    (me..plan.publishers).step_by(plan.threads)
}

/// The channels publisher `k` owns.
pub(super) fn owned(plan: &Plan, k: usize) -> Vec<usize> {
    (k..plan.channels.len()).step_by(plan.publishers).collect()
}

/// Waits until `at_ns` on the harness clock.
pub(super) async fn sleep_until_ns(at_ns: u64) {
    let now = now_ns();
    if at_ns > now {
        tokio::time::sleep(Duration::from_nanos(at_ns - now)).await;
    }
}

/// Waits until the coordinator has set t0 (publishers start then).
pub(super) async fn until_t0_is_set(plan: &Plan) {
    while plan.t0() == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The schedule of one publisher: when its i-th send should happen (None: the run is over).
pub(super) fn slot(plan: &Plan, i: u64, events_per_send: usize) -> Option<u64> {
    let end = plan.publish_end();
    if plan.rate <= 0.0 {
        let now = now_ns();
        return (now < end).then_some(now);
    }
    let per_publisher = plan.rate / plan.publishers as f64;
    let at = plan.t0() + (i as f64 * events_per_send as f64 / per_publisher * 1e9) as u64;
    (at < end).then_some(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assignments_cover_every_channel() {
        let u = assign(10, 3, Distribution::Uniform);
        assert_eq!(u, vec![0, 1, 2, 0, 1, 2, 0, 1, 2, 0]);
        let z = assign(100, 10, Distribution::Zipf);
        assert_eq!(z.len(), 100);
        let first = z.iter().filter(|&&c| c == 0).count();
        let last = z.iter().filter(|&&c| c == 9).count();
        assert!(first > 3 * last, "{first} vs {last}");
        assert!((0..10).all(|c| z.contains(&c)));
    }
}
