//! The coordinator: every second each harness thread sends a tick (its interval histogram,
//! deliveries and CPU time); once all threads have reported an interval it is merged, written
//! to the HdrHistogram interval log, and shown on the live progress line.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, SystemTime};

use hdrhistogram::serialization::interval_log::IntervalLogWriterBuilder;
use hdrhistogram::serialization::V2DeflateSerializer;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};

use crate::stats;

/// One harness thread's second.
pub struct Tick {
    pub thread: usize,
    /// Interval number since the start of the run (warm-up included).
    pub index: u64,
    /// Latencies recorded in the interval (measured window only).
    pub hist: Histogram<u64>,
    /// Messages received in the interval.
    pub received: u64,
    /// Open connections on the thread at the end of the interval.
    pub connections: u64,
    /// The thread's CPU time in the interval.
    pub cpu_ns: u64,
    /// The interval's wall time.
    pub wall_ns: u64,
}

/// A harness thread's interval clock: turns what the thread counted in an interval into
/// its [`Tick`], with the thread's CPU and wall time since the previous one.
pub struct IntervalMeter {
    thread: usize,
    cpu: u64,
    last: u64,
}

impl IntervalMeter {
    /// Starts measuring thread `thread` at `start` ([`stats::now_ns`] time).
    pub fn new(thread: usize, start: u64) -> Self {
        Self {
            thread,
            cpu: crate::pool::thread_cpu_ns(),
            last: start,
        }
    }

    /// The tick for interval `index`, ending now.
    pub fn tick(
        &mut self,
        index: u64,
        hist: Histogram<u64>,
        received: u64,
        connections: u64,
    ) -> Tick {
        let (now, now_cpu) = (stats::now_ns(), crate::pool::thread_cpu_ns());
        let tick = Tick {
            thread: self.thread,
            index,
            hist,
            received,
            connections,
            cpu_ns: now_cpu - self.cpu,
            wall_ns: now - self.last,
        };
        (self.cpu, self.last) = (now_cpu, now);
        tick
    }
}

#[derive(Default)]
struct Agg {
    threads: usize,
    hist: Option<Histogram<u64>>,
    received: u64,
    connections: u64,
}

/// One merged second, as kept in the summary.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct IntervalPoint {
    pub second: u64,
    pub received_per_sec: u64,
    pub p99_us: u64,
    pub connections: u64,
}

/// Collects ticks, writes the interval log, drives the progress line.
pub struct Coordinator {
    threads: usize,
    pending: BTreeMap<u64, Agg>,
    log: File,
    serializer: V2DeflateSerializer,
    bar: Option<ProgressBar>,
    series: Vec<IntervalPoint>,
    /// Per thread: CPU and wall time over the measured intervals.
    cpu: Vec<(u64, u64)>,
    /// Intervals from this index on are measured (before: warm-up).
    measured_from: u64,
    total_secs: u64,
    unit: &'static str,
}

impl Coordinator {
    /// Starts the interval log in `out` and, unless `quiet`, a progress line.
    pub fn new(
        out: &Path,
        threads: usize,
        measured_from: u64,
        total_secs: u64,
        quiet: bool,
        unit: &'static str,
    ) -> anyhow::Result<Self> {
        let mut log = File::create(out.join("latency.hlog"))?;
        writeln!(
            log,
            "#[ringcast-loadtest interval log: latencies in microseconds, one interval per second]"
        )?;
        let mut serializer = V2DeflateSerializer::new();
        IntervalLogWriterBuilder::new()
            .with_start_time(SystemTime::now())
            .with_base_time(SystemTime::now())
            .begin_log_with(&mut log, &mut serializer)?;
        writeln!(log, "\"StartTimestamp\",\"Interval_Length\",\"Interval_Max\",\"Interval_Compressed_Histogram\"")?;
        let bar = (!quiet).then(|| {
            let bar = ProgressBar::new_spinner();
            bar.set_style(ProgressStyle::with_template("{spinner} {msg}").expect("valid template"));
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        Ok(Self {
            threads,
            pending: BTreeMap::new(),
            log,
            serializer,
            bar,
            series: Vec::new(),
            cpu: vec![(0, 0); threads],
            measured_from,
            total_secs,
            unit,
        })
    }

    /// Shows a message on the progress line (nothing when quiet).
    pub fn say(&self, msg: &str) {
        if let Some(b) = &self.bar {
            b.set_message(msg.to_string());
        }
    }

    /// Takes one thread's tick.
    pub fn on_tick(&mut self, t: Tick) -> anyhow::Result<()> {
        if t.index >= self.measured_from {
            let c = &mut self.cpu[t.thread];
            c.0 += t.cpu_ns;
            c.1 += t.wall_ns;
        }
        let agg = self.pending.entry(t.index).or_default();
        agg.threads += 1;
        agg.received += t.received;
        agg.connections += t.connections;
        match &mut agg.hist {
            Some(h) => h.add(&t.hist)?,
            None => agg.hist = Some(t.hist),
        }
        while let Some(entry) = self.pending.first_entry() {
            if entry.get().threads < self.threads {
                break;
            }
            let (index, agg) = entry.remove_entry();
            self.complete(index, agg)?;
        }
        Ok(())
    }

    fn complete(&mut self, index: u64, agg: Agg) -> anyhow::Result<()> {
        let hist = agg.hist.unwrap_or_else(stats::histogram);
        IntervalLogWriterBuilder::new()
            .begin_log_with(&mut self.log, &mut self.serializer)?
            .write_histogram(
                &hist,
                Duration::from_secs(index),
                Duration::from_secs(1),
                None,
            )
            .map_err(|e| anyhow::anyhow!("interval log: {e}"))?;
        let p99 = if hist.is_empty() {
            0
        } else {
            hist.value_at_quantile(0.99)
        };
        self.series.push(IntervalPoint {
            second: index,
            received_per_sec: agg.received,
            p99_us: p99,
            connections: agg.connections,
        });
        let phase = if index < self.measured_from {
            "warm-up"
        } else {
            "measuring"
        };
        self.say(&format!(
            "{phase} {}s/{}s | {} connections | {} {}/s | p99 {}",
            index + 1,
            self.total_secs,
            agg.connections,
            human(agg.received as f64),
            self.unit,
            if hist.is_empty() {
                "-".into()
            } else {
                format!("{:.2} ms", p99 as f64 / 1000.0)
            },
        ));
        Ok(())
    }

    /// Ends the progress line; returns the per-second series and each thread's CPU
    /// utilization over the measured window.
    pub fn finish(mut self) -> (Vec<IntervalPoint>, Vec<f64>) {
        let rest = std::mem::take(&mut self.pending);
        for (index, agg) in rest {
            let _ = self.complete(index, agg);
        }
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
        let util = self
            .cpu
            .iter()
            .map(|&(cpu, wall)| {
                if wall == 0 {
                    0.0
                } else {
                    (cpu as f64 / wall as f64 * 1000.0).round() / 1000.0
                }
            })
            .collect();
        (self.series, util)
    }
}

/// `1234567` → `1.23M`.
pub fn human(n: f64) -> String {
    match n {
        n if n >= 1e9 => format!("{:.2}G", n / 1e9),
        n if n >= 1e6 => format!("{:.2}M", n / 1e6),
        n if n >= 1e3 => format!("{:.1}k", n / 1e3),
        n => format!("{n:.0}"),
    }
}
