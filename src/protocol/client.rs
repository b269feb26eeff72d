//! Client→server messages.
//!
//! Control messages are small (tens of bytes), where serde_json parses faster than
//! simd-json (see `benches/json.rs`), so they are parsed with serde_json.

use std::borrow::Cow;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::value::RawValue;

/// A parsed client message.
#[derive(Debug, PartialEq)]
pub enum ClientMessage<'a> {
    /// `pusher:ping`.
    Ping,
    /// `pusher:pong`.
    Pong,
    /// `pusher:subscribe`.
    Subscribe(Subscribe),
    /// `pusher:unsubscribe`.
    Unsubscribe(Unsubscribe),
    /// `pusher:signin`.
    Signin(Signin),
    /// A `client-*` event.
    ClientEvent {
        /// Event name, starting with `client-`.
        event: Cow<'a, str>,
        /// Channel it is sent on.
        channel: Option<Cow<'a, str>>,
        /// Raw JSON text of `data`.
        data: Option<&'a str>,
    },
    /// Any other event name.
    Unknown(Cow<'a, str>),
}

/// `pusher:subscribe` data.
#[derive(Debug, PartialEq, Deserialize)]
pub struct Subscribe {
    /// Channel name.
    pub channel: String,
    /// `key:signature` for private and presence channels.
    #[serde(default)]
    pub auth: Option<String>,
    /// Presence member data, as the exact JSON string that was signed.
    #[serde(default)]
    pub channel_data: Option<String>,
}

/// `pusher:signin` data.
#[derive(Debug, PartialEq, Deserialize)]
pub struct Signin {
    /// `key:signature` over `socket_id::user::user_data`.
    pub auth: String,
    /// The user, as the exact JSON string that was signed.
    pub user_data: String,
}

/// `pusher:unsubscribe` data.
#[derive(Debug, PartialEq, Deserialize)]
pub struct Unsubscribe {
    /// Channel name.
    pub channel: String,
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    event: Cow<'a, str>,
    #[serde(borrow, default)]
    channel: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
}

/// Why a client message is refused; the connection stays open and gets `pusher:error`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Not JSON, or not an object with a string `event`.
    #[error("Invalid message format: expected a JSON object with a string \"event\"")]
    InvalidJson,
    /// `data` is missing or of the wrong shape for the event.
    #[error("Invalid data for {event}: {detail}")]
    InvalidData {
        /// The event.
        event: &'static str,
        /// What is wrong.
        detail: String,
    },
}

/// Parses `data`, which clients send as an object or as a JSON string holding the object.
fn parse_data<T: DeserializeOwned>(
    event: &'static str,
    raw: Option<&RawValue>,
) -> Result<T, ParseError> {
    let invalid = |e: serde_json::Error| ParseError::InvalidData {
        event,
        detail: e.to_string(),
    };
    let raw = raw.ok_or(ParseError::InvalidData {
        event,
        detail: "missing data".into(),
    })?;
    if raw.get().starts_with('"') {
        let inner: String = serde_json::from_str(raw.get()).map_err(invalid)?;
        return serde_json::from_str(&inner).map_err(invalid);
    }
    serde_json::from_str(raw.get()).map_err(invalid)
}

/// Parses one client text message.
pub fn parse(text: &str) -> Result<ClientMessage<'_>, ParseError> {
    let env: Envelope = serde_json::from_str(text).map_err(|_| ParseError::InvalidJson)?;
    Ok(match env.event.as_ref() {
        "pusher:ping" => ClientMessage::Ping,
        "pusher:pong" => ClientMessage::Pong,
        "pusher:subscribe" => ClientMessage::Subscribe(parse_data("pusher:subscribe", env.data)?),
        "pusher:unsubscribe" => {
            ClientMessage::Unsubscribe(parse_data("pusher:unsubscribe", env.data)?)
        }
        "pusher:signin" => ClientMessage::Signin(parse_data("pusher:signin", env.data)?),
        e if e.starts_with("client-") => ClientMessage::ClientEvent {
            event: env.event,
            channel: env.channel,
            data: env.data.map(RawValue::get),
        },
        _ => ClientMessage::Unknown(env.event),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscribe_with_object_or_string_data() {
        let want = ClientMessage::Subscribe(Subscribe {
            channel: "my-channel".into(),
            auth: Some(String::new()),
            channel_data: None,
        });
        assert_eq!(
            parse(r#"{"event":"pusher:subscribe","data":{"auth":"","channel":"my-channel"}}"#)
                .unwrap(),
            want
        );
        assert_eq!(
            parse(r#"{"event":"pusher:subscribe","data":"{\"auth\":\"\",\"channel\":\"my-channel\"}"}"#)
                .unwrap(),
            want
        );
    }

    #[test]
    fn ping_and_unknown() {
        assert_eq!(
            parse(r#"{"event":"pusher:ping","data":{}}"#).unwrap(),
            ClientMessage::Ping
        );
        assert_eq!(
            parse(r#"{"event":"whatever"}"#).unwrap(),
            ClientMessage::Unknown("whatever".into())
        );
    }

    #[test]
    fn malformed_messages() {
        assert_eq!(parse("not json"), Err(ParseError::InvalidJson));
        assert_eq!(parse(r#"{"data":{}}"#), Err(ParseError::InvalidJson));
        assert_eq!(parse(r#"[1,2]"#), Err(ParseError::InvalidJson));
        assert!(matches!(
            parse(r#"{"event":"pusher:subscribe"}"#),
            Err(ParseError::InvalidData { .. })
        ));
        assert!(matches!(
            parse(r#"{"event":"pusher:subscribe","data":{"channel":5}}"#),
            Err(ParseError::InvalidData { .. })
        ));
    }

    #[test]
    fn client_events_keep_raw_data() {
        let m = parse(r#"{"event":"client-typing","channel":"private-a","data":{"x":1}}"#).unwrap();
        let ClientMessage::ClientEvent {
            event,
            channel,
            data,
        } = m
        else {
            panic!()
        };
        assert_eq!(event, "client-typing");
        assert_eq!(channel.as_deref(), Some("private-a"));
        assert_eq!(data, Some(r#"{"x":1}"#));
    }
}
