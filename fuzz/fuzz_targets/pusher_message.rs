//! Arbitrary text through everything that parses client- or publisher-supplied strings:
//! Pusher client messages, channel names, socket ids, API query strings and request bodies.
//! None may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringcast::api::json;
use ringcast::protocol::{channel, client, signature, SocketId};

#[derive(serde::Deserialize)]
#[allow(dead_code)]
struct Body {
    #[serde(deserialize_with = "json::string_or_json")]
    data: String,
    channels: Option<Vec<String>>,
}

fuzz_target!(|input: &[u8]| {
    if let Ok(text) = std::str::from_utf8(input) {
        if let Ok(client::ClientMessage::Subscribe(s)) = client::parse(text) {
            let _ = channel::parse(&s.channel);
        }
        let _ = channel::parse(text);
        if let Some(id) = SocketId::parse(text) {
            assert_eq!(SocketId::parse(&id.to_string()), Some(id));
        }
        if let Ok(params) = signature::parse_query(Some(text)) {
            let _ = signature::string_to_sign("POST", "/apps/1/events", &params);
        }
    }
    let body = bytes::Bytes::copy_from_slice(input);
    let _ = json::from_body::<Body>(&body, json::Shape::Event);
    let _ = json::from_body::<Body>(&body, json::Shape::Batch);
});
