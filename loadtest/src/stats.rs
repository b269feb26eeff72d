//! What is counted: latencies (HdrHistogram, microseconds) measured from the *intended*
//! send time, and per-subscriber delivery accounting (lost, duplicated, out of order).

use std::sync::OnceLock;
use std::time::Instant;

use hdrhistogram::Histogram;

/// The harness's clock: nanoseconds since the first call, shared by every thread of the
/// process (publishers stamp events with it, receivers read it).
pub fn now_ns() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    BASE.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// A latency histogram: 1 µs to 1 hour, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds")
}

/// Latency in microseconds from the intended send time to the receive time.
///
/// Measuring from when the event *should* have been sent by the constant-rate schedule,
/// not from when the publisher managed to send it, is the coordinated-omission correction:
/// a stalled server also delays the publisher, and those delayed sends must count as slow,
/// not vanish (wrk2's approach).
pub fn latency_us(intended_ns: u64, received_ns: u64) -> u64 {
    (received_ns.saturating_sub(intended_ns) / 1000).max(1)
}

/// Records into `h`, clamping outliers to the histogram's range instead of dropping them.
pub fn record(h: &mut Histogram<u64>, value_us: u64) {
    let v = value_us.clamp(h.low(), h.high());
    h.record(v).expect("clamped into range");
}

/// Sequence accounting for one subscriber of one channel.
#[derive(Debug, Default, Clone)]
pub struct SeqTracker {
    seen: Vec<u64>,
    highest: Option<u64>,
    /// Distinct sequence numbers received.
    pub unique: u64,
    /// Messages received more than once.
    pub duplicates: u64,
    /// Messages received after one with a higher sequence number.
    pub out_of_order: u64,
}

impl SeqTracker {
    /// Notes the arrival of `seq`; returns whether it is the first arrival of that number.
    pub fn record(&mut self, seq: u64) -> bool {
        let (word, bit) = ((seq / 64) as usize, seq % 64);
        if word >= self.seen.len() {
            // A bogus huge sequence number must not make the harness allocate without bound.
            if word > (1 << 24) {
                self.duplicates += 1;
                return false;
            }
            self.seen.resize(word + 1, 0);
        }
        if self.seen[word] & (1 << bit) != 0 {
            self.duplicates += 1;
            return false;
        }
        self.seen[word] |= 1 << bit;
        self.unique += 1;
        match self.highest {
            Some(h) if seq < h => self.out_of_order += 1,
            _ => self.highest = Some(seq),
        }
        true
    }

    /// Of the sequence numbers `0..published`, how many never arrived.
    pub fn lost(&self, published: u64) -> u64 {
        published - self.received_below(published)
    }

    /// Of [`SeqTracker::lost`], those after the last one that arrived: still on their way
    /// when the run ended (a server behind its load), rather than skipped.
    pub fn late(&self, published: u64) -> u64 {
        let arrived_up_to = self.highest.map_or(0, |h| (h + 1).min(published));
        published
            - arrived_up_to
            - (self.received_below(published) - self.received_below(arrived_up_to))
    }

    /// Distinct sequence numbers below `limit` that arrived.
    pub fn received_below(&self, limit: u64) -> u64 {
        let full = (limit / 64) as usize;
        let mut n: u64 = self
            .seen
            .iter()
            .take(full)
            .map(|w| w.count_ones() as u64)
            .sum();
        if let Some(w) = self.seen.get(full) {
            let rem = limit % 64;
            if rem > 0 {
                n += (w & ((1u64 << rem) - 1)).count_ones() as u64;
            }
        }
        n
    }
}

/// Latency percentiles, in microseconds.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct Percentiles {
    pub count: u64,
    pub min_us: u64,
    pub mean_us: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub p9999_us: u64,
    pub max_us: u64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        Self {
            count: h.len(),
            min_us: h.min(),
            mean_us: (h.mean() * 10.0).round() / 10.0,
            p50_us: h.value_at_quantile(0.5),
            p90_us: h.value_at_quantile(0.9),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            p9999_us: h.value_at_quantile(0.9999),
            max_us: h.max(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_missing_after_the_last_arrival_are_late_not_lost() {
        let mut t = SeqTracker::default();
        for seq in [0, 1, 3, 4] {
            t.record(seq);
        }
        assert_eq!(t.lost(7), 3, "2, 5 and 6 never arrived");
        assert_eq!(t.late(7), 2, "5 and 6 were still on their way");
        assert_eq!(t.late(4), 0, "an arrival beyond what was acknowledged");
        assert_eq!(SeqTracker::default().late(3), 3);
    }

    #[test]
    fn in_order_delivery_has_nothing_to_report() {
        let mut t = SeqTracker::default();
        (0..1000).for_each(|s| assert!(t.record(s)));
        assert_eq!(
            (t.unique, t.duplicates, t.out_of_order, t.lost(1000)),
            (1000, 0, 0, 0)
        );
    }

    #[test]
    fn loss_duplicates_and_reordering_are_counted_separately() {
        let mut t = SeqTracker::default();
        for s in [0, 1, 3, 2, 2, 5, 7, 6, 7, 130] {
            let _ = t.record(s);
        }
        assert_eq!(t.unique, 8); // 0 1 2 3 5 6 7 130
        assert_eq!(t.duplicates, 2); // the second 2 and 7
        assert_eq!(t.out_of_order, 2); // 2 after 3, 6 after 7
        assert_eq!(t.lost(8), 1); // 4
        assert_eq!(t.lost(131), 131 - 8);
        // Arrivals beyond what was published do not hide losses.
        assert_eq!(t.lost(5), 1);
    }

    #[test]
    fn coordinated_omission_counts_the_publishers_delay() {
        // Scheduled at t=1 ms, sent late at t=51 ms (the server stalled the publisher),
        // received at t=52 ms: the latency is 51 ms, not 1 ms.
        assert_eq!(latency_us(1_000_000, 52_000_000), 51_000);
        // A clock that reads earlier than the schedule never goes negative.
        assert_eq!(latency_us(5_000, 4_000), 1);
    }

    #[test]
    fn histograms_merge_into_the_same_percentiles() {
        let (mut a, mut b, mut all) = (histogram(), histogram(), histogram());
        for v in 1..=1000u64 {
            record(if v % 3 == 0 { &mut a } else { &mut b }, v * 10);
            record(&mut all, v * 10);
        }
        a.add(&b).unwrap();
        assert_eq!(Percentiles::of(&a), Percentiles::of(&all));
        assert_eq!(a.len(), 1000);
        assert_eq!(Percentiles::of(&a).p50_us, all.value_at_quantile(0.5));
    }

    #[test]
    fn out_of_range_values_are_clamped_not_lost() {
        let mut h = histogram();
        record(&mut h, 0);
        record(&mut h, u64::MAX);
        assert_eq!(h.len(), 2);
    }
}
