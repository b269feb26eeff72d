//! The Prometheus exposition: every counter, gauge and histogram, read from [`Telemetry`]
//! at scrape time and encoded with `prometheus-client` in the text format.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use hdrhistogram::Histogram;
use prometheus_client::collector::Collector as PromCollector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::stats::{
    kind_label, kind_slot, Endpoint, Limited, Rejected, WorkerStats, CLOSE_CODES, KINDS, STATUSES,
};
use super::{heartbeat_age, latency, open_fds, resident_memory_bytes, Telemetry};

/// Bucket bounds of the latency histograms, in seconds.
const LATENCY_BUCKETS: [f64; 18] = [
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

#[derive(Debug)]
struct LatencyHistogram(Histogram<u64>);

impl EncodeMetric for LatencyHistogram {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::MetricEncoder,
    ) -> Result<(), std::fmt::Error> {
        let h = &self.0;
        // Per-bucket counts; the encoder accumulates them.
        let mut buckets = Vec::with_capacity(LATENCY_BUCKETS.len() + 1);
        let mut counted = 0;
        for le in LATENCY_BUCKETS {
            let cumulative = if h.is_empty() {
                0
            } else {
                h.count_between(0, (le * 1e9) as u64).min(h.len())
            };
            buckets.push((le, cumulative.saturating_sub(counted)));
            counted = counted.max(cumulative);
        }
        buckets.push((f64::INFINITY, h.len().saturating_sub(counted)));
        let sum = h.mean() * h.len() as f64 / 1e9;
        encoder.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
            sum,
            h.len(),
            &buckets,
            None,
        )
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// The exposition of a [`Telemetry`], read at scrape time.
#[derive(Debug)]
struct Collector(Arc<Telemetry>);

type Labels = Vec<(&'static str, String)>;

fn family<M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    rows: impl IntoIterator<Item = (Labels, M)>,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
    for (labels, m) in rows {
        let e = metric.encode_family(&labels)?;
        m.encode(e)?;
    }
    Ok(())
}

fn worker_label(i: usize) -> (&'static str, String) {
    ("worker", i.to_string())
}

impl PromCollector for Collector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let shared = &*self.0;
        let stats = &shared.workers;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);

        family(
            &mut encoder,
            "ringcast_info",
            "Build and runtime information (always 1).",
            MetricType::Gauge,
            [(
                vec![
                    ("version", env!("CARGO_PKG_VERSION").to_string()),
                    ("backend", shared.backend.to_string()),
                    ("workers", stats.len().to_string()),
                ],
                ConstGauge::new(1i64),
            )],
        )?;
        family(
            &mut encoder,
            "ringcast_uptime_seconds",
            "Seconds since the server started.",
            MetricType::Gauge,
            [(
                vec![],
                ConstGauge::new(shared.started.elapsed().as_secs_f64()),
            )],
        )?;
        if let Some(rss) = resident_memory_bytes() {
            family(
                &mut encoder,
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                MetricType::Gauge,
                [(vec![], ConstGauge::new(rss as i64))],
            )?;
        }
        if let Some((open, max)) = open_fds() {
            family(
                &mut encoder,
                "process_open_fds",
                "Number of open file descriptors.",
                MetricType::Gauge,
                [(vec![], ConstGauge::new(open as i64))],
            )?;
            family(
                &mut encoder,
                "process_max_fds",
                "Maximum number of open file descriptors.",
                MetricType::Gauge,
                [(vec![], ConstGauge::new(max as i64))],
            )?;
        }
        family(
            &mut encoder,
            "ringcast_io_fallback",
            "1 when io_uring was wanted (--io auto) but is unavailable, so the server runs on epoll.",
            MetricType::Gauge,
            [(vec![], ConstGauge::new(i64::from(shared.io_fallback)))],
        )?;
        if shared.connections_limit > 0 {
            family(
                &mut encoder,
                "ringcast_connections_limit",
                "Concurrent WebSocket connections the server admits (--max-connections, resolved).",
                MetricType::Gauge,
                [(vec![], ConstGauge::new(shared.connections_limit as i64))],
            )?;
        }

        type Getter = fn(&WorkerStats) -> &AtomicU64;
        let per_worker: [(&str, &str, bool, Getter); 15] = [
            (
                "ringcast_connections",
                "Open WebSocket connections.",
                false,
                |s| &s.connections,
            ),
            (
                "ringcast_connections_opened_total",
                "WebSocket connections accepted.",
                true,
                |s| &s.connections_total,
            ),
            (
                "ringcast_http_connections",
                "Open HTTP connections not upgraded.",
                false,
                |s| &s.http_connections,
            ),
            (
                "ringcast_messages_received_total",
                "WebSocket messages received from clients.",
                true,
                |s| &s.messages_received,
            ),
            (
                "ringcast_received_bytes_total",
                "Bytes received on WebSocket connections.",
                true,
                |s| &s.bytes_received,
            ),
            (
                "ringcast_messages_sent_total",
                "WebSocket frames written to clients.",
                true,
                |s| &s.messages_sent,
            ),
            (
                "ringcast_socket_writes_total",
                "Writes issued to WebSocket connections, each carrying one or more frames (see --write-delay-us).",
                true,
                |s| &s.socket_writes,
            ),
            (
                "ringcast_sent_bytes_total",
                "Bytes written to WebSocket connections.",
                true,
                |s| &s.bytes_sent,
            ),
            (
                "ringcast_frames_delivered_total",
                "Event frames queued to subscribers.",
                true,
                |s| &s.frames_delivered,
            ),
            (
                "ringcast_events_published_total",
                "Events published, per channel.",
                true,
                |s| &s.events_published,
            ),
            (
                "ringcast_slow_consumer_disconnects_total",
                "Connections closed with 4100 for not reading fast enough.",
                true,
                |s| &s.slow_consumer_disconnects,
            ),
            (
                "ringcast_outbound_queue_bytes",
                "Bytes waiting in outbound queues (sampled every second).",
                false,
                |s| &s.outbound_queue_bytes,
            ),
            (
                "ringcast_inbound_buffer_bytes",
                "Receive buffer bytes held for client messages still arriving.",
                false,
                |s| &s.inbound_buffer_bytes,
            ),
            (
                "ringcast_inbox_full_total",
                "Publishes refused because a worker inbox stayed full.",
                true,
                |s| &s.inbox_full,
            ),
            (
                "ringcast_client_events_total",
                "Client events accepted and relayed.",
                true,
                |s| &s.client_events,
            ),
        ];
        for (name, help, counter, get) in per_worker {
            if counter {
                family(
                    &mut encoder,
                    name.trim_end_matches("_total"),
                    help,
                    MetricType::Counter,
                    stats
                        .iter()
                        .enumerate()
                        .map(|(i, s)| (vec![worker_label(i)], ConstCounter::new(load(get(s))))),
                )?;
            } else {
                family(
                    &mut encoder,
                    name,
                    help,
                    MetricType::Gauge,
                    stats.iter().enumerate().map(|(i, s)| {
                        (vec![worker_label(i)], ConstGauge::new(load(get(s)) as i64))
                    }),
                )?;
            }
        }

        let mut closed = Vec::new();
        for (i, s) in stats.iter().enumerate() {
            for (slot, c) in s.closed.iter().enumerate() {
                let code = match slot {
                    n if n < CLOSE_CODES.len() => CLOSE_CODES[n].to_string(),
                    n if n == CLOSE_CODES.len() => "other".to_string(),
                    _ => "none".to_string(),
                };
                closed.push((
                    vec![worker_label(i), ("code", code)],
                    ConstCounter::new(load(c)),
                ));
            }
        }
        family(
            &mut encoder,
            "ringcast_connections_closed",
            "WebSocket connections ended, by the close code sent or answered (none: no closing handshake).",
            MetricType::Counter,
            closed,
        )?;

        let mut rejected = Vec::new();
        for (i, s) in stats.iter().enumerate() {
            for r in Rejected::ALL {
                rejected.push((
                    vec![worker_label(i), ("reason", r.label().to_string())],
                    ConstCounter::new(load(&s.rejected[r as usize])),
                ));
            }
        }
        family(
            &mut encoder,
            "ringcast_connections_rejected",
            "Connections refused before opening, by reason.",
            MetricType::Counter,
            rejected,
        )?;

        let mut limited = Vec::new();
        for (i, s) in stats.iter().enumerate() {
            for l in Limited::ALL {
                limited.push((
                    vec![worker_label(i), ("limit", l.label().to_string())],
                    ConstCounter::new(load(&s.limited[l as usize])),
                ));
            }
        }
        family(
            &mut encoder,
            "ringcast_rate_limited",
            "Requests, events and subscriptions refused by a limit, by limit.",
            MetricType::Counter,
            limited,
        )?;

        let mut http = Vec::new();
        for (i, s) in stats.iter().enumerate() {
            for e in Endpoint::ALL {
                for (slot, c) in s.http[e as usize].iter().enumerate() {
                    let v = load(c);
                    if v == 0 {
                        continue;
                    }
                    let status = STATUSES
                        .get(slot)
                        .map_or_else(|| "other".to_string(), u16::to_string);
                    http.push((
                        vec![
                            worker_label(i),
                            ("endpoint", e.label().to_string()),
                            ("status", status),
                        ],
                        ConstCounter::new(v),
                    ));
                }
            }
        }
        family(
            &mut encoder,
            "ringcast_http_requests",
            "HTTP requests answered, by endpoint and status.",
            MetricType::Counter,
            http,
        )?;

        let mut subs = Vec::new();
        for (i, s) in stats.iter().enumerate() {
            for k in KINDS {
                subs.push((
                    vec![worker_label(i), ("type", kind_label(k).to_string())],
                    ConstGauge::new(s.subscriptions[kind_slot(k)].load(Ordering::Relaxed)),
                ));
            }
        }
        family(
            &mut encoder,
            "ringcast_subscriptions",
            "Channel subscriptions, by channel type.",
            MetricType::Gauge,
            subs,
        )?;
        family(
            &mut encoder,
            "ringcast_channels",
            "Occupied channels (over all workers), by channel type.",
            MetricType::Gauge,
            KINDS.map(|k| {
                let n: i64 = stats
                    .iter()
                    .map(|s| s.channels[kind_slot(k)].load(Ordering::Relaxed))
                    .sum();
                (
                    vec![("type", kind_label(k).to_string())],
                    ConstGauge::new(n),
                )
            }),
        )?;
        family(
            &mut encoder,
            "ringcast_worker_heartbeat_age_seconds",
            "Seconds since each worker last ran its once-a-second sweep (a stuck worker grows this).",
            MetricType::Gauge,
            stats
                .iter()
                .enumerate()
                .map(|(i, s)| (vec![worker_label(i)], ConstGauge::new(heartbeat_age(s)))),
        )?;

        let h = shared.webhooks.snapshot();
        family(
            &mut encoder,
            "ringcast_webhook_requests",
            "Webhook requests: delivered (2xx), failed (attempts that will be retried), dropped (after 5 minutes of retries), overload (dropped because the queue was full).",
            MetricType::Counter,
            [
                ("delivered", h.delivered),
                ("failed", h.failed_attempts),
                ("dropped", h.dropped_after_retries),
                ("overload", h.dropped_overload),
            ]
            .map(|(r, v)| (vec![("result", r.to_string())], ConstCounter::new(v))),
        )?;
        family(
            &mut encoder,
            "ringcast_webhook_events_cancelled",
            "channel_vacated/member_removed webhooks cancelled because the channel or member came back within 3 s.",
            MetricType::Counter,
            [(vec![], ConstCounter::new(h.cancelled))],
        )?;
        if let Some(b) = &shared.broker {
            encode_broker(&mut encoder, b)?;
        }

        let (publish, frame) = latency::merged(stats);
        family(
            &mut encoder,
            "ringcast_publish_latency_seconds",
            "HTTP publish accepted to event frame handed to the kernel, per subscriber.",
            MetricType::Histogram,
            [(Labels::new(), LatencyHistogram(publish))],
        )?;
        family(
            &mut encoder,
            "ringcast_frame_processing_seconds",
            "WebSocket frame received to processed.",
            MetricType::Histogram,
            [(Labels::new(), LatencyHistogram(frame))],
        )?;
        Ok(())
    }
}

/// The cluster broker's families (only when clustering over Redis).
fn encode_broker(
    encoder: &mut DescriptorEncoder,
    b: &super::BrokerStats,
) -> Result<(), std::fmt::Error> {
    let connected = b.connected.load(Ordering::Relaxed) as i64;
    family(
        encoder,
        "ringcast_broker_connected",
        "1 while this node reaches Redis, 0 while it serves its own connections alone.",
        MetricType::Gauge,
        [(vec![], ConstGauge::new(connected))],
    )?;
    let counters: [(&str, &str, &AtomicU64); 9] = [
        (
            "ringcast_broker_commands",
            "Requests handed to Redis.",
            &b.commands,
        ),
        (
            "ringcast_broker_events_published",
            "Events published to Redis for other nodes.",
            &b.published,
        ),
        (
            "ringcast_broker_events_received",
            "Events received from other nodes.",
            &b.received,
        ),
        (
            "ringcast_broker_interest_changes",
            "Channels subscribed to or unsubscribed from in Redis.",
            &b.interest_changes,
        ),
        (
            "ringcast_broker_fallbacks",
            "Requests answered from this node's own view because Redis could not be reached.",
            &b.fallbacks,
        ),
        (
            "ringcast_broker_resyncs",
            "Times this node registered its state again after reaching Redis anew.",
            &b.resyncs,
        ),
        (
            "ringcast_broker_events_dropped",
            "Events from other nodes not delivered to a worker whose inbox was full.",
            &b.dropped,
        ),
        (
            "ringcast_broker_nodes_reaped",
            "Dead nodes' sessions this node cleared (their members removed, webhooks sent).",
            &b.reaped,
        ),
        (
            "ringcast_broker_leases_lost",
            "Times this node found its lease expired and registered under a new session.",
            &b.leases_lost,
        ),
    ];
    for (name, help, c) in counters {
        family(
            encoder,
            name,
            help,
            MetricType::Counter,
            [(vec![], ConstCounter::new(c.load(Ordering::Relaxed)))],
        )?;
    }
    let round_trip = b
        .round_trip
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
        .unwrap_or_else(latency::new_histogram);
    family(
        encoder,
        "ringcast_broker_round_trip_seconds",
        "Round trips to Redis: a publish handed over and acknowledged, a heartbeat.",
        MetricType::Histogram,
        [(Labels::new(), LatencyHistogram(round_trip))],
    )?;
    Ok(())
}

/// Renders every metric in the Prometheus text format.
pub fn render(telemetry: &Arc<Telemetry>) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Collector(telemetry.clone())));
    let mut out = String::new();
    let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry);
    out
}
