//! `/healthz` (200 while the process answers) and `/readyz` (503 while draining or when a
//! worker is stuck), with a per-worker report, served on both listeners.

use hyper::StatusCode;

use super::{heartbeat_age, Telemetry};

/// How long a worker may go without its once-a-second sweep before it counts as stuck.
pub const STUCK_AFTER_SECS: f64 = 5.0;

/// The status and body of `/healthz` (`readiness: false`: 200 while the process answers)
/// or `/readyz` (503 unless ready), on either listener.
pub fn reply(telemetry: &Telemetry, readiness: bool, draining: bool) -> (StatusCode, String) {
    let (ready, body) = report(telemetry, draining);
    (code(ready, readiness), body)
}

/// [`reply`] for the public port: the same status code and `status`, without the
/// per-worker connection counts and the broker's state (those are on the metrics
/// listener).
pub fn public_reply(
    telemetry: &Telemetry,
    readiness: bool,
    draining: bool,
) -> (StatusCode, String) {
    let (ready, status) = readiness_of(telemetry, draining, connected(telemetry));
    (
        code(ready, readiness),
        serde_json::json!({ "status": status }).to_string(),
    )
}

fn code(ready: bool, readiness: bool) -> StatusCode {
    match ready || !readiness {
        true => StatusCode::OK,
        false => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// Whether the node is ready, and the `status` word saying why not, given whether the
/// cluster broker reaches Redis (`None`: no cluster).
fn readiness_of(
    telemetry: &Telemetry,
    draining: bool,
    connected: Option<bool>,
) -> (bool, &'static str) {
    let ages: Vec<f64> = telemetry.workers.iter().map(|s| heartbeat_age(s)).collect();
    let broker_down = telemetry.readiness_requires_broker && connected == Some(false);
    assess(draining, &ages, broker_down)
}

fn connected(telemetry: &Telemetry) -> Option<bool> {
    telemetry
        .broker
        .as_ref()
        .map(|b| b.connected.load(std::sync::atomic::Ordering::Relaxed))
}

/// Readiness and the per-worker report behind `/healthz` and `/readyz`: ready unless
/// shutting down, a worker has not swept for [`STUCK_AFTER_SECS`], or (with
/// `--readiness-requires-redis`) the cluster broker cannot reach Redis. The broker's state
/// is reported either way.
pub fn report(telemetry: &Telemetry, draining: bool) -> (bool, String) {
    let workers: Vec<serde_json::Value> = telemetry
        .workers
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let age = heartbeat_age(s);
            serde_json::json!({
                "worker": i,
                "alive": age < STUCK_AFTER_SECS,
                "heartbeat_age_seconds": (age * 1000.0).round() / 1000.0,
                "connections": s.connections.load(std::sync::atomic::Ordering::Relaxed),
            })
        })
        .collect();
    let connected = connected(telemetry);
    let (ready, status) = readiness_of(telemetry, draining, connected);
    let broker = match connected {
        None => serde_json::json!({ "kind": "local" }),
        Some(c) => serde_json::json!({ "kind": "redis", "connected": c }),
    };
    let body = serde_json::json!({ "status": status, "workers": workers, "broker": broker });
    (ready, body.to_string())
}

/// Readiness from the drain state, each worker's heartbeat age (seconds) and whether the
/// broker's outage counts.
fn assess(draining: bool, heartbeat_ages: &[f64], broker_down: bool) -> (bool, &'static str) {
    if draining {
        (false, "shutting down")
    } else if heartbeat_ages.iter().any(|&a| a >= STUCK_AFTER_SECS) {
        (false, "worker stuck")
    } else if broker_down {
        (false, "redis unreachable")
    } else {
        (true, "ready")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stuck_worker_or_a_drain_makes_the_server_unready() {
        assert_eq!(assess(false, &[0.5, 1.2], false), (true, "ready"));
        assert_eq!(
            assess(false, &[0.5, STUCK_AFTER_SECS + 1.0], false),
            (false, "worker stuck")
        );
        assert_eq!(assess(true, &[0.5, 0.5], false), (false, "shutting down"));
        assert_eq!(assess(false, &[0.5], true), (false, "redis unreachable"));
    }
}
