//! The metrics listener: `/metrics` (Prometheus text), `/metrics/latency.hgrm` (HDR
//! percentile distributions), `/healthz` and `/readyz`, on their own address
//! (`--metrics-host`, `--metrics-port`, loopback by default).
//!
//! It runs on a thread of its own (a current-thread tokio runtime with hyper), not on a
//! worker: scrapes never take time from connections, and readiness can still be reported
//! when a worker is stuck. Other routes (the live console) are handed in as [`Routes`], so
//! this module knows nothing of them.

use std::convert::Infallible;
use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};

use super::Telemetry;

/// Connections the listener serves at once; more wait in the accept queue.
const MAX_CONNECTIONS: usize = 256;
/// How long a connection may stay (a scraper that stops talking is dropped).
const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);
/// How long a connection that holds a stream may stay (a browser reconnects after).
const STREAM_LIFETIME: Duration = Duration::from_secs(3600);

/// A response body: whole, or streamed.
pub type Body = BoxBody<Bytes, Infallible>;

/// A whole body.
pub fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).boxed()
}

/// Put in a request's extensions: a handler that answers with a long-lived stream sets it,
/// so the connection is kept for [`STREAM_LIFETIME`] rather than [`CONNECTION_LIFETIME`].
#[derive(Clone, Debug, Default)]
pub struct LongLived(Arc<AtomicBool>);

impl LongLived {
    /// Marks the connection as holding a stream.
    pub fn set(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// What answers a request: its response, later.
pub type Handler = Arc<
    dyn Fn(Request<Incoming>) -> Pin<Box<dyn Future<Output = Response<Body>> + Send>> + Send + Sync,
>;

/// More routes for the listener: every path equal to `prefix` or under `prefix/`.
#[derive(Clone)]
pub struct Routes {
    /// The path they serve.
    pub prefix: &'static str,
    /// Their handler.
    pub handler: Handler,
}

impl Routes {
    fn serves(&self, path: &str) -> bool {
        path.strip_prefix(self.prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    }
}

/// Binds the metrics address (so a taken port fails start-up) and returns the listener.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let l = TcpListener::bind(addr)?;
    l.set_nonblocking(true)?;
    Ok(l)
}

/// Serves the metrics endpoints, and `routes`, on `listener` from a thread of its own.
pub fn start(
    listener: TcpListener,
    telemetry: Arc<Telemetry>,
    routes: Option<Routes>,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("ringcast-metrics".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a current-thread runtime builds");
            rt.block_on(serve(listener, telemetry, routes));
        })?;
    Ok(())
}

async fn serve(listener: TcpListener, telemetry: Arc<Telemetry>, routes: Option<Routes>) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "metrics listener unusable");
            return;
        }
    };
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let slot = slots.clone().acquire_owned().await.expect("never closed");
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(error = %e, "metrics accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let telemetry = telemetry.clone();
        let routes = routes.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let long = LongLived::default();
            let flag = long.clone();
            let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
                let telemetry = telemetry.clone();
                let routes = routes.clone();
                let long = long.clone();
                async move {
                    let res = match routes.filter(|r| r.serves(req.uri().path())) {
                        Some(r) => {
                            req.extensions_mut().insert(long);
                            (r.handler)(req).await
                        }
                        None => respond(&telemetry, &req),
                    };
                    Ok::<_, Infallible>(res)
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            let mut conn = std::pin::pin!(conn);
            // A scraper that stops talking is dropped rather than kept forever; a stream
            // lives longer.
            if tokio::time::timeout(CONNECTION_LIFETIME, conn.as_mut())
                .await
                .is_err()
                && flag.0.load(Ordering::Relaxed)
            {
                let _ = tokio::time::timeout(STREAM_LIFETIME, conn).await;
            }
        });
    }
}

fn respond<B>(telemetry: &Arc<Telemetry>, req: &Request<B>) -> Response<Body> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "application/json",
            r#"{"error":"method not allowed"}"#,
        );
    }
    match req.uri().path() {
        "/metrics" => reply(
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
            reply(
                StatusCode::OK,
                "text/plain; charset=utf-8",
                super::latency::hgrm(&h),
            )
        }
        "/" => reply(
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
            reply(status, "application/json", body)
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            "application/json",
            r#"{"error":"not found: try /metrics, /metrics/latency.hgrm, /healthz, /readyz, /console"}"#,
        ),
    }
}

/// A whole response with its status and content type (also for the routes handed in).
pub fn reply(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Body> {
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}
