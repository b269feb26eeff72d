//! The live console: one page at `/console` on the metrics listener that shows what an app
//! is doing now — counts, channels, presence members, a user's connections, a live event
//! log, recent webhook deliveries — and publishes test events.
//!
//! * The page, its script and stylesheet are embedded in the binary (`assets/`): nothing is
//!   fetched from elsewhere, so it works offline.
//! * Its data comes from `/console/api/…` (JSON) and one Server-Sent Events stream per open
//!   page ([`stream`]); channels, members and a user's connections are asked of the
//!   [`Broker`](crate::hub::Broker), so over a cluster they are the cluster's; the counts
//!   of connections, the rates and the event log are this node's.
//! * Publishing signs a request with the app's secret and sends it to this node's own HTTP
//!   API ([`publish`]): the event takes the same path as one from a server SDK.
//! * Access ([`auth`]): with `--console-token`, every API call needs the token (a cookie set
//!   by logging in, or `Authorization: Bearer`); without one the console is served only
//!   while the metrics listener is on a loopback address, and only to requests naming a
//!   loopback host (a DNS-rebinding page cannot reach it).
//!
//! The event log costs nothing while no console is open: see [`crate::app::console`].

mod auth;
mod publish;
mod stream;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::json;

use crate::app::{AppIdx, ChannelRef};
use crate::metrics::listener::{reply, Body, Routes};
use crate::protocol::channel::{self, ChannelKind};
use crate::worker::Shared;

/// Channels one listing shows at most.
const MAX_CHANNELS: usize = 1_000;
/// Presence channels whose member counts one listing asks for.
const MAX_USER_COUNTS: usize = 200;
/// Event streams open at once on this node.
const MAX_STREAMS: usize = 16;
/// Largest request body the console takes.
const MAX_BODY: usize = 256 * 1024;

const INDEX_HTML: &str = include_str!("assets/index.html");
const CONSOLE_JS: &str = include_str!("assets/console.js");
const CONSOLE_CSS: &str = include_str!("assets/console.css");

/// The console, as the metrics listener serves it.
pub struct Console {
    shared: Arc<Shared>,
    access: auth::Access,
    /// Where this node's HTTP API listens, as the console reaches it.
    api: SocketAddr,
    /// With TLS on that listener: a client trusting only the certificate it serves.
    api_tls: Option<Arc<rustls::ClientConfig>>,
    streams: Arc<AtomicUsize>,
    kinds: Arc<stream::ChannelKinds>,
}

impl Console {
    /// The console of this node, or `None` when it is turned off (`--no-console`).
    /// `api` is the address the WebSocket/HTTP listener is bound to, `api_tls` a client
    /// for it when it serves TLS.
    pub fn new(
        shared: Arc<Shared>,
        api: SocketAddr,
        api_tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Option<Arc<Self>> {
        let config = &shared.config;
        if config.no_console {
            return None;
        }
        let access = auth::Access::new(config.console_token.as_deref(), config.metrics_addr.ip());
        match &access {
            auth::Access::Disabled(why) => tracing::warn!("console disabled: {why}"),
            auth::Access::Token(_) => tracing::info!("console requires its token"),
            auth::Access::Loopback => {}
        }
        Some(Arc::new(Self {
            api: publish::reachable(api),
            api_tls,
            shared,
            access,
            streams: Arc::default(),
            kinds: Arc::default(),
        }))
    }

    /// The routes for the metrics listener.
    pub fn routes(self: &Arc<Self>) -> Routes {
        let me = self.clone();
        Routes {
            prefix: "/console",
            handler: Arc::new(move |req| {
                let me = me.clone();
                Box::pin(async move { me.handle(req).await })
            }),
        }
    }

    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        let path = req.uri().path().to_string();
        let res = match path.strip_prefix("/console/api") {
            // Logging in is what a request without the token may do.
            Some("/login") => self.access.login(req).await,
            Some(rest) => match self.access.check(&req) {
                Ok(()) => self.api(rest, req).await,
                Err(refusal) => Err(refusal),
            },
            None => self.asset(&path, &req),
        };
        let mut res = res.unwrap_or_else(|e| e.response());
        let headers = res.headers_mut();
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        headers.insert(
            "content-security-policy",
            HeaderValue::from_static(
                "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                 img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
            ),
        );
        headers.insert(
            "x-content-type-options",
            HeaderValue::from_static("nosniff"),
        );
        headers.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
        res
    }

    fn asset(&self, path: &str, req: &Request<Incoming>) -> Result<Response<Body>, Failure> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return Err(Failure::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed",
            ));
        }
        let (body, kind) = match path {
            "/console" | "/console/" | "/console/index.html" => {
                (INDEX_HTML, "text/html; charset=utf-8")
            }
            "/console/console.js" => (CONSOLE_JS, "text/javascript; charset=utf-8"),
            "/console/console.css" => (CONSOLE_CSS, "text/css; charset=utf-8"),
            _ => return Err(Failure::new(StatusCode::NOT_FOUND, "no such console page")),
        };
        Ok(reply(
            StatusCode::OK,
            kind,
            Bytes::from_static(body.as_bytes()),
        ))
    }

    async fn api(&self, rest: &str, req: Request<Incoming>) -> Result<Response<Body>, Failure> {
        let method = req.method().clone();
        let segments: Vec<&str> = rest.trim_start_matches('/').split('/').collect();
        match (&method, segments.as_slice()) {
            (&Method::GET, ["session"]) => Ok(self.session()),
            (&Method::POST, ["logout"]) => Ok(self.access.logout()),
            (&Method::GET, ["apps"]) => Ok(self.apps()),
            (&Method::GET, ["apps", id, "channels"]) => {
                let app = self.app(id)?;
                let prefix = query_param(&req, "prefix").unwrap_or_default();
                self.channels(app, &prefix).await
            }
            (&Method::GET, ["apps", id, "channels", name, "members"]) => {
                let app = self.app(id)?;
                self.members(app, &decode(name)?).await
            }
            (&Method::GET, ["apps", id, "users", user, "connections"]) => {
                let app = self.app(id)?;
                self.user_connections(app, &decode(user)?).await
            }
            (&Method::GET, ["apps", id, "webhooks"]) => {
                let app = self.app(id)?;
                let deliveries = self.shared.apps.load().get(app).console.deliveries();
                Ok(json_reply(
                    StatusCode::OK,
                    &json!({ "deliveries": deliveries }),
                ))
            }
            (&Method::GET, ["apps", id, "stream"]) => {
                let app = self.app(id)?;
                self.stream(app, &req)
            }
            (&Method::POST, ["apps", id, "events"]) => {
                let app = self.app(id)?;
                let body = read_json_body(req).await?;
                publish::publish(self, app, body).await
            }
            (_, ["session" | "apps" | "logout", ..]) => Err(Failure::new(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{method} is not allowed here"),
            )),
            _ => Err(Failure::new(StatusCode::NOT_FOUND, "no such console API")),
        }
    }

    fn session(&self) -> Response<Body> {
        let cluster = self.shared.config.cluster.as_ref();
        json_reply(
            StatusCode::OK,
            &json!({
                "auth": match self.access { auth::Access::Token(_) => "token", _ => "none" },
                "node": cluster.map(|c| c.node_id.clone()).unwrap_or_else(|| "single".into()),
                "cluster": cluster.is_some(),
                "version": env!("CARGO_PKG_VERSION"),
                "backend": self.shared.telemetry.backend.to_string(),
            }),
        )
    }

    fn apps(&self) -> Response<Body> {
        let apps = self.shared.apps.load();
        let list: Vec<_> = apps
            .iter()
            .filter(|a| !a.retired)
            .map(|a| {
                json!({
                    "id": a.id,
                    "key": a.key,
                    "enabled": a.enabled,
                    "webhooks": a.webhooks.len(),
                })
            })
            .collect();
        json_reply(StatusCode::OK, &json!({ "apps": list }))
    }

    /// The app named by `id` in a path (percent-encoded).
    fn app(&self, id: &str) -> Result<AppIdx, Failure> {
        let id = decode(id)?;
        let apps = self.shared.apps.load();
        apps.by_id(&id)
            .filter(|&i| !apps.get(i).retired)
            .ok_or_else(|| Failure::new(StatusCode::NOT_FOUND, format!("no app {id:?}")))
    }

    async fn channels(&self, app: AppIdx, prefix: &str) -> Result<Response<Body>, Failure> {
        let mut all = self
            .shared
            .broker
            .channels(app, prefix)
            .await
            .map_err(unavailable)?;
        all.sort_by(|a, b| a.0.cmp(&b.0));
        let truncated = all.len() > MAX_CHANNELS;
        all.truncate(MAX_CHANNELS);
        let mut out = Vec::with_capacity(all.len());
        let mut counted = 0;
        for (name, subscriptions) in all {
            let kind = channel::parse(&name).ok();
            let mut c = json!({
                "name": &*name,
                "kind": kind.map_or("public", kind_name),
                "subscription_count": subscriptions,
            });
            if kind.is_some_and(ChannelKind::is_presence) && counted < MAX_USER_COUNTS {
                counted += 1;
                let info = self
                    .shared
                    .broker
                    .channel(ChannelRef { app, name: &name })
                    .await
                    .map_err(unavailable)?;
                c["user_count"] = info.user_count.into();
            }
            out.push(c);
        }
        Ok(json_reply(
            StatusCode::OK,
            &json!({ "channels": out, "truncated": truncated }),
        ))
    }

    async fn members(&self, app: AppIdx, name: &str) -> Result<Response<Body>, Failure> {
        if !channel::parse(name).is_ok_and(ChannelKind::is_presence) {
            return Err(Failure::new(
                StatusCode::BAD_REQUEST,
                format!("{name:?} is not a presence channel"),
            ));
        }
        let members = self
            .shared
            .broker
            .presence(ChannelRef { app, name })
            .await
            .map_err(unavailable)?;
        let list: Vec<_> = members
            .iter()
            .map(|m| {
                let info: serde_json::Value =
                    serde_json::from_str(&m.user_info).unwrap_or(serde_json::Value::Null);
                json!({ "user_id": &*m.user_id, "user_info": info })
            })
            .collect();
        Ok(json_reply(
            StatusCode::OK,
            &json!({ "channel": name, "members": list }),
        ))
    }

    async fn user_connections(&self, app: AppIdx, user: &str) -> Result<Response<Body>, Failure> {
        let conns = self
            .shared
            .broker
            .user_connections(app, user)
            .await
            .map_err(unavailable)?;
        Ok(json_reply(
            StatusCode::OK,
            &json!({ "user_id": user, "connections": conns }),
        ))
    }

    fn stream(&self, app: AppIdx, req: &Request<Incoming>) -> Result<Response<Body>, Failure> {
        let open = self.streams.fetch_add(1, Ordering::Relaxed);
        let slot = StreamSlot(self.streams.clone());
        if open >= MAX_STREAMS {
            return Err(Failure::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!("{MAX_STREAMS} consoles are open on this node already"),
            ));
        }
        if let Some(long) = req
            .extensions()
            .get::<crate::metrics::listener::LongLived>()
        {
            long.set();
        }
        // EventSource's own reconnects name the last entry they got; a page reopening a
        // stream says `?after=`.
        let after = req
            .headers()
            .get("last-event-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .or_else(|| query_param(req, "after"))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        Ok(stream::open(
            self.shared.clone(),
            self.kinds.clone(),
            app,
            after,
            slot,
        ))
    }
}

/// Gives a stream's place back when the stream ends.
struct StreamSlot(Arc<AtomicUsize>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The console's name for a kind of channel.
fn kind_name(kind: ChannelKind) -> &'static str {
    match kind {
        ChannelKind::Public | ChannelKind::ServerToUser => "public",
        ChannelKind::Cache | ChannelKind::PrivateCache | ChannelKind::PresenceCache => "cache",
        ChannelKind::PrivateEncryptedCache | ChannelKind::PrivateEncrypted => "encrypted",
        ChannelKind::Private => "private",
        ChannelKind::Presence => "presence",
    }
}

/// Why a console request was refused: a status and a JSON `{"error": …}`.
#[derive(Debug)]
pub(crate) struct Failure {
    status: StatusCode,
    message: String,
    extra: Option<(&'static str, bool)>,
}

impl Failure {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            extra: None,
        }
    }

    fn response(self) -> Response<Body> {
        let mut body = json!({ "error": self.message });
        if let Some((k, v)) = self.extra {
            body[k] = v.into();
        }
        json_reply(self.status, &body)
    }
}

fn unavailable(e: crate::hub::BrokerError) -> Failure {
    Failure::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
}

fn json_reply(status: StatusCode, v: &serde_json::Value) -> Response<Body> {
    reply(status, "application/json", Bytes::from(v.to_string()))
}

fn decode(segment: &str) -> Result<String, Failure> {
    crate::api::percent_decode(segment)
        .ok_or_else(|| Failure::new(StatusCode::BAD_REQUEST, "invalid percent-encoding in path"))
}

fn query_param(req: &Request<Incoming>, name: &str) -> Option<String> {
    form_urlencoded::parse(req.uri().query()?.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// A JSON request body: `Content-Type: application/json` is required (a cross-site form
/// cannot send it without the browser asking first, and the console never agrees).
async fn read_json_body(req: Request<Incoming>) -> Result<serde_json::Value, Failure> {
    let json = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !json {
        return Err(Failure::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send Content-Type: application/json",
        ));
    }
    let body = http_body_util::Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|_| {
            Failure::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the body is over {MAX_BODY} bytes or was cut short"),
            )
        })?
        .to_bytes();
    serde_json::from_slice(&body)
        .map_err(|e| Failure::new(StatusCode::BAD_REQUEST, format!("invalid JSON body: {e}")))
}
