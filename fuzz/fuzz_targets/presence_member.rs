//! Presence `channel_data` and sign-in `user_data`, as clients send them: parsing never
//! panics, and what is accepted makes well-formed member and watchlist events.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringcast::protocol::messages;
use ringcast::pusher::subscribe::parse_member;
use ringcast::pusher::user::{parse_user, watchlist_changed};

fuzz_target!(|input: &[u8]| {
    let Ok(text) = std::str::from_utf8(input) else {
        return;
    };
    if let Ok(member) = parse_member(text, 1024) {
        assert!(!member.user_id.is_empty() && member.user_id.len() <= 128);
        // Valid JSON text (numbers beyond f64 included, as clients relay them).
        assert!(serde_json::from_str::<serde::de::IgnoredAny>(&member.user_info).is_ok());
        let frame = messages::member_added("presence-room", &member.user_id, &member.user_info);
        let event = frame_json(&frame);
        // Only the id is read back: user_info is relayed as the client wrote it (numbers
        // beyond f64 included, which serde_json::Value cannot hold).
        #[derive(serde::Deserialize)]
        struct Data {
            user_id: String,
        }
        let data: Data = serde_json::from_str(event["data"].as_str().unwrap()).unwrap();
        assert_eq!(data.user_id, &*member.user_id);
        let frame = messages::member_removed("presence-room", &member.user_id);
        frame_json(&frame);
    }
    if let Ok(user) = parse_user(text) {
        assert!(!user.id.is_empty() && user.id.len() <= 128);
        frame_json(&watchlist_changed(&user.id, true));
    }
});

/// The JSON text of a server text frame (2- or 4-byte header, unmasked).
fn frame_json(frame: &[u8]) -> serde_json::Value {
    let header = if frame[1] & 0x7F == 126 { 4 } else { 2 };
    serde_json::from_slice(&frame[header..]).expect("a server frame carries JSON")
}
