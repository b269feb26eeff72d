//! Server→client messages, each encoded straight into a WebSocket text frame.
//!
//! Pusher double-encodes `data`: on the wire it is a JSON *string* holding JSON.

use std::sync::LazyLock;

use bytes::{BufMut, Bytes, BytesMut};

use crate::protocol::SocketId;
use crate::ws::{FrameBuilder, OpCode};

/// Appends `s` as a JSON string literal.
pub fn push_json_str(buf: &mut BytesMut, s: &str) {
    serde_json::to_writer(buf.writer(), s).expect("writing to memory cannot fail");
}

/// `{"event":"pusher:connection_established","data":"{\"socket_id\":…,\"activity_timeout\":…}"}`
pub fn connection_established(socket_id: SocketId, activity_timeout_secs: u64) -> Bytes {
    let data =
        format!(r#"{{"socket_id":"{socket_id}","activity_timeout":{activity_timeout_secs}}}"#);
    event_frame("pusher:connection_established", None, &data)
}

/// `pusher:error` with a close code (or `null`) and a message. Pusher sends `data` of
/// errors as an object, not a string.
pub fn error(code: Option<u16>, message: &str) -> Bytes {
    let mut b = FrameBuilder::with_capacity(64 + message.len());
    let p = b.payload();
    p.put_slice(br#"{"event":"pusher:error","data":{"code":"#);
    match code {
        Some(c) => p.put_slice(c.to_string().as_bytes()),
        None => p.put_slice(b"null"),
    }
    p.put_slice(br#","message":"#);
    push_json_str(p, message);
    p.put_slice(b"}}");
    b.finish(OpCode::Text)
}

/// `pusher:pong`, encoded once.
pub fn pong() -> Bytes {
    static PONG: LazyLock<Bytes> = LazyLock::new(|| event_frame("pusher:pong", None, "{}"));
    PONG.clone()
}

/// `pusher:ping`, encoded once.
pub fn ping() -> Bytes {
    static PING: LazyLock<Bytes> = LazyLock::new(|| event_frame("pusher:ping", None, "{}"));
    PING.clone()
}

/// `pusher_internal:subscription_succeeded` for a non-presence channel.
pub fn subscription_succeeded(channel: &str) -> Bytes {
    event_frame(
        "pusher_internal:subscription_succeeded",
        Some(channel),
        "{}",
    )
}

/// `pusher_internal:subscription_succeeded` with `data` (a presence channel's members).
pub fn subscription_succeeded_with(channel: &str, data: &str) -> Bytes {
    event_frame(
        "pusher_internal:subscription_succeeded",
        Some(channel),
        data,
    )
}

/// `pusher:subscription_error`, shaped as pusher-js reports auth failures so that
/// `channel.bind("pusher:subscription_error")` and Echo's `.error()` see it.
pub fn subscription_error(channel: &str, kind: &str, error: &str, status: u16) -> Bytes {
    let mut b = FrameBuilder::with_capacity(96 + channel.len() + error.len());
    let p = b.payload();
    p.put_slice(br#"{"event":"pusher:subscription_error","channel":"#);
    push_json_str(p, channel);
    p.put_slice(br#","data":{"type":"#);
    push_json_str(p, kind);
    p.put_slice(br#","error":"#);
    push_json_str(p, error);
    p.put_slice(br#","status":"#);
    p.put_slice(status.to_string().as_bytes());
    p.put_slice(b"}}");
    b.finish(OpCode::Text)
}

/// `pusher_internal:watchlist_events` with one `online` or `offline` event for `ids`.
pub fn watchlist_event(online: bool, ids: &[&str]) -> Bytes {
    let mut data = BytesMut::with_capacity(48 + ids.len() * 16);
    data.put_slice(br#"{"events":[{"name":""#);
    data.put_slice(if online { b"online" } else { b"offline" });
    data.put_slice(br#"","user_ids":["#);
    for (i, id) in ids.iter().enumerate() {
        if i > 0 {
            data.put_u8(b',');
        }
        push_json_str(&mut data, id);
    }
    data.put_slice(b"]}]}");
    event_frame(
        "pusher_internal:watchlist_events",
        None,
        std::str::from_utf8(&data).expect("built from UTF-8"),
    )
}

/// `pusher_internal:member_added` with the member's id and `user_info` (JSON text).
pub fn member_added(channel: &str, user_id: &str, user_info: &str) -> Bytes {
    let mut data = BytesMut::with_capacity(32 + user_id.len() + user_info.len());
    data.put_slice(br#"{"user_id":"#);
    push_json_str(&mut data, user_id);
    data.put_slice(br#","user_info":"#);
    data.put_slice(user_info.as_bytes());
    data.put_u8(b'}');
    event_frame(
        "pusher_internal:member_added",
        Some(channel),
        std::str::from_utf8(&data).expect("built from UTF-8"),
    )
}

/// `pusher_internal:member_removed` with the member's id.
pub fn member_removed(channel: &str, user_id: &str) -> Bytes {
    let mut data = BytesMut::with_capacity(16 + user_id.len());
    data.put_slice(br#"{"user_id":"#);
    push_json_str(&mut data, user_id);
    data.put_u8(b'}');
    event_frame(
        "pusher_internal:member_removed",
        Some(channel),
        std::str::from_utf8(&data).expect("built from UTF-8"),
    )
}

/// `pusher_internal:subscription_count` with the channel's subscriptions over the cluster.
pub fn subscription_count(channel: &str, count: u64) -> Bytes {
    let data = format!(r#"{{"subscription_count":{count}}}"#);
    event_frame("pusher_internal:subscription_count", Some(channel), &data)
}

/// `pusher:signin_success`, echoing the `user_data` the client signed in with.
pub fn signin_success(user_data: &str) -> Bytes {
    let mut data = BytesMut::with_capacity(16 + user_data.len() * 2);
    data.put_slice(br#"{"user_data":"#);
    push_json_str(&mut data, user_data);
    data.put_u8(b'}');
    event_frame(
        "pusher:signin_success",
        None,
        std::str::from_utf8(&data).expect("built from UTF-8"),
    )
}

/// The `subscription_succeeded` data of a presence channel, as pusher-js reads it:
/// `{"presence":{"ids":[…],"hash":{"id":info,…},"count":n}}`. `members` are (user id,
/// `user_info` JSON text) in joining order.
pub fn presence_data<'a>(
    members: impl ExactSizeIterator<Item = (&'a str, &'a str)> + Clone,
) -> String {
    let mut b = BytesMut::with_capacity(64 + members.len() * 48);
    b.put_slice(br#"{"presence":{"ids":["#);
    for (i, (id, _)) in members.clone().enumerate() {
        if i > 0 {
            b.put_u8(b',');
        }
        push_json_str(&mut b, id);
    }
    b.put_slice(br#"],"hash":{"#);
    let count = members.len();
    for (i, (id, info)) in members.enumerate() {
        if i > 0 {
            b.put_u8(b',');
        }
        push_json_str(&mut b, id);
        b.put_u8(b':');
        b.put_slice(info.as_bytes());
    }
    b.put_slice(br#"},"count":"#);
    b.put_slice(count.to_string().as_bytes());
    b.put_slice(b"}}");
    String::from_utf8(b.to_vec()).expect("built from UTF-8")
}

/// `{"event":"pusher:cache_miss","channel":…}`.
pub fn cache_miss(channel: &str) -> Bytes {
    let mut b = FrameBuilder::with_capacity(48 + channel.len());
    let p = b.payload();
    p.put_slice(br#"{"event":"pusher:cache_miss","channel":"#);
    push_json_str(p, channel);
    p.put_u8(b'}');
    b.finish(OpCode::Text)
}

/// A client event as other subscribers receive it: `data` exactly as the sender wrote it
/// (already-validated JSON text), plus the sender's `user_id` on presence channels.
pub fn client_event(
    event: &str,
    channel: &str,
    data: Option<&str>,
    user_id: Option<&str>,
) -> Bytes {
    let data = data.unwrap_or("null");
    let mut b = FrameBuilder::with_capacity(48 + event.len() + channel.len() + data.len());
    let p = b.payload();
    p.put_slice(br#"{"event":"#);
    push_json_str(p, event);
    p.put_slice(br#","channel":"#);
    push_json_str(p, channel);
    p.put_slice(br#","data":"#);
    p.put_slice(data.as_bytes());
    if let Some(u) = user_id {
        p.put_slice(br#","user_id":"#);
        push_json_str(p, u);
    }
    p.put_u8(b'}');
    b.finish(OpCode::Text)
}

/// An event on a channel (or, with `channel: None`, a connection-level event):
/// `{"event":…,"channel":…,"data":"…"}`. This is the frame fanned out to every subscriber.
pub fn event_frame(event: &str, channel: Option<&str>, data: &str) -> Bytes {
    let mut b = FrameBuilder::with_capacity(
        32 + event.len() + channel.map_or(0, str::len) + data.len() + data.len() / 8,
    );
    let p = b.payload();
    p.put_slice(br#"{"event":"#);
    push_json_str(p, event);
    if let Some(channel) = channel {
        p.put_slice(br#","channel":"#);
        push_json_str(p, channel);
    }
    p.put_slice(br#","data":"#);
    push_json_str(p, data);
    p.put_u8(b'}');
    b.finish(OpCode::Text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(frame: &Bytes) -> serde_json::Value {
        let start = match frame[1] {
            126 => 4,
            127 => 10,
            _ => 2,
        };
        serde_json::from_slice(&frame[start..]).unwrap()
    }

    #[test]
    fn connection_established_double_encodes_data() {
        let v = json(&connection_established(SocketId { random: 1, seq: 2 }, 120));
        assert_eq!(v["event"], "pusher:connection_established");
        let data: serde_json::Value = serde_json::from_str(v["data"].as_str().unwrap()).unwrap();
        assert_eq!(data["socket_id"], "1.2");
        assert_eq!(data["activity_timeout"], 120);
    }

    #[test]
    fn event_escapes_everything() {
        let v = json(&event_frame(
            "App\\Events\\Ship\"ped",
            Some("c"),
            "{\"a\":\"\u{1}é\"}",
        ));
        assert_eq!(v["event"], "App\\Events\\Ship\"ped");
        assert_eq!(v["channel"], "c");
        assert_eq!(v["data"], "{\"a\":\"\u{1}é\"}");
    }

    #[test]
    fn errors_carry_code_or_null() {
        let v = json(&error(Some(4001), "App key x not in this cluster"));
        assert_eq!(v["data"]["code"], 4001);
        let v = json(&error(None, "bad \"json\""));
        assert!(v["data"]["code"].is_null());
        assert_eq!(v["data"]["message"], "bad \"json\"");
    }

    #[test]
    fn client_events_keep_data_verbatim_and_add_the_user() {
        let v = json(&client_event(
            "client-typing",
            "presence-room",
            Some(r#"{"a":[1,2]}"#),
            Some("7"),
        ));
        assert_eq!(v["data"]["a"][1], 2);
        assert_eq!(v["user_id"], "7");
        let v = json(&client_event(
            "client-x",
            "private-a",
            Some(r#""text""#),
            None,
        ));
        assert_eq!(v["data"], "text");
        assert!(v.get("user_id").is_none());
    }

    #[test]
    fn watchlist_and_member_events() {
        let v = json(&watchlist_event(false, &["a", "b\"c"]));
        let data: serde_json::Value = serde_json::from_str(v["data"].as_str().unwrap()).unwrap();
        assert_eq!(data["events"][0]["name"], "offline");
        assert_eq!(data["events"][0]["user_ids"][1], "b\"c");
        let v = json(&member_added("presence-a", "1", r#"{"name":"Ann"}"#));
        let data: serde_json::Value = serde_json::from_str(v["data"].as_str().unwrap()).unwrap();
        assert_eq!(data["user_info"]["name"], "Ann");
        assert_eq!(json(&cache_miss("cache-x"))["channel"], "cache-x");
        let v = json(&member_removed("presence-a", "1"));
        assert_eq!(v["data"], r#"{"user_id":"1"}"#);
        let v = json(&subscription_count("news", 7));
        assert_eq!(v["data"], r#"{"subscription_count":7}"#);
    }

    #[test]
    fn presence_data_lists_ids_infos_and_count() {
        let members = [("1", r#"{"name":"Ann"}"#), ("b\"c", "null")];
        let data = presence_data(members.iter().copied());
        let v: serde_json::Value = serde_json::from_str(&data).unwrap();
        assert_eq!(v["presence"]["ids"], serde_json::json!(["1", "b\"c"]));
        assert_eq!(v["presence"]["hash"]["1"]["name"], "Ann");
        assert!(v["presence"]["hash"]["b\"c"].is_null());
        assert_eq!(v["presence"]["count"], 2);
        let empty = presence_data(std::iter::empty::<(&str, &str)>());
        assert_eq!(empty, r#"{"presence":{"ids":[],"hash":{},"count":0}}"#);
    }

    #[test]
    fn signin_success_echoes_user_data_as_a_string() {
        let v = json(&signin_success(r#"{"id":"1"}"#));
        assert_eq!(v["event"], "pusher:signin_success");
        let data: serde_json::Value = serde_json::from_str(v["data"].as_str().unwrap()).unwrap();
        assert_eq!(data["user_data"], r#"{"id":"1"}"#);
    }

    #[test]
    fn subscription_error_shape() {
        let v = json(&subscription_error("private-a", "AuthError", "no", 401));
        assert_eq!(v["channel"], "private-a");
        assert_eq!(v["data"]["type"], "AuthError");
        assert_eq!(v["data"]["status"], 401);
    }
}
