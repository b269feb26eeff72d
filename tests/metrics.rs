//! The metrics listener: a scripted scenario must show up in the exact counts, the output
//! must pass `promtool check metrics`, latency histograms fill, and `/readyz` flips during
//! a drain — on both IO backends.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::{api, publish, sample_sum as sum, send_raw, Client, Server, APP_ID, WAIT};
use futures_util::SinkExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

on_both_backends!(
    a_scripted_scenario_shows_in_the_counts,
    metrics_pass_promtool,
    latency_histograms_fill_and_export_hgrm,
    readiness_flips_during_a_drain,
    the_alert_rules_pass_their_tests_and_name_metrics_the_server_exports,
);

/// `deploy/prometheus/alerts.yml` passes `promtool check rules` and its unit tests
/// (`alerts_test.yml`: each alert firing on a node that breaks its rule, silent on a
/// healthy one), and every ringcast metric its expressions use is one the server exports —
/// the limits and descriptor gauges with their values.
async fn the_alert_rules_pass_their_tests_and_name_metrics_the_server_exports(
    backend: &'static str,
) {
    let Some(promtool) = common::deps::promtool() else {
        return;
    };
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/prometheus");
    for args in [
        ["check", "config", "prometheus.yml"],
        ["check", "rules", "alerts.yml"],
        ["test", "rules", "alerts_test.yml"],
    ] {
        let out = std::process::Command::new(&promtool)
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let server = Server::start(backend, &["--max-connections", "500"]);
    let text = server.metrics_text().await;
    let rules = std::fs::read_to_string(format!("{dir}/alerts.yml")).unwrap();
    let mut names: Vec<&str> = rules
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("ringcast_") || w.starts_with("process_"))
        .collect();
    names.sort();
    names.dedup();
    assert!(names.len() >= 10, "{names:?}");
    for name in names {
        // The broker's metrics exist only in a cluster (tests/cluster.rs scrapes them).
        if name.starts_with("ringcast_broker_") {
            continue;
        }
        // A family is declared even while it has no samples (counters without traffic).
        let family = name.strip_suffix("_bucket").unwrap_or(name);
        assert!(
            text.lines()
                .any(|l| l.starts_with(name) || l.starts_with(&format!("# TYPE {family} "))),
            "alerts.yml uses {name}, which the server does not export"
        );
    }
    let samples = server.metric_samples().await;
    assert_eq!(sum(&samples, "ringcast_connections_limit", &[]), 500.0);
    assert_eq!(
        sum(&samples, "ringcast_io_fallback", &[]),
        0.0,
        "--io {backend} was asked for"
    );
    let open = sum(&samples, "process_open_fds", &[]);
    assert!(
        open >= 5.0 && open < sum(&samples, "process_max_fds", &[]),
        "{open}"
    );
}

/// Waits until `check` holds for the scraped samples.
async fn eventually(server: &Server, what: &str, check: impl Fn(&HashMap<String, f64>) -> bool) {
    let deadline = Instant::now() + WAIT;
    loop {
        let s = server.metric_samples().await;
        if check(&s) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not reached; metrics:\n{}",
            server.metrics_text().await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn a_scripted_scenario_shows_in_the_counts(backend: &'static str) {
    let server = Server::start(backend, &[]);
    let mut a = Client::connect(&server).await;
    let mut b = Client::connect(&server).await;
    let mut c = Client::connect(&server).await;
    a.subscribe("news").await;
    b.subscribe("news").await;
    b.send_private_subscribe("private-b").await;
    assert_eq!(
        b.recv().await["event"],
        "pusher_internal:subscription_succeeded"
    );
    publish(&server, &["news"], "e", "1").await;
    publish(&server, &["news"], "e", "2").await;
    for client in [&mut a, &mut b] {
        client.recv().await;
        client.recv().await;
    }
    // One request with a bad signature.
    let (status, _) = send_raw(
        "POST",
        &server.http(&format!(
            "/apps/{APP_ID}/events?auth_key=app-key&auth_timestamp=1&auth_version=1.0&auth_signature=00"
        )),
        b"{}".to_vec(),
    )
    .await;
    assert_eq!(status, 401);
    // c closes normally; a breaks the protocol (binary frame → 1003).
    c.ws.close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
        code: tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode::Normal,
        reason: "bye".into(),
    }))
    .await
    .unwrap();
    assert_eq!(common::close_code(&c.closed().await), 1000);
    a.ws.send(Message::Binary(vec![1].into())).await.unwrap();
    assert_eq!(common::close_code(&a.closed().await), 1003);

    eventually(&server, "connection and channel counts", |s| {
        sum(s, "ringcast_connections_opened_total", &[]) == 3.0
            && sum(s, "ringcast_connections", &[]) == 1.0
            && sum(s, "ringcast_connections_closed_total", &[("code", "1000")]) == 1.0
            && sum(s, "ringcast_connections_closed_total", &[("code", "1003")]) == 1.0
            && sum(s, "ringcast_subscriptions", &[("type", "public")]) == 1.0
            && sum(s, "ringcast_subscriptions", &[("type", "private")]) == 1.0
            && sum(s, "ringcast_channels", &[("type", "public")]) == 1.0
            && sum(s, "ringcast_channels", &[("type", "private")]) == 1.0
    })
    .await;
    let s = server.metric_samples().await;
    let http = |endpoint, status| {
        sum(
            &s,
            "ringcast_http_requests_total",
            &[("endpoint", endpoint), ("status", status)],
        )
    };
    assert_eq!(http("events", "200"), 2.0);
    assert_eq!(http("events", "401"), 1.0);
    assert_eq!(http("websocket_upgrade", "101"), 3.0);
    assert_eq!(sum(&s, "ringcast_events_published_total", &[]), 2.0);
    assert_eq!(sum(&s, "ringcast_frames_delivered_total", &[]), 4.0);
    // Three subscribes and a's binary frame (close frames are not messages).
    assert_eq!(sum(&s, "ringcast_messages_received_total", &[]), 4.0);
    assert!(sum(&s, "ringcast_received_bytes_total", &[]) > 0.0);
    // connection_established ×3, subscription_succeeded ×3, events ×4, closes…
    assert!(sum(&s, "ringcast_messages_sent_total", &[]) >= 10.0);
    assert!(sum(&s, "ringcast_sent_bytes_total", &[]) > 100.0);
    assert!(sum(&s, "process_resident_memory_bytes", &[]) > 1e6);
    assert_eq!(sum(&s, "ringcast_outbound_queue_bytes", &[]), 0.0);
    assert_eq!(
        sum(&s, "ringcast_slow_consumer_disconnects_total", &[]),
        0.0
    );
    let backend_name = if backend == "uring" {
        "io_uring"
    } else {
        "epoll"
    };
    assert_eq!(sum(&s, "ringcast_info", &[("backend", backend_name)]), 1.0);
    for w in ["0", "1"] {
        let age = sum(
            &s,
            "ringcast_worker_heartbeat_age_seconds",
            &[("worker", w)],
        );
        assert!(age < 3.0, "worker {w} heartbeat {age}");
    }
}

async fn metrics_pass_promtool(backend: &'static str) {
    let Some(promtool) = common::deps::promtool() else {
        return;
    };
    let server = Server::start(backend, &["--webhook-url", "http://127.0.0.1:9/hook"]);
    let mut c = Client::connect(&server).await;
    c.subscribe("news").await;
    publish(&server, &["news"], "e", "x").await;
    c.recv().await;
    let _ = api(
        &server,
        "GET",
        &format!("/apps/{APP_ID}/channels"),
        &[],
        None,
    )
    .await;
    // Wait for the latency histogram to carry a sample, so buckets are exercised.
    eventually(&server, "a publish latency sample", |s| {
        sum(s, "ringcast_publish_latency_seconds_count", &[]) >= 1.0
    })
    .await;
    let text = server.metrics_text().await;
    let mut child = std::process::Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && report.trim().is_empty(),
        "promtool check metrics: {report}\n{text}"
    );
}

async fn latency_histograms_fill_and_export_hgrm(backend: &'static str) {
    let server = Server::start(backend, &[]);
    let mut clients = Vec::new();
    for _ in 0..4 {
        let mut c = Client::connect(&server).await;
        c.subscribe("news").await;
        clients.push(c);
    }
    for i in 0..5 {
        publish(&server, &["news"], "e", &i.to_string()).await;
    }
    for c in &mut clients {
        for _ in 0..5 {
            c.recv().await;
        }
        // A frame to process.
        c.send(json!({"event": "pusher:ping"})).await;
        c.recv().await;
    }
    // Five events to four subscribers: twenty publish latencies (merged once a second).
    eventually(&server, "twenty publish latencies", |s| {
        sum(s, "ringcast_publish_latency_seconds_count", &[]) == 20.0
            && sum(s, "ringcast_frame_processing_seconds_count", &[]) >= 8.0
    })
    .await;
    let s = server.metric_samples().await;
    assert_eq!(
        sum(
            &s,
            "ringcast_publish_latency_seconds_bucket",
            &[("le", "+Inf")]
        ),
        20.0
    );
    let p = sum(&s, "ringcast_publish_latency_seconds_sum", &[]);
    assert!(p > 0.0 && p < 20.0, "sum {p}");

    for (query, at_least) in [("", 20), ("?histogram=frame", 8)] {
        let resp = reqwest::get(server.metrics_url(&format!("/metrics/latency.hgrm{query}")))
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let text = resp.text().await.unwrap();
        assert!(text.trim_start().starts_with("Value"), "{text}");
        let total: u64 = text
            .lines()
            .find_map(|l| l.split("Total count    =").nth(1))
            .and_then(|v| v.trim().trim_end_matches(']').trim().parse().ok())
            .unwrap_or_else(|| panic!("no total in {text}"));
        assert!(total >= at_least, "{query}: {total} < {at_least}\n{text}");
        // The last row is the 100th percentile, with every sample counted.
        let last = text
            .lines()
            .rfind(|l| !l.starts_with('#') && l.split_whitespace().count() >= 3)
            .unwrap();
        let cols: Vec<&str> = last.split_whitespace().collect();
        assert_eq!(cols[1].parse::<f64>().unwrap(), 1.0, "{last}");
        assert_eq!(cols[2].parse::<u64>().unwrap(), total, "{last}");
    }
}

async fn readiness_flips_during_a_drain(backend: &'static str) {
    let mut server = Server::start(backend, &["--shutdown-timeout", "3"]);
    let (status, body) = send_raw("GET", &server.metrics_url("/readyz"), vec![]).await;
    assert_eq!((status, &body["status"]), (200, &json!("ready")), "{body}");
    // A client that never answers the close keeps the drain going for the timeout.
    let _c = Client::connect(&server).await;
    server.signal(libc::SIGTERM);
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, body) = send_raw("GET", &server.metrics_url("/readyz"), vec![]).await;
        if status == 503 {
            assert_eq!(body["status"], "shutting down", "{body}");
            break;
        }
        assert!(Instant::now() < deadline, "still ready: {body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(server.wait_exit(WAIT).success());
}
