//! HTTP/1.1 through hyper, on both backends, after TLS if enabled: the API, health and the
//! WebSocket upgrade. After a `101` the connection leaves hyper for the native framing path
//! ([`crate::session`]).

pub mod io;

use std::cell::{Cell, RefCell};
use std::convert::Infallible;
use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::rc::Rc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONNECTION, CONTENT_TYPE, UPGRADE};
use hyper::{Method, Request, Response, StatusCode};

use crate::metrics::{Endpoint, Rejected};
use crate::runtime::{Runtime, Socket, Writer, SHUTDOWN_TIMEOUT};
use crate::session::{self, Protocol};
use crate::tls::TlsSocket;
use crate::worker::admission::{HttpConn, IpSlot};
use crate::worker::Worker;
use crate::ws::handshake::{self, HandshakeError};

/// Response type of every handler.
pub type HttpResponse = Response<Full<Bytes>>;

/// A JSON response.
pub fn json(status: StatusCode, body: impl Into<Bytes>) -> HttpResponse {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// A JSON error response: `{"error": message}`.
pub fn error(status: StatusCode, message: &str) -> HttpResponse {
    json(status, serde_json::json!({ "error": message }).to_string())
}

/// How long a connection being closed (idle, or at the end of a drain) may take to finish
/// its last response, and an upgraded one to write its `101`, before it is dropped: a
/// client that stops reading cannot hold it.
const LAST_RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);

/// An HTTP connection in the worker's count, until dropped (also when its task is dropped
/// after a panic).
struct HttpCounted(Rc<Worker>);

impl HttpCounted {
    fn new(worker: &Rc<Worker>) -> Self {
        worker.http_conn_delta(true);
        Self(worker.clone())
    }
}

impl Drop for HttpCounted {
    fn drop(&mut self) {
        self.0.http_conn_delta(false);
    }
}

/// A connection let in at accept: counted as an HTTP connection until it upgrades or ends,
/// and against its address for its whole life (the slot goes on to the WebSocket session).
pub struct Admitted {
    counted: HttpCounted,
    ip: Option<IpSlot>,
}

/// Decides at accept whether a connection from `peer` may be served: under its address's
/// `--max-connections-per-ip`, and within the worker's share of `--max-http-connections`
/// — at that cap the quietest HTTP connection not serving a request is closed to make room
/// (idle keep-alive connections and slow heads go first); with none, the new one is
/// refused. A refused socket is just closed.
pub fn admit(worker: &Rc<Worker>, peer: SocketAddr) -> Option<Admitted> {
    let mut limit = worker.config().limits.max_connections_per_ip;
    if is_trusted_proxy(worker, peer.ip()) {
        // Every client behind it shares its address.
        limit = 0;
    }
    let ip = match worker.shared.ip_conns.enter(peer.ip(), limit) {
        Ok(slot) => slot,
        Err(crate::worker::admission::AddressFull) => {
            worker.stats.rejected(Rejected::IpConnections);
            tracing::debug!(%peer, limit, "connection refused: its address has --max-connections-per-ip open");
            return None;
        }
    };
    let cap = worker.http_cap();
    if cap > 0 && worker.http.len() >= cap && !worker.http.evict_quietest() {
        worker.stats.rejected(Rejected::HttpOverCapacity);
        tracing::debug!(%peer, cap, "connection refused: this worker's share of --max-http-connections is busy");
        return None;
    }
    Some(Admitted {
        counted: HttpCounted::new(worker),
        ip,
    })
}

/// Serves one accepted socket over TLS: the handshake (within `--handshake-timeout`), then
/// HTTP and any WebSocket session exactly as on a plain socket.
pub async fn serve_tls<R: Runtime>(
    worker: Rc<Worker>,
    socket: R::Socket,
    peer: SocketAddr,
    config: std::sync::Arc<rustls::ServerConfig>,
    admitted: Admitted,
) {
    let accepted = Instant::now();
    let tls = match TlsSocket::<R>::new(socket, config) {
        Ok(tls) => tls,
        Err(e) => {
            tracing::warn!(%peer, error = %e, "cannot start a TLS connection");
            return;
        }
    };
    let handshake = tokio::select! {
        biased;
        r = tls.handshake() => r,
        _ = R::sleep(worker.config().handshake_timeout) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "TLS handshake not completed in time",
        )),
    };
    if let Err(e) = handshake {
        if e.kind() == std::io::ErrorKind::TimedOut {
            worker.stats.rejected(Rejected::HandshakeTimeout);
        }
        tracing::debug!(%peer, error = %e, "TLS handshake failed");
        return;
    }
    serve::<R, _>(worker, tls, peer, accepted, admitted).await;
}

/// Serves one accepted socket: HTTP requests until it closes or upgrades, then the
/// WebSocket session. `socket` is the backend's, or TLS over it ([`serve_tls`]).
///
/// `accepted` is when the socket was accepted: the first request must be complete within
/// `--handshake-timeout` of it, a TLS handshake included.
pub async fn serve<R: Runtime, S: Socket>(
    worker: Rc<Worker>,
    socket: S,
    peer: SocketAddr,
    accepted: Instant,
    admitted: Admitted,
) {
    let Admitted { counted, ip } = admitted;
    let clock = io::Clock::new();
    // Requests being served: while one is, bytes read belong to it (its body) or wait
    // behind it (pipelining), and no head is overdue.
    let serving = Rc::new(Cell::new(0u32));
    // In the worker's table, where admission may pick it to close at the cap.
    let evict = tokio_util::sync::CancellationToken::new();
    let entry = worker.http.enter(Rc::new(HttpConn {
        quiet_since: clock.activity.clone(),
        serving: serving.clone(),
        evict: evict.clone(),
    }));
    let upgrade: Rc<RefCell<Option<Protocol>>> = Rc::new(RefCell::new(None));

    // Until the first request arrives, the connection is on the clock (slowloris and
    // stalled TLS handshakes alike).
    let requested = Rc::new(Cell::new(false));
    let svc = {
        let worker = worker.clone();
        let upgrade = upgrade.clone();
        let requested = requested.clone();
        let (clock, serving) = (clock.clone(), serving.clone());
        let ip = peer.ip();
        hyper::service::service_fn(move |req| {
            requested.set(true);
            clock.head_since.set(None);
            serving.set(serving.get() + 1);
            let (clock, serving) = (clock.clone(), serving.clone());
            let route = route::<R>(worker.clone(), upgrade.clone(), req, ip);
            let fut: Pin<Box<dyn Future<Output = Result<HttpResponse, Infallible>>>> =
                Box::pin(async move {
                    let resp = route.await;
                    clock.head_since.set(None);
                    serving.set(serving.get() - 1);
                    resp
                });
            fut
        })
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(R::timer())
        // hyper's header timer also runs while a kept-alive connection is idle, which is
        // --http-idle-timeout's business: request heads are timed below instead.
        .header_read_timeout(None)
        .max_buf_size(64 * 1024);
    let mut conn = builder.serve_connection(io::HyperIo::new(socket, clock.clone()), svc);

    // Run hyper until the connection ends or upgrades, closing it gracefully when the
    // connection stays idle too long, or at the end of a shutdown's drain.
    let idle_timeout = worker.config().http_idle_timeout;
    let head_timeout = worker.config().handshake_timeout;
    let mut stopping = pin!(worker.http_stop.clone().cancelled_owned());
    let mut evicted = pin!(evict.cancelled_owned());
    let mut idle = pin!(R::sleep(idle_timeout));
    let mut closing = false;
    let mut first_request = pin!(R::sleep(
        worker
            .config()
            .handshake_timeout
            .saturating_sub(accepted.elapsed())
    ));
    // A later request's head must be complete within --handshake-timeout of its first
    // byte, however slowly it trickles (each byte counts as activity).
    let mut head_deadline = pin!(R::sleep(head_timeout));
    let mut head_for: Option<Instant> = None;
    let mut timed_out = false;
    let res = poll_fn(|cx| {
        if !requested.get() && first_request.as_mut().poll(cx).is_ready() {
            timed_out = true;
            return Poll::Ready(Err(None));
        }
        if !closing {
            let mut close =
                stopping.as_mut().poll(cx).is_ready() || evicted.as_mut().poll(cx).is_ready();
            while !close && idle.as_mut().poll(cx).is_ready() {
                let quiet = clock.activity.get().elapsed();
                if quiet >= idle_timeout {
                    close = true;
                } else {
                    idle.set(R::sleep(idle_timeout - quiet));
                }
            }
            if close {
                Pin::new(&mut conn).graceful_shutdown();
                closing = true;
                idle.set(R::sleep(LAST_RESPONSE_TIMEOUT));
            }
        } else if idle.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(None));
        }
        let polled = conn.poll_without_shutdown(cx).map_err(Some);
        if polled.is_pending() && requested.get() && serving.get() == 0 {
            if let Some(since) = clock.head_since.get() {
                if head_for != Some(since) {
                    head_deadline.set(R::sleep(head_timeout.saturating_sub(since.elapsed())));
                    head_for = Some(since);
                }
                if head_deadline.as_mut().poll(cx).is_ready() {
                    timed_out = true;
                    return Poll::Ready(Err(None));
                }
            }
        }
        polled
    })
    .await;
    drop((counted, entry));

    let upgraded = match res {
        Ok(()) => upgrade.borrow_mut().take(),
        Err(Some(e)) => {
            tracing::debug!(%peer, error = %e, "HTTP connection ended with an error");
            None
        }
        Err(None) if timed_out => {
            worker.stats.rejected(Rejected::HandshakeTimeout);
            tracing::debug!(%peer, timeout = ?worker.config().handshake_timeout, "connection closed: no complete request within --handshake-timeout");
            None
        }
        Err(None) => {
            tracing::debug!(%peer, "HTTP connection dropped: its last response did not finish in time");
            None
        }
    };
    let parts = conn.into_parts();
    let Some(protocol) = upgraded else {
        // Done with HTTP: end the connection (with close_notify over TLS), for a bounded time.
        tokio::select! {
            biased;
            _ = async {
                if let Ok(writer) = parts.io.into_writer().await {
                    let _ = writer.shutdown().await;
                }
            } => {}
            _ = R::sleep(SHUTDOWN_TIMEOUT) => {}
        }
        return;
    };
    let handover = tokio::select! {
        biased;
        r = parts.io.into_leftover(parts.read_buf) => r,
        _ = R::sleep(LAST_RESPONSE_TIMEOUT) => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "the 101 response was not taken")),
    };
    match handover {
        Ok((writer, leftover)) => {
            tracing::trace!(%peer, buffered = leftover.buf.len(), "upgraded");
            // A task of its own: this one's state (hyper's connection) is freed, and a
            // WebSocket holds only what its session needs.
            R::spawn(session::run::<S>(worker, writer, leftover, protocol, ip));
        }
        Err(e) => tracing::debug!(%peer, error = %e, "connection lost during the upgrade"),
    }
}

async fn route<R: Runtime>(
    worker: Rc<Worker>,
    upgrade: Rc<RefCell<Option<Protocol>>>,
    req: Request<Incoming>,
    ip: std::net::IpAddr,
) -> Result<HttpResponse, Infallible> {
    let endpoint = Endpoint::of(req.uri().path());
    // One reading of the drain state per request: a `/readyz` answer and its
    // `Connection: close` always agree.
    let draining = worker.is_shutting_down();
    let mut resp =
        if endpoint == Endpoint::Upgrade && !allow_ip(&worker, client_ip(&worker, &req, ip)) {
            error(
                StatusCode::TOO_MANY_REQUESTS,
                "too many new connections from this address: try again in a second",
            )
        } else {
            respond::<R>(&worker, &upgrade, req, draining).await
        };
    worker.stats.http(endpoint, resp.status().as_u16());
    if draining && resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        // Draining: answer, but do not keep the connection.
        resp.headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    Ok(resp)
}

async fn respond<R: Runtime>(
    worker: &Rc<Worker>,
    upgrade: &RefCell<Option<Protocol>>,
    req: Request<Incoming>,
    draining: bool,
) -> HttpResponse {
    let path = req.uri().path();
    if let Some(key) = path.strip_prefix("/app/") {
        let protocol = pusher_protocol(worker, key, req.uri().query());
        return accept_upgrade(&req, protocol, upgrade);
    }
    if worker.config().echo_path.as_deref() == Some(path) {
        return accept_upgrade(&req, Protocol::Echo, upgrade);
    }
    if path.starts_with("/apps/")
        || (path.starts_with("/users/") && path.ends_with("/terminate_connections"))
    {
        return match crate::api::handle::<R>(worker, req).await {
            Ok(body) => json(StatusCode::OK, body),
            Err(e) => {
                let mut res = error(e.status, &e.message);
                if e.status == StatusCode::SERVICE_UNAVAILABLE {
                    // Overloaded or cut off from Redis: both pass within seconds.
                    res.headers_mut().insert(
                        hyper::header::RETRY_AFTER,
                        hyper::header::HeaderValue::from_static("1"),
                    );
                }
                res
            }
        };
    }
    let get = req.method() == Method::GET || req.method() == Method::HEAD;
    match path {
        "/healthz" | "/readyz" if get => {
            let telemetry = &worker.shared.telemetry;
            // The details (per-worker counts, the broker) are on the metrics listener.
            let (status, body) =
                crate::metrics::health::public_reply(telemetry, path == "/readyz", draining);
            json(status, body)
        }
        "/metrics" if get => error(
            StatusCode::NOT_FOUND,
            "metrics are served on the metrics port (--metrics-host, --metrics-port)",
        ),
        "/" if get => json(
            StatusCode::OK,
            // The version and IO backend are on the metrics listener's `/`.
            serde_json::json!({ "name": "ringcast", "protocol": 7 }).to_string(),
        ),
        "/healthz" | "/readyz" | "/" => error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
        _ => error(StatusCode::NOT_FOUND, "not found"),
    }
}

/// Decides what a `/app/{key}` connection becomes. Problems with the app or the protocol
/// version are reported after the upgrade, with the close codes Pusher clients act on.
fn pusher_protocol(worker: &Worker, key: &str, query: Option<&str>) -> Protocol {
    upgrade_protocol(&worker.shared.apps.load(), key, query)
}

/// What an upgrade to `/app/{key}?{query}` will speak: Pusher for the app with that key and
/// an acceptable `protocol` version, or a refusal with its close code.
pub fn upgrade_protocol(apps: &crate::app::Apps, key: &str, query: Option<&str>) -> Protocol {
    let version = query.and_then(|q| {
        form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "protocol")
            .map(|(_, v)| v.into_owned())
    });
    match crate::pusher::conn::connect(apps, key, version.as_deref()) {
        Ok(app) => Protocol::Pusher(app),
        Err(r) => Protocol::PusherRefused {
            code: r.code,
            reason: r.reason,
        },
    }
}

fn accept_upgrade(
    req: &Request<Incoming>,
    protocol: Protocol,
    upgrade: &RefCell<Option<Protocol>>,
) -> HttpResponse {
    if req.method() != Method::GET {
        return error(StatusCode::METHOD_NOT_ALLOWED, "WebSocket upgrades use GET");
    }
    let accept = match handshake::accept(req.headers()) {
        Ok(a) => a,
        Err(e @ HandshakeError::UnsupportedVersion) => {
            let mut r = error(StatusCode::UPGRADE_REQUIRED, &e.to_string());
            r.headers_mut()
                .insert("sec-websocket-version", HeaderValue::from_static("13"));
            return r;
        }
        Err(e) => return error(StatusCode::BAD_REQUEST, &e.to_string()),
    };
    *upgrade.borrow_mut() = Some(protocol);
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert("sec-websocket-accept", accept);
    r
}

/// Counts a WebSocket upgrade from `ip` against `--max-connections-per-ip-per-second`.
/// Whether `ip` is one of `--trusted-proxy`.
fn is_trusted_proxy(worker: &Worker, ip: std::net::IpAddr) -> bool {
    let ip = ip.to_canonical();
    worker
        .config()
        .trusted_proxies
        .iter()
        .any(|net| net.contains(&ip))
}

/// The client's address: `peer`, or through a trusted proxy the last address of
/// `X-Forwarded-For` that is not itself a trusted proxy (the proxy appends what it saw;
/// what a client wrote before it is not believed).
fn client_ip(worker: &Worker, req: &Request<Incoming>, peer: std::net::IpAddr) -> std::net::IpAddr {
    if !is_trusted_proxy(worker, peer) {
        return peer;
    }
    let hops: Vec<&str> = req
        .headers()
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    for hop in hops.iter().rev() {
        match hop.parse::<std::net::IpAddr>() {
            Ok(ip) if is_trusted_proxy(worker, ip) => continue,
            Ok(ip) => return ip,
            // Not an address: nothing further left can be trusted.
            Err(_) => break,
        }
    }
    peer
}

fn allow_ip(worker: &Worker, ip: std::net::IpAddr) -> bool {
    let limit = worker.config().limits.max_connections_per_ip_per_second;
    if worker
        .shared
        .ip_rate
        .allow(ip, crate::clock::unix_secs(), limit)
    {
        return true;
    }
    worker.stats.rejected(Rejected::IpRate);
    tracing::debug!(%ip, limit, "upgrade refused: too many new connections from this address");
    false
}
