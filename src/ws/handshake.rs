//! The WebSocket opening handshake (RFC 6455 §4.2): checking the client's upgrade request
//! and computing `Sec-WebSocket-Accept`.

use base64::Engine;
use hyper::header::{HeaderMap, HeaderValue, CONNECTION, UPGRADE};
use sha1::{Digest, Sha1};

const ACCEPT_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Why an upgrade request is refused; each maps to an HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// Not a WebSocket upgrade request at all (400).
    #[error("expected a WebSocket upgrade request (Connection: Upgrade, Upgrade: websocket)")]
    NotUpgrade,
    /// `Sec-WebSocket-Version` is not 13 (426 with `Sec-WebSocket-Version: 13`).
    #[error("unsupported Sec-WebSocket-Version: only 13 is supported")]
    UnsupportedVersion,
    /// `Sec-WebSocket-Key` is missing or is not 16 bytes in base64 (400).
    #[error("missing or malformed Sec-WebSocket-Key")]
    BadKey,
}

fn has_token(headers: &HeaderMap, name: hyper::header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

/// Whether the request asks for a WebSocket upgrade at all.
pub fn is_upgrade_request(headers: &HeaderMap) -> bool {
    has_token(headers, CONNECTION, "upgrade") && has_token(headers, UPGRADE, "websocket")
}

/// Checks an upgrade request and returns the `Sec-WebSocket-Accept` value to answer with.
pub fn accept(headers: &HeaderMap) -> Result<HeaderValue, HandshakeError> {
    if !is_upgrade_request(headers) {
        return Err(HandshakeError::NotUpgrade);
    }
    if headers
        .get("sec-websocket-version")
        .is_none_or(|v| v.as_bytes() != b"13")
    {
        return Err(HandshakeError::UnsupportedVersion);
    }
    let key = headers
        .get("sec-websocket-key")
        .ok_or(HandshakeError::BadKey)?
        .as_bytes();
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(key)
        .map_err(|_| HandshakeError::BadKey)?;
    if decoded.len() != 16 {
        return Err(HandshakeError::BadKey);
    }
    Ok(HeaderValue::from_str(&accept_key(key)).expect("base64 is a valid header value"))
}

/// `base64(SHA-1(key ‖ GUID))`.
pub fn accept_key(key: &[u8]) -> String {
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(ACCEPT_GUID);
    base64::engine::general_purpose::STANDARD.encode(sha.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc6455_accept_key_example() {
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn tokens_are_case_insensitive_and_listed() {
        let h = headers(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "WebSocket"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ]);
        assert_eq!(accept(&h).unwrap(), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn refusals() {
        assert_eq!(
            accept(&headers(&[("upgrade", "websocket")])),
            Err(HandshakeError::NotUpgrade)
        );
        let h = headers(&[
            ("connection", "upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-version", "8"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ]);
        assert_eq!(accept(&h), Err(HandshakeError::UnsupportedVersion));
        let h = headers(&[
            ("connection", "upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", "c2hvcnQ="),
        ]);
        assert_eq!(accept(&h), Err(HandshakeError::BadKey));
    }
}
