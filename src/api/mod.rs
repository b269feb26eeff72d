//! The Pusher HTTP API: `/apps/{app_id}/…`, signed as Pusher's server SDKs sign
//! ([`crate::protocol::signature`]).
//!
//! Every error a request can cause is decided here, in one place, as an [`ApiError`]: an
//! HTTP status and a message, which [`crate::http`] sends as `{"error": "…"}`.

mod channels;
mod events;
pub mod json;

use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};

use crate::metrics::Limited as LimitedBy;
use crate::protocol::signature;
use crate::runtime::Runtime;
use crate::worker::{PublishError, Worker};

/// How long a client may take to send a request body.
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// An API failure: the status and message of the JSON error reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status}: {message}")]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// What is wrong.
    pub message: String,
}

impl ApiError {
    /// A 400 with `message`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }

    /// Any status with `message`.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

/// The endpoints of the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route<'a> {
    Events,
    BatchEvents,
    Channels,
    Channel(&'a str),
    ChannelUsers(&'a str),
    TerminateConnections(&'a str),
}

/// The app id (empty for `/users/…`) and the endpoint `path` names, if `method` is the one it
/// takes: 404 for paths the API does not have (the deprecated `/channels/{name}/events` and
/// `…/stats` among them), 405 for the wrong method.
fn route<'a>(path: &'a str, method: &Method) -> Result<(&'a str, Route<'a>), ApiError> {
    // pusher-http-python (3.3) posts terminate_connections to `/users/{id}/…` without
    // the `/apps/{app_id}` prefix; the app is then the one whose key signed the request.
    let (app_id, rest) = match path.strip_prefix("/apps/") {
        Some(rest) => rest.split_once('/').unwrap_or((rest, "")),
        None => ("", path.strip_prefix('/').unwrap_or(path)),
    };
    let segments: Vec<&str> = rest.split('/').collect();
    let (route, wanted) = match segments.as_slice() {
        ["events"] => (Route::Events, Method::POST),
        ["batch_events"] => (Route::BatchEvents, Method::POST),
        ["channels"] => (Route::Channels, Method::GET),
        ["channels", name] => (Route::Channel(name), Method::GET),
        ["channels", name, "users"] => (Route::ChannelUsers(name), Method::GET),
        ["users", user, "terminate_connections"] => {
            (Route::TerminateConnections(user), Method::POST)
        }
        _ => return Err(ApiError::new(StatusCode::NOT_FOUND, "no such API endpoint")),
    };
    if *method != wanted {
        return Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{method} {path} is not supported; use {wanted}"),
        ));
    }
    Ok((app_id, route))
}

impl From<PublishError> for ApiError {
    /// A publish that did not reach every subscriber: 503, so the caller knows (and may
    /// retry); never a silent drop.
    fn from(e: PublishError) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
    }
}

/// Handles a request under `/apps/` (and `/users/{id}/terminate_connections`, which one
/// server SDK sends without the `/apps/{app_id}` prefix): the JSON body of a `200`, or why
/// not.
pub async fn handle<R: Runtime>(
    worker: &Rc<Worker>,
    req: Request<Incoming>,
) -> Result<Bytes, ApiError> {
    let res = handle_inner::<R>(worker, req).await;
    if let Err(e) = &res {
        tracing::debug!(status = %e.status, error = %e.message, "API request refused");
    }
    res
}

async fn handle_inner<R: Runtime>(
    worker: &Rc<Worker>,
    req: Request<Incoming>,
) -> Result<Bytes, ApiError> {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let (app_id, route) = route(&path, &method)?;
    let config = worker.config();
    let query = req.uri().query().map(str::to_string);
    let params = signature::parse_query(query.as_deref())
        .map_err(|e| ApiError::new(StatusCode::UNAUTHORIZED, e.to_string()))?;
    let limit = config.limits.max_request_body;
    if declared_length(&req).is_some_and(|n| n > limit as u64) {
        return Err(too_large(limit));
    }
    // Everything the query proves is checked before the body is read (it may be large and
    // slow): a request not signed by the app costs no body read and no MD5.
    let now = crate::clock::unix_secs();
    let apps = worker.shared.apps.load_full();
    let (app, app_cfg) = authorize(&apps, &path, &method, app_id, &params, now, config)?;
    if !app_cfg
        .counters
        .allow_api_request(now, app_cfg.max_api_requests_per_second)
    {
        worker.stats.limited(LimitedBy::ApiRequests);
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "rate limit: this app may make {} API requests per second",
                app_cfg.max_api_requests_per_second
            ),
        ));
    }
    let body = read_body::<R>(req, limit).await?;
    // Apps reloaded while the body arrived: the request is judged by the apps as they are
    // now (a disabled app, a new secret).
    let current = worker.shared.apps.load_full();
    let app = if std::sync::Arc::ptr_eq(&apps, &current) {
        app
    } else {
        authorize(&current, &path, &method, app_id, &params, now, config)?.0
    };
    signature::verify_body(&params, &body)
        .map_err(|e| ApiError::new(StatusCode::UNAUTHORIZED, e.to_string()))?;

    match route {
        Route::Events => events::trigger::<R>(worker, app, &body).await,
        Route::BatchEvents => events::trigger_batch::<R>(worker, app, &body).await,
        Route::Channels => channels::list(worker, app, &params).await,
        Route::Channel(name) => channels::info(worker, app, &decode_segment(name)?, &params).await,
        Route::ChannelUsers(name) => channels::users(worker, app, &decode_segment(name)?).await,
        Route::TerminateConnections(user) => {
            let user = decode_segment(user)?;
            if user.is_empty() {
                return Err(ApiError::bad_request("missing user id"));
            }
            let msg = crate::hub::broker::UserMsg::Terminate {
                app,
                user: user.into(),
            };
            worker.send_to_users(msg).await?;
            Ok(Bytes::from_static(b"{}"))
        }
    }
}

/// A broker that cannot answer: 503, like a full inbox.
fn unavailable(e: crate::hub::BrokerError) -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
}

fn decode_segment(s: &str) -> Result<String, ApiError> {
    percent_decode(s).ok_or_else(|| ApiError::bad_request("invalid percent-encoding in path"))
}

/// Decodes a percent-encoded path segment (`%XX` escapes; `+` stays `+`); `None` when an
/// escape is malformed or the result is not UTF-8.
pub fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The app a request names (by id under `/apps/`, else by its `auth_key`), if its query
/// is signed by it (key, timestamp window, HMAC) and it is enabled.
fn authorize(
    apps: &crate::app::Apps,
    path: &str,
    method: &Method,
    app_id: &str,
    params: &signature::Params,
    now: u64,
    config: &crate::config::Config,
) -> Result<(crate::app::AppIdx, std::sync::Arc<crate::app::App>), ApiError> {
    let app = if path.starts_with("/apps/") {
        apps.by_id(app_id).ok_or_else(|| {
            ApiError::new(StatusCode::NOT_FOUND, format!("unknown app id {app_id:?}"))
        })?
    } else {
        let key = params.get("auth_key").map_or("", String::as_str);
        apps.by_key(key).ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                format!("unknown auth_key {key:?}"),
            )
        })?
    };
    let app_cfg = apps.get(app).clone();
    signature::verify_query(
        method.as_str(),
        path,
        params,
        &app_cfg.key,
        &app_cfg.secret,
        now,
        config.limits.timestamp_window,
    )
    .map_err(|e| ApiError::new(StatusCode::UNAUTHORIZED, e.to_string()))?;
    if !app_cfg.enabled {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "application is disabled",
        ));
    }
    Ok((app, app_cfg))
}

/// The request's `Content-Length`, if it has a valid one.
fn declared_length(req: &Request<Incoming>) -> Option<u64> {
    req.headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("request body exceeds {limit} bytes"),
    )
}

async fn read_body<R: Runtime>(req: Request<Incoming>, limit: usize) -> Result<Bytes, ApiError> {
    let collect = Limited::new(req.into_body(), limit).collect();
    let collected = tokio::select! {
        biased;
        r = collect => r,
        _ = R::sleep(BODY_READ_TIMEOUT) => {
            return Err(ApiError::new(StatusCode::REQUEST_TIMEOUT, "request body not received in time"));
        }
    };
    match collected {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large(limit)),
        Err(e) => Err(ApiError::bad_request(format!(
            "could not read the body: {e}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_name_the_endpoint_and_its_method() {
        let post = Method::POST;
        let get = Method::GET;
        assert_eq!(route("/apps/1/events", &post), Ok(("1", Route::Events)));
        assert_eq!(
            route("/apps/1/batch_events", &post),
            Ok(("1", Route::BatchEvents))
        );
        assert_eq!(route("/apps/1/channels", &get), Ok(("1", Route::Channels)));
        assert_eq!(
            route("/apps/1/channels/a", &get),
            Ok(("1", Route::Channel("a")))
        );
        assert_eq!(
            route("/apps/1/channels/presence-a/users", &get),
            Ok(("1", Route::ChannelUsers("presence-a")))
        );
        assert_eq!(
            route("/apps/1/users/u/terminate_connections", &post),
            Ok(("1", Route::TerminateConnections("u")))
        );
        assert_eq!(
            route("/users/u/terminate_connections", &post),
            Ok(("", Route::TerminateConnections("u"))),
            "pusher-http-python leaves out the app"
        );
    }

    #[test]
    fn deprecated_and_unknown_endpoints_are_404_and_wrong_methods_405() {
        for path in [
            "/apps/1/channels/a/events",
            "/apps/1/channels/a/stats",
            "/apps/1/nope",
        ] {
            let e = route(path, &Method::POST).unwrap_err();
            assert_eq!(e.status, StatusCode::NOT_FOUND, "{path}");
        }
        let e = route("/apps/1/events", &Method::GET).unwrap_err();
        assert_eq!(e.status, StatusCode::METHOD_NOT_ALLOWED);
        assert!(e.message.contains("use POST"), "{}", e.message);
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(
            percent_decode("presence-a%40b").as_deref(),
            Some("presence-a@b")
        );
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%4"), None);
        assert_eq!(percent_decode("plain"), Some("plain".into()));
    }
}
