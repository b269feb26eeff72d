//! Counting deliveries: latencies and counts as each event arrives, then, after the run,
//! every subscriber's losses, duplicates and reorderings against what was published
//! (`subscribers.csv`), the deliveries the drain waits for, and the server's RSS slope.

use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;

use hdrhistogram::Histogram;

use crate::stats::{self, latency_us, record, SeqTracker};

use super::schedule::Plan;

/// One harness thread's latencies and delivery counts.
pub(super) struct Counts {
    /// Latencies of events meant for the measured window.
    pub hist: Histogram<u64>,
    /// Latencies since the last tick.
    pub interval: Histogram<u64>,
    pub received_interval: u64,
    pub received_in_window: u64,
}

impl Counts {
    pub fn new() -> Counts {
        Counts {
            hist: stats::histogram(),
            interval: stats::histogram(),
            received_interval: 0,
            received_in_window: 0,
        }
    }

    /// Counts the delivery of `seq`, meant to be published at `intended` and received at
    /// `now`, to the subscriber `tracker` follows; returns 1 if it was new (not a
    /// duplicate), else 0.
    pub fn delivery(
        &mut self,
        plan: &Plan,
        tracker: &mut SeqTracker,
        seq: u64,
        intended: u64,
        now: u64,
    ) -> u64 {
        let new_unique = u64::from(tracker.record(seq));
        self.received_interval += 1;
        let lat = latency_us(intended, now);
        record(&mut self.interval, lat);
        let t0 = plan.t0();
        if intended >= t0 + plan.warmup_ns && intended < t0 + plan.warmup_ns + plan.duration_ns {
            record(&mut self.hist, lat);
            self.received_in_window += 1;
        }
        new_unique
    }
}

/// What one harness thread counted.
pub(super) struct ThreadResult {
    pub hist: Histogram<u64>,
    pub received_in_window: u64,
    /// Per subscriber: (global index, channel, its sequence numbers, churned).
    pub subs: Vec<(usize, usize, SeqTracker, bool)>,
}

/// Every thread's counts together.
pub(super) struct Tally {
    /// Latencies over the measured window.
    pub hist: Histogram<u64>,
    pub received_in_window: u64,
    /// Per channel: events published and acknowledged.
    pub published: Vec<u64>,
    /// Subscribers, churned or not.
    pub subscribers: usize,
    /// Losses, of subscribers that stayed connected: events missing although a later one
    /// arrived.
    pub lost: u64,
    /// Events of subscribers that stayed connected that had not arrived when the drain
    /// ended, after the last one that did (the server was behind).
    pub late: u64,
    pub dup: u64,
    pub ooo: u64,
    /// Subscribers that stayed connected and lost messages.
    pub with_loss: u64,
    /// Distinct deliveries of published events.
    pub unique: u64,
    /// Deliveries of published events expected.
    pub expected: u64,
    /// Subscribers that stayed connected throughout.
    pub stayed: u64,
}

/// Merges the threads' counts, accounts every subscriber's deliveries against what was
/// published, and writes them to `subscribers.csv` in `out`.
pub(super) fn tally(plan: &Plan, results: Vec<ThreadResult>, out: &Path) -> anyhow::Result<Tally> {
    let mut hist = stats::histogram();
    let mut received_in_window = 0;
    let mut subs = Vec::new();
    for r in results {
        hist.add(&r.hist)?;
        received_in_window += r.received_in_window;
        subs.extend(r.subs);
    }
    subs.sort_by_key(|s| s.0);
    let published: Vec<u64> = plan.published.iter().map(|p| p.load(Relaxed)).collect();
    let (mut lost, mut dup, mut ooo, mut with_loss, mut unique, mut expected, mut stayed) =
        (0u64, 0u64, 0u64, 0u64, 0u64, 0u64, 0u64);
    let mut late = 0u64;
    let mut csv = String::from(
        "subscriber,channel,churned,published,received,lost,late,duplicates,out_of_order\n",
    );
    for (global, ch, tracker, churned) in &subs {
        let p = published[*ch];
        let t = tracker.late(p);
        let l = tracker.lost(p) - t;
        csv.push_str(&format!(
            "{global},{},{churned},{p},{},{l},{t},{},{}\n",
            plan.channels[*ch], tracker.unique, tracker.duplicates, tracker.out_of_order
        ));
        dup += tracker.duplicates;
        ooo += tracker.out_of_order;
        unique += tracker.received_below(p);
        expected += p;
        if !churned {
            stayed += 1;
            lost += l;
            late += t;
            with_loss += u64::from(l > 0);
        }
    }
    std::fs::write(out.join("subscribers.csv"), csv)?;
    Ok(Tally {
        hist,
        received_in_window,
        published,
        subscribers: subs.len(),
        lost,
        late,
        dup,
        ooo,
        with_loss,
        unique,
        expected,
        stayed,
    })
}

/// Deliveries the subscribers should have seen of what has been published so far.
pub(super) fn expected_deliveries(plan: &Plan) -> u64 {
    plan.sub_channel
        .iter()
        .map(|&c| plan.published[c].load(Relaxed))
        .sum()
}

/// Least-squares slope of RSS over time, KiB per minute.
pub(super) fn rss_growth_kib_per_min(samples: &[[f64; 2]]) -> Option<f64> {
    if samples.len() < 3 {
        return None;
    }
    let n = samples.len() as f64;
    let (mx, my) = (
        samples.iter().map(|s| s[0]).sum::<f64>() / n,
        samples.iter().map(|s| s[1]).sum::<f64>() / n,
    );
    let (num, den) = samples.iter().fold((0.0, 0.0), |(a, b), s| {
        (a + (s[0] - mx) * (s[1] - my), b + (s[0] - mx).powi(2))
    });
    (den > 0.0).then(|| num / den * 60.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rss_slope() {
        let flat: Vec<[f64; 2]> = (0..10).map(|i| [i as f64 * 10.0, 5000.0]).collect();
        assert_eq!(rss_growth_kib_per_min(&flat), Some(0.0));
        let growing: Vec<[f64; 2]> = (0..10)
            .map(|i| [i as f64 * 60.0, 5000.0 + i as f64 * 100.0])
            .collect();
        assert!((rss_growth_kib_per_min(&growing).unwrap() - 100.0).abs() < 1e-9);
    }
}
