//! Who may use the console.
//!
//! * `--console-token` set: every API call needs the token, either as
//!   `Authorization: Bearer <token>` or as the session cookie that logging in sets (an
//!   HMAC of a fixed text under the token, so the cookie is not the token itself, and is
//!   invalidated by changing the token). Both are compared in constant time.
//! * No token: the console is served only while the metrics listener is on a loopback
//!   address ([`Access::Loopback`]), and only to requests whose `Host` is a loopback name
//!   or address, so a page on another site that rebinds its name to 127.0.0.1 is refused.
//!   On any other address it is off ([`Access::Disabled`]) and says why.
//!
//! Requests that change something (log in, publish) must be JSON, and a request carrying an
//! `Origin` must come from the console's own origin.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, COOKIE, HOST, ORIGIN, SET_COOKIE};
use hyper::{Method, Request, Response, StatusCode};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{json_reply, read_json_body, Failure};
use crate::metrics::listener::Body;

/// The session cookie's name.
const COOKIE_NAME: &str = "ringcast_console";
/// Failed logins allowed per second on this node (more are answered 429).
const FAILED_LOGINS_PER_SECOND: u64 = 5;

/// The console's access rule.
pub(super) enum Access {
    /// Anyone who can reach the loopback listener.
    Loopback,
    /// Those who know the token (kept as its SHA-256, and the session cookie's value).
    Token(Secret),
    /// Nobody: the listener is not on loopback and there is no token. Says why.
    Disabled(String),
}

pub(super) struct Secret {
    digest: [u8; 32],
    session: String,
    failures: AtomicU64,
}

fn sha256(s: &str) -> [u8; 32] {
    Sha256::digest(s.as_bytes()).into()
}

impl Access {
    /// The rule for a listener on `metrics_ip`, with `token` if one is set.
    pub(super) fn new(token: Option<&str>, metrics_ip: IpAddr) -> Self {
        match token {
            Some(t) => Access::Token(Secret {
                digest: sha256(t),
                session: crate::protocol::signature::sign(t, "ringcast console session v1"),
                failures: AtomicU64::new(0),
            }),
            None if metrics_ip.is_loopback() => Access::Loopback,
            None => Access::Disabled(format!(
                "the metrics listener is on {metrics_ip}, not a loopback address, and no \
                 --console-token is set: set one (at least 16 characters) to use the console \
                 there"
            )),
        }
    }

    /// Whether `req` may use the console API.
    pub(super) fn check(&self, req: &Request<Incoming>) -> Result<(), Failure> {
        same_origin(req)?;
        match self {
            Access::Disabled(why) => Err(Failure::new(StatusCode::FORBIDDEN, why.clone())),
            Access::Loopback if proxied(req) => Err(Failure::new(
                StatusCode::FORBIDDEN,
                "this request came through a proxy: a console reached through one needs \
                 --console-token",
            )),
            Access::Loopback => match loopback_host(req) {
                true => Ok(()),
                false => Err(Failure::new(
                    StatusCode::FORBIDDEN,
                    "without --console-token the console answers only requests for a \
                     loopback host (127.0.0.1, [::1] or localhost)",
                )),
            },
            Access::Token(secret) => match secret.admits(req) {
                true => Ok(()),
                false => Err(Failure {
                    extra: Some(("login", true)),
                    ..Failure::new(StatusCode::UNAUTHORIZED, "log in with the console token")
                }),
            },
        }
    }

    /// `POST /console/api/login` with `{"token": "…"}`: sets the session cookie.
    pub(super) async fn login(&self, req: Request<Incoming>) -> Result<Response<Body>, Failure> {
        let secret = match self {
            Access::Token(secret) => {
                same_origin(&req)?;
                Some(secret)
            }
            // Nothing to log in to: allowed exactly when the console is.
            _ => self.check(&req).map(|()| None)?,
        };
        if req.method() != Method::POST {
            return Err(Failure::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "log in with POST",
            ));
        }
        let Some(secret) = secret else {
            return Ok(json_reply(
                StatusCode::OK,
                &serde_json::json!({ "ok": true }),
            ));
        };
        let second = crate::clock::unix_secs();
        let failures = secret.failures.load(Ordering::Relaxed);
        if failures >> 32 == second & 0xffff_ffff
            && failures & 0xffff_ffff >= FAILED_LOGINS_PER_SECOND
        {
            return Err(Failure::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too many failed logins: wait a second",
            ));
        }
        let body = read_json_body(req).await?;
        let given = body["token"].as_str().unwrap_or("");
        if !bool::from(sha256(given).ct_eq(&secret.digest)) {
            let cur = secret.failures.load(Ordering::Relaxed);
            let next = match cur >> 32 == second & 0xffff_ffff {
                true => cur + 1,
                false => ((second & 0xffff_ffff) << 32) | 1,
            };
            secret.failures.store(next, Ordering::Relaxed);
            tracing::warn!("console login refused: wrong token");
            return Err(Failure::new(StatusCode::UNAUTHORIZED, "wrong token"));
        }
        let mut res = json_reply(StatusCode::OK, &serde_json::json!({ "ok": true }));
        let cookie = format!(
            "{COOKIE_NAME}={}; Path=/console; HttpOnly; SameSite=Strict",
            secret.session
        );
        res.headers_mut().insert(
            SET_COOKIE,
            cookie.parse().expect("a hex cookie is a valid header"),
        );
        Ok(res)
    }

    /// `POST /console/api/logout`: clears the session cookie.
    pub(super) fn logout(&self) -> Response<Body> {
        let mut res = json_reply(StatusCode::OK, &serde_json::json!({ "ok": true }));
        res.headers_mut().insert(
            SET_COOKIE,
            format!("{COOKIE_NAME}=; Path=/console; HttpOnly; SameSite=Strict; Max-Age=0")
                .parse()
                .expect("a valid header"),
        );
        res
    }
}

impl Secret {
    fn admits(&self, req: &Request<Incoming>) -> bool {
        let headers = req.headers();
        if let Some(token) = headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
        {
            return bool::from(sha256(token.trim()).ct_eq(&self.digest));
        }
        headers
            .get_all(COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|c| c.trim().strip_prefix(COOKIE_NAME)?.strip_prefix('='))
            .any(|v| bool::from(sha256(v).ct_eq(&sha256(&self.session))))
    }
}

/// Whether the request's `Host` names a loopback address or `localhost`.
fn loopback_host(req: &Request<Incoming>) -> bool {
    let Some(host) = req.headers().get(HOST).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    name.eq_ignore_ascii_case("localhost")
        || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Whether a proxy forwarded the request (a local reverse proxy makes any client look like
/// a loopback one).
fn proxied(req: &Request<Incoming>) -> bool {
    const FORWARDING: &[&str] = &[
        "forwarded",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-proto",
        "x-real-ip",
        "via",
    ];
    FORWARDING.iter().any(|h| req.headers().contains_key(*h))
}

/// Refuses a request a browser says comes from another site or another origin of this site
/// (`Sec-Fetch-Site`; another port of 127.0.0.1 is the same site), or whose `Origin` is not
/// the console's own (`Host`).
fn same_origin(req: &Request<Incoming>) -> Result<(), Failure> {
    if let Some(site) = req.headers().get("sec-fetch-site") {
        if site != "same-origin" && site != "none" {
            return Err(Failure::new(
                StatusCode::FORBIDDEN,
                "requests from other sites or origins are refused",
            ));
        }
    }
    let Some(origin) = req.headers().get(ORIGIN) else {
        return Ok(());
    };
    let host = req.headers().get(HOST).and_then(|v| v.to_str().ok());
    let origin_host = origin
        .to_str()
        .ok()
        .and_then(|o| o.split_once("://"))
        .map(|(_, h)| h);
    match (origin_host, host) {
        (Some(o), Some(h)) if o.eq_ignore_ascii_case(h) => Ok(()),
        _ => Err(Failure::new(
            StatusCode::FORBIDDEN,
            "cross-origin requests are refused",
        )),
    }
}
