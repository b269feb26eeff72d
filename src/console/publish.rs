//! The console's publish form: the event is signed with the app's secret and sent to this
//! node's own HTTP API, so it takes exactly the path of a server SDK's publish (signature,
//! limits, rate, webhooks, other nodes) and gets the same answer.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::{Request, Response, StatusCode};
use serde_json::{json, Value};

use super::{reply, Console, Failure};
use crate::app::AppIdx;
use crate::metrics::listener::Body;
use crate::protocol::signature;

/// Longest the API may take to answer.
const TIMEOUT: Duration = Duration::from_secs(10);
/// Largest answer read back.
const MAX_ANSWER: usize = 64 * 1024;

/// An HTTP/1.1 client connection over `io`, driven in a task of its own.
async fn handshake<T>(io: T) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>, String>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    Ok(sender)
}

/// The address to reach a listener bound to `bound` from this host: a wildcard address
/// becomes the loopback one.
pub(super) fn reachable(bound: SocketAddr) -> SocketAddr {
    let ip = match bound.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, bound.port())
}

/// `POST /console/api/apps/{id}/events` with `{"channel", "name", "data", "socket_id"?}`:
/// answers with the HTTP API's status and body.
pub(super) async fn publish(
    console: &Console,
    app: AppIdx,
    form: Value,
) -> Result<Response<Body>, Failure> {
    let field = |name: &str| form[name].as_str().map(str::to_string);
    let channel = field("channel")
        .filter(|c| !c.is_empty())
        .ok_or_else(|| Failure::new(StatusCode::BAD_REQUEST, "name the channel to publish to"))?;
    let name = field("name")
        .filter(|n| !n.is_empty())
        .ok_or_else(|| Failure::new(StatusCode::BAD_REQUEST, "name the event"))?;
    let data = match &form["data"] {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    };
    let mut event = json!({ "name": name, "channel": channel, "data": data });
    if let Some(s) = field("socket_id").filter(|s| !s.is_empty()) {
        event["socket_id"] = s.into();
    }
    let (id, key, secret) = {
        let apps = console.shared.apps.load();
        let a = apps.get(app);
        (a.id.clone(), a.key.clone(), a.secret.clone())
    };
    let body = Bytes::from(event.to_string());
    let path = format!("/apps/{id}/events");
    let mut params = signature::Params::new();
    params.insert("auth_key".into(), key);
    params.insert(
        "auth_timestamp".into(),
        crate::clock::unix_secs().to_string(),
    );
    params.insert("auth_version".into(), "1.0".into());
    params.insert("body_md5".into(), signature::body_md5(&body));
    let sig = signature::sign(&secret, &signature::string_to_sign("POST", &path, &params));
    params.insert("auth_signature".into(), sig);
    let query = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(params.iter())
        .finish();
    // The path as signed, as the server SDKs send it.
    let uri = format!("{path}?{query}");
    let addr = console.api;
    let tls = console.api_tls.clone();
    let (status, answer) = tokio::time::timeout(TIMEOUT, send(addr, tls, &uri, body))
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {TIMEOUT:?}")))
        .map_err(|e| {
            Failure::new(
                StatusCode::BAD_GATEWAY,
                format!("this node's HTTP API at {addr} could not be reached: {e}"),
            )
        })?;
    Ok(reply(status, "application/json", answer))
}

async fn send(
    addr: SocketAddr,
    tls: Option<Arc<rustls::ClientConfig>>,
    uri: &str,
    body: Bytes,
) -> Result<(StatusCode, Bytes), String> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let mut sender = match tls {
        None => handshake(stream).await?,
        Some(config) => {
            // The name is not checked: the certificate is pinned.
            let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
            let stream = tokio_rustls::TlsConnector::from(config)
                .connect(name, stream)
                .await
                .map_err(|e| format!("TLS: {e}"))?;
            handshake(stream).await?
        }
    };
    let req = Request::post(uri)
        .header(HOST, addr.to_string())
        .header(CONTENT_TYPE, "application/json")
        .header(
            hyper::header::USER_AGENT,
            concat!("ringcast-console/", env!("CARGO_PKG_VERSION")),
        )
        .body(Full::new(body))
        .map_err(|e| e.to_string())?;
    let res = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = res.status();
    let answer = http_body_util::Limited::new(res.into_body(), MAX_ANSWER)
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, answer))
}
