//! Pusher's signatures: HMAC-SHA256 with the app secret, hex encoded, compared in constant
//! time. They sign HTTP API requests, channel authorizations and sign-ins (checked here),
//! and webhooks (signed here).
//!
//! For an API request, the string to sign is `METHOD\nPATH\nQUERY`, where QUERY is every query parameter but
//! `auth_signature`, keys lower-cased, sorted by key, `key=value` joined with `&`, values
//! not URL-escaped. The signature is the hex HMAC-SHA256 of it with the app secret, and is
//! compared in constant time.

use std::collections::BTreeMap;

use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Why a request's signature is refused (401).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// A required parameter is absent.
    #[error("missing query parameter {0}")]
    Missing(&'static str),
    /// A parameter appears twice.
    #[error("query parameter {0} appears more than once")]
    Duplicate(String),
    /// `auth_key` is not the app's key.
    #[error("auth_key does not match this app")]
    WrongKey,
    /// `auth_version` is not `1.0`.
    #[error("unsupported auth_version: expected 1.0")]
    Version,
    /// `auth_timestamp` is not a Unix time in seconds.
    #[error("auth_timestamp is not a Unix time in seconds")]
    BadTimestamp,
    /// `auth_timestamp` is too far from the server's clock.
    #[error("auth_timestamp is {skew} s from the server clock; at most {window} s are allowed")]
    Expired {
        /// Seconds between the timestamp and now.
        skew: u64,
        /// The allowed window.
        window: u64,
    },
    /// The body is not empty and `body_md5` is absent.
    #[error("body_md5 is required with a request body")]
    MissingBodyMd5,
    /// `body_md5` does not match the body.
    #[error("body_md5 does not match the request body")]
    BodyMd5Mismatch,
    /// The signature is wrong.
    #[error("invalid signature: expected HMAC-SHA256 hex of {string_to_sign:?}")]
    Signature {
        /// What should have been signed (contains no secret).
        string_to_sign: String,
    },
}

/// The query parameters, keys lower-cased and values URL-decoded, sorted.
pub type Params = BTreeMap<String, String>;

/// Decodes a raw query string. Repeated keys are refused: a signature cannot cover them
/// unambiguously.
pub fn parse_query(raw: Option<&str>) -> Result<Params, SignatureError> {
    let mut params = Params::new();
    for (k, v) in form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
        let k = k.to_ascii_lowercase();
        if params.contains_key(&k) {
            return Err(SignatureError::Duplicate(k));
        }
        params.insert(k, v.into_owned());
    }
    Ok(params)
}

/// `METHOD\nPATH\nsorted query without auth_signature`.
pub fn string_to_sign(method: &str, path: &str, params: &Params) -> String {
    let query = params
        .iter()
        .filter(|(k, _)| k.as_str() != "auth_signature")
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    format!("{}\n{path}\n{query}", method.to_ascii_uppercase())
}

/// Hex HMAC-SHA256 of `message` with `secret`.
pub fn sign(secret: &str, message: &str) -> String {
    let mut mac = HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(message.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// Hex MD5 of a body.
pub fn body_md5(body: &[u8]) -> String {
    hex::encode(Md5::digest(body))
}

/// Whether `signature_hex` is the HMAC-SHA256 of `message` with `secret`, compared in
/// constant time.
pub fn verify_hmac(secret: &str, message: &str, signature_hex: &str) -> bool {
    let Ok(sig) = hex::decode(signature_hex) else {
        return false;
    };
    let mut mac = HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(message.as_bytes());
    mac.verify_slice(&sig).is_ok()
}

/// The request being checked.
pub struct Signed<'a> {
    /// HTTP method.
    pub method: &'a str,
    /// Path exactly as requested.
    pub path: &'a str,
    /// Decoded query.
    pub params: &'a Params,
    /// Raw body.
    pub body: &'a [u8],
}

/// Checks a request against the app's key and secret, `now` (Unix seconds) and the
/// timestamp window: [`verify_query`], then [`verify_body`].
pub fn verify(
    req: &Signed<'_>,
    key: &str,
    secret: &str,
    now: u64,
    window: u64,
) -> Result<(), SignatureError> {
    verify_query(req.method, req.path, req.params, key, secret, now, window)?;
    verify_body(req.params, req.body)
}

/// Checks what a request's query proves before its body is read: the key, the version,
/// the timestamp window and the HMAC (which covers `body_md5`, so [`verify_body`] then
/// ties the body to it).
pub fn verify_query(
    method: &str,
    path: &str,
    params: &Params,
    key: &str,
    secret: &str,
    now: u64,
    window: u64,
) -> Result<(), SignatureError> {
    let get = |k: &'static str| params.get(k).ok_or(SignatureError::Missing(k));
    if get("auth_key")? != key {
        return Err(SignatureError::WrongKey);
    }
    if get("auth_version")? != "1.0" {
        return Err(SignatureError::Version);
    }
    let ts = get("auth_timestamp")?;
    let ts: u64 = ts.parse().map_err(|_| SignatureError::BadTimestamp)?;
    let skew = now.abs_diff(ts);
    if skew > window {
        return Err(SignatureError::Expired { skew, window });
    }
    let signature = get("auth_signature")?;
    let message = string_to_sign(method, path, params);
    if !verify_hmac(secret, &message, signature) {
        return Err(SignatureError::Signature {
            string_to_sign: message,
        });
    }
    Ok(())
}

/// Checks the body against the signed `body_md5` (required when there is a body).
pub fn verify_body(params: &Params, body: &[u8]) -> Result<(), SignatureError> {
    match params.get("body_md5") {
        Some(md5) if !md5.eq_ignore_ascii_case(&body_md5(body)) => {
            Err(SignatureError::BodyMd5Mismatch)
        }
        None if !body.is_empty() => Err(SignatureError::MissingBodyMd5),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The worked example from Pusher's HTTP API documentation.
    const KEY: &str = "278d425bdf160c739803";
    const SECRET: &str = "7ad3773142a6692b25b8";
    const BODY: &str = r#"{"name":"foo","channels":["project-3"],"data":"{\"some\":\"data\"}"}"#;

    #[test]
    fn official_events_example_signs_and_verifies() {
        assert_eq!(
            body_md5(BODY.as_bytes()),
            "ec365a775a4cd0599faeb73354201b6f"
        );
        let q = "auth_key=278d425bdf160c739803&auth_timestamp=1353088179&auth_version=1.0&body_md5=ec365a775a4cd0599faeb73354201b6f&auth_signature=da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c";
        let params = parse_query(Some(q)).unwrap();
        assert_eq!(
            string_to_sign("POST", "/apps/3/events", &params),
            "POST\n/apps/3/events\nauth_key=278d425bdf160c739803&auth_timestamp=1353088179&auth_version=1.0&body_md5=ec365a775a4cd0599faeb73354201b6f"
        );
        let req = Signed {
            method: "POST",
            path: "/apps/3/events",
            params: &params,
            body: BODY.as_bytes(),
        };
        assert_eq!(verify(&req, KEY, SECRET, 1353088179, 600), Ok(()));
        // Within the window on either side, outside it refused.
        assert_eq!(verify(&req, KEY, SECRET, 1353088179 + 600, 600), Ok(()));
        assert!(matches!(
            verify(&req, KEY, SECRET, 1353088179 + 601, 600),
            Err(SignatureError::Expired { skew: 601, .. })
        ));
        assert!(matches!(
            verify(&req, KEY, SECRET, 1353088179 - 601, 600),
            Err(SignatureError::Expired { .. })
        ));
        let tampered = Signed {
            body: br#"{"name":"foo","channels":["project-4"],"data":"{}"}"#,
            ..req
        };
        assert_eq!(
            verify(&tampered, KEY, SECRET, 1353088179, 600),
            Err(SignatureError::BodyMd5Mismatch)
        );
        assert!(matches!(
            verify(&req, KEY, "wrong-secret", 1353088179, 600),
            Err(SignatureError::Signature { .. })
        ));
    }

    #[test]
    fn official_channel_auth_vectors() {
        assert_eq!(
            sign(SECRET, "1234.1234:private-foobar"),
            "58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4"
        );
        assert_eq!(
            sign(
                SECRET,
                r#"1234.1234:presence-foobar:{"user_id":10,"user_info":{"name":"Mr. Channels"}}"#
            ),
            "31935e7d86dba64c2a90aed31fdc61869f9b22ba9d8863bba239c03ca481bc80"
        );
        assert_eq!(
            sign(
                SECRET,
                r#"1234.1234:presence-foobar:{"user_id":10,"user_info":{"name":"Mr. Pusher"}}"#
            ),
            "afaed3695da2ffd16931f457e338e6c9f2921fa133ce7dac49f529792be6304c"
        );
        assert_eq!(
            sign(SECRET, r#"1234.1234::user::{"id":"12345"}"#),
            "4708d583dada6a56435fb8bc611c77c359a31eebde13337c16ab43aa6de336ba"
        );
        assert!(verify_hmac(
            SECRET,
            "1234.1234:private-foobar",
            "58DF8B0C36D6982B82C3ECF6B4662E34FE8C25BBA48F5369F135BF843651C3A4"
        ));
        assert!(!verify_hmac(SECRET, "1234.1234:private-foobar", "58df"));
        assert!(!verify_hmac(SECRET, "1234.1234:private-foobar", "not hex"));
    }

    #[test]
    fn query_keys_are_lowercased_decoded_and_unique() {
        let p = parse_query(Some("Info=user_count%2Csubscription_count&a=b")).unwrap();
        assert_eq!(p["info"], "user_count,subscription_count");
        assert_eq!(
            parse_query(Some("a=1&A=2")),
            Err(SignatureError::Duplicate("a".into()))
        );
    }

    #[test]
    fn missing_parameters_are_named() {
        let params = parse_query(Some("auth_key=k&auth_version=1.0")).unwrap();
        let req = Signed {
            method: "GET",
            path: "/apps/1/channels",
            params: &params,
            body: b"",
        };
        assert_eq!(
            verify(&req, "k", "s", 0, 600),
            Err(SignatureError::Missing("auth_timestamp"))
        );
    }
}
