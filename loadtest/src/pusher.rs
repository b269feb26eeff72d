//! Pusher protocol messages as the harness needs them: built as bytes, recognised without
//! a full JSON parse on the receive path.

use std::sync::LazyLock;

use hmac::{Hmac, Mac};
use memchr::memmem::Finder;
use sha2::Sha256;

use crate::cli::{Target, WsTarget};
use crate::wsclient::text_frame;

/// The event name the harness publishes.
pub const EVENT: &str = "loadtest";

/// Hex HMAC-SHA256.
pub fn hmac_hex(secret: &str, message: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(message.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// The path to connect to at `ws`.
pub fn ws_path(target: &Target, ws: &WsTarget) -> String {
    format!(
        "{}/app/{}?protocol=7&client=ringcast-loadtest&version=0.1.0",
        ws.prefix, target.app_key
    )
}

/// A `pusher:subscribe` frame; private channels are signed with the app secret, as an
/// auth endpoint would.
pub fn subscribe(target: &Target, socket_id: &str, channel: &str) -> Vec<u8> {
    let auth = if channel.starts_with("private-") {
        let sig = hmac_hex(&target.app_secret, &format!("{socket_id}:{channel}"));
        format!("{}:{sig}", target.app_key)
    } else {
        String::new()
    };
    let msg = serde_json::json!({"event": "pusher:subscribe", "data": {"channel": channel, "auth": auth}});
    text_frame(msg.to_string().as_bytes())
}

/// A `pusher:subscribe` to presence `channel` as `channel_data` (`{"user_id":…}` JSON),
/// signed with the app secret as an auth endpoint would.
pub fn presence_subscribe(
    target: &Target,
    socket_id: &str,
    channel: &str,
    channel_data: &str,
) -> Vec<u8> {
    let sig = hmac_hex(
        &target.app_secret,
        &format!("{socket_id}:{channel}:{channel_data}"),
    );
    let auth = format!("{}:{sig}", target.app_key);
    let msg = serde_json::json!({"event": "pusher:subscribe", "data": {"channel": channel, "auth": auth, "channel_data": channel_data}});
    text_frame(msg.to_string().as_bytes())
}

/// A `pusher:pong` frame.
pub fn pong() -> Vec<u8> {
    text_frame(br#"{"event":"pusher:pong","data":{}}"#)
}

/// A `pusher:ping` frame.
pub fn ping() -> Vec<u8> {
    text_frame(br#"{"event":"pusher:ping","data":{}}"#)
}

/// A client event on `channel` carrying `data`.
pub fn client_event(channel: &str, data: &str) -> Vec<u8> {
    let msg =
        serde_json::json!({"event": format!("client-{EVENT}"), "channel": channel, "data": data});
    text_frame(msg.to_string().as_bytes())
}

/// What a received text message is, as far as the harness cares.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming<'a> {
    /// `pusher:connection_established`, with the socket id.
    Established(String),
    /// `pusher_internal:subscription_succeeded`.
    Subscribed,
    /// `pusher:subscription_error` (or `pusher:error`) with the raw message.
    Error(&'a [u8]),
    /// `pusher:ping`: must be answered.
    Ping,
    /// `pusher:pong`.
    Pong,
    /// A harness event: its data string (still JSON-escaped, which harness data never needs).
    Event(&'a [u8]),
    /// Anything else.
    Other,
}

static EVENT_KEY: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"event\":\""));
static DATA_KEY: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"data\":\""));

/// The event name and where it ends. Servers that put `event` first (Pusher, ringcast) take
/// the fast path; others are searched.
fn event_name(msg: &[u8]) -> Option<(&[u8], usize)> {
    let at = if msg.starts_with(b"{\"event\":\"") {
        10
    } else {
        EVENT_KEY.find(msg)? + 9
    };
    let end = memchr::memchr(b'"', &msg[at..])?;
    Some((&msg[at..at + end], at + end))
}

/// The string value of `"data":"…"` (no unescaping), searched from `from` and, failing
/// that, from the start.
fn data_str(msg: &[u8], from: usize) -> Option<&[u8]> {
    let at = match DATA_KEY.find(&msg[from..]) {
        Some(i) => from + i + 8,
        None => DATA_KEY.find(msg)? + 8,
    };
    let end = memchr::memchr(b'"', &msg[at..])?;
    Some(&msg[at..at + end])
}

/// Classifies a text message.
pub fn classify(msg: &[u8]) -> Incoming<'_> {
    let Some((name, end)) = event_name(msg) else {
        return Incoming::Other;
    };
    match name {
        b"loadtest" | b"client-loadtest" => {
            data_str(msg, end).map_or(Incoming::Other, Incoming::Event)
        }
        b"pusher:ping" => Incoming::Ping,
        b"pusher:pong" => Incoming::Pong,
        b"pusher_internal:subscription_succeeded" => Incoming::Subscribed,
        b"pusher:subscription_error" | b"pusher:error" => Incoming::Error(msg),
        b"pusher:connection_established" => {
            let v: Option<serde_json::Value> = serde_json::from_slice(msg).ok();
            let id = v
                .as_ref()
                .and_then(|v| v["data"].as_str())
                .and_then(|d| serde_json::from_str::<serde_json::Value>(d).ok())
                .and_then(|d| d["socket_id"].as_str().map(str::to_string));
            id.map_or(Incoming::Other, Incoming::Established)
        }
        _ => Incoming::Other,
    }
}

/// Event data: `"{seq} {intended_ns} {padding}"`, padded to `size` bytes.
pub fn event_data(seq: u64, intended_ns: u64, size: usize) -> String {
    let mut s = format!("{seq} {intended_ns} ");
    while s.len() < size {
        s.push('x');
    }
    s
}

/// Parses the sequence number and intended publish time out of event data.
pub fn parse_event_data(data: &[u8]) -> Option<(u64, u64)> {
    let mut parts = data.splitn(3, |b| *b == b' ');
    let num = |p: &[u8]| -> Option<u64> {
        if p.is_empty() || p.len() > 20 {
            return None;
        }
        p.iter().try_fold(0u64, |acc, &b| {
            b.is_ascii_digit()
                .then(|| acc.wrapping_mul(10).wrapping_add((b - b'0') as u64))
        })
    };
    Some((num(parts.next()?)?, num(parts.next()?)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_server_messages() {
        assert_eq!(
            classify(br#"{"event":"pusher:connection_established","data":"{\"socket_id\":\"1.2\",\"activity_timeout\":120}"}"#),
            Incoming::Established("1.2".into())
        );
        assert_eq!(
            classify(br#"{"event":"pusher:ping","data":"{}"}"#),
            Incoming::Ping
        );
        assert_eq!(
            classify(br#"{"channel":"c","event":"loadtest","data":"7 99 xx"}"#),
            Incoming::Event(b"7 99 xx")
        );
        assert_eq!(
            classify(br#"{"event":"pusher_internal:subscription_succeeded","channel":"c"}"#),
            Incoming::Subscribed
        );
        assert_eq!(classify(b"garbage"), Incoming::Other);
        // Field order differs between servers.
        assert_eq!(
            classify(br#"{"data":"1 2 x","channel":"c","event":"loadtest"}"#),
            Incoming::Event(b"1 2 x")
        );
    }

    #[test]
    fn event_data_round_trips_and_pads() {
        let d = event_data(42, 123456789, 100);
        assert_eq!(d.len(), 100);
        assert_eq!(parse_event_data(d.as_bytes()), Some((42, 123456789)));
        assert_eq!(parse_event_data(b"x y"), None);
        assert_eq!(parse_event_data(b"1"), None);
    }

    #[test]
    fn private_subscriptions_are_signed_like_an_auth_endpoint() {
        // The official private-channel vector: socket 1234.1234, private-foobar.
        assert_eq!(
            hmac_hex("7ad3773142a6692b25b8", "1234.1234:private-foobar"),
            "58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4"
        );
    }
}
