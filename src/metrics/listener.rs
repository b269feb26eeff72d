//! The metrics listener: `/metrics` (Prometheus text), `/metrics/latency.hgrm` (HDR
//! percentile distributions), `/healthz` and `/readyz`, on their own address
//! (`--metrics-host`, `--metrics-port`, loopback by default).
//!
//! It runs on a thread of its own (a current-thread tokio runtime with hyper), not on a
//! worker: scrapes never take time from connections, and readiness can still be reported
//! when a worker is stuck.

use std::convert::Infallible;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};

use super::Telemetry;

/// Binds the metrics address (so a taken port fails start-up) and returns the listener.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let l = TcpListener::bind(addr)?;
    l.set_nonblocking(true)?;
    Ok(l)
}

/// Serves the metrics endpoints on `listener` from a thread of its own.
pub fn start(listener: TcpListener, telemetry: Arc<Telemetry>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("ringcast-metrics".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a current-thread runtime builds");
            rt.block_on(serve(listener, telemetry));
        })?;
    Ok(())
}

async fn serve(listener: TcpListener, telemetry: Arc<Telemetry>) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "metrics listener unusable");
            return;
        }
    };
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(error = %e, "metrics accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let telemetry = telemetry.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let telemetry = telemetry.clone();
                async move { Ok::<_, Infallible>(respond(&telemetry, &req)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            // A scraper that stops talking is dropped rather than kept forever.
            let _ = tokio::time::timeout(std::time::Duration::from_secs(60), conn).await;
        });
    }
}

fn respond<B>(telemetry: &Arc<Telemetry>, req: &Request<B>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "application/json",
            r#"{"error":"method not allowed"}"#.into(),
        );
    }
    match req.uri().path() {
        "/metrics" => text(
            StatusCode::OK,
            prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            super::exposition::render(telemetry),
        ),
        "/metrics/latency.hgrm" => {
            let (publish, frame) = super::latency::merged(&telemetry.workers);
            let which = req.uri().query().unwrap_or("");
            let h = if which.contains("histogram=frame") {
                frame
            } else {
                publish
            };
            text(
                StatusCode::OK,
                "text/plain; charset=utf-8",
                super::latency::hgrm(&h),
            )
        }
        "/" => text(
            StatusCode::OK,
            "application/json",
            serde_json::json!({
                "name": "ringcast",
                "version": env!("CARGO_PKG_VERSION"),
                "protocol": 7,
                "backend": telemetry.backend.to_string(),
            })
            .to_string(),
        ),
        path @ ("/healthz" | "/readyz") => {
            let draining = telemetry.draining.is_cancelled();
            let (status, body) = super::health::reply(telemetry, path == "/readyz", draining);
            text(status, "application/json", body)
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "application/json",
            r#"{"error":"not found: try /metrics, /metrics/latency.hgrm, /healthz, /readyz"}"#
                .into(),
        ),
    }
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}
