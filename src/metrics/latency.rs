//! Latency histograms (HDR): recorded worker-locally without atomics or locks, merged into
//! the worker's shared histograms once a second, merged over workers when read.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::sync::Mutex;

use hdrhistogram::Histogram;

use super::stats::WorkerStats;

/// Lowest and highest latencies kept (100 ns to 60 s), at 2 significant digits: about
/// 64 KiB per histogram.
pub(crate) fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(100, 60_000_000_000, 2).expect("valid histogram bounds")
}

/// A worker's local latency histograms: recorded without atomics or locks, merged into
/// [`WorkerStats`] once a second.
pub struct LatencyRecorder {
    publish: RefCell<Histogram<u64>>,
    frame: RefCell<Histogram<u64>>,
}

impl Default for LatencyRecorder {
    fn default() -> Self {
        Self {
            publish: RefCell::new(new_histogram()),
            frame: RefCell::new(new_histogram()),
        }
    }
}

impl LatencyRecorder {
    /// Records publish-to-write latencies: `stamps` published at, written at `now`.
    #[inline]
    pub fn publish(&self, now: u64, stamp: u64) {
        self.publish
            .borrow_mut()
            .saturating_record(now.saturating_sub(stamp).max(100));
    }

    /// Records one client frame's processing time.
    #[inline]
    pub fn frame(&self, received: u64, done: u64) {
        self.frame
            .borrow_mut()
            .saturating_record(done.saturating_sub(received).max(100));
    }

    /// Moves what was recorded into the worker's shared histograms.
    pub fn flush(&self, stats: &WorkerStats) {
        for (local, shared) in [
            (&self.publish, &stats.latency.publish),
            (&self.frame, &stats.latency.frame),
        ] {
            let mut local = local.borrow_mut();
            if local.is_empty() {
                continue;
            }
            let mut shared = shared.lock().unwrap_or_else(|e| e.into_inner());
            let h = shared.get_or_insert_with(new_histogram);
            let _ = h.add(&*local);
            local.reset();
        }
    }
}

/// A worker's histograms as the rest of the process reads them.
#[derive(Debug, Default)]
pub struct SharedLatency {
    /// Publish latency: HTTP publish accepted → frame handed to the kernel, per subscriber.
    pub publish: Mutex<Option<Histogram<u64>>>,
    /// WebSocket frame received → processed.
    pub frame: Mutex<Option<Histogram<u64>>>,
}

/// Both latencies, merged over every worker.
pub fn merged(workers: &[std::sync::Arc<WorkerStats>]) -> (Histogram<u64>, Histogram<u64>) {
    let mut publish = new_histogram();
    let mut frame = new_histogram();
    for s in workers {
        for (from, into) in [
            (&s.latency.publish, &mut publish),
            (&s.latency.frame, &mut frame),
        ] {
            if let Some(h) = from.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
                let _ = into.add(h);
            }
        }
    }
    (publish, frame)
}

/// A `.hgrm` percentile distribution (HdrHistogram's text layout), values in milliseconds.
pub fn hgrm(h: &Histogram<u64>) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    if !h.is_empty() {
        let mut total = 0;
        for v in h.iter_quantiles(2) {
            total += v.count_since_last_iteration();
            let q = v.quantile_iterated_to();
            let inverse = if q < 1.0 {
                format!("{:>14.2}", 1.0 / (1.0 - q))
            } else {
                format!("{:>14}", "")
            };
            let _ = writeln!(
                out,
                "{:>12.3} {:>14.12} {:>10} {inverse}",
                v.value_iterated_to() as f64 / 1e6,
                q,
                total,
            );
        }
    }
    let _ = writeln!(
        out,
        "#[Mean    = {:>12.3}, StdDeviation   = {:>12.3}]",
        h.mean() / 1e6,
        h.stdev() / 1e6
    );
    let _ = writeln!(
        out,
        "#[Max     = {:>12.3}, Total count    = {:>12}]",
        h.max() as f64 / 1e6,
        h.len()
    );
    let _ = writeln!(
        out,
        "#[Buckets = {:>12}, SubBuckets     = {:>12}]",
        h.buckets(),
        h.distinct_values()
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hgrm_lists_percentiles_in_milliseconds() {
        let mut h = new_histogram();
        for ms in 1..=100u64 {
            h.record(ms * 1_000_000).unwrap();
        }
        let text = hgrm(&h);
        assert!(
            text.starts_with("       Value     Percentile TotalCount"),
            "{text}"
        );
        let last = text
            .lines()
            .rfind(|l| !l.starts_with('#') && !l.trim().is_empty())
            .unwrap();
        let cols: Vec<&str> = last.split_whitespace().collect();
        let max: f64 = cols[0].parse().unwrap();
        assert!((99.0..=101.0).contains(&max), "{last}");
        assert_eq!(cols[1].parse::<f64>().unwrap(), 1.0);
        assert_eq!(cols[2], "100");
        assert!(text.contains("Total count    =          100"), "{text}");
    }
}
