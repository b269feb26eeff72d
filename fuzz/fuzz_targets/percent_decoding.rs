//! Percent-decoding of API path segments (channel names, user ids): arbitrary text never
//! panics, and any string survives being encoded byte by byte and decoded.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringcast::api::percent_decode;

fuzz_target!(|input: &[u8]| {
    let Ok(text) = std::str::from_utf8(input) else {
        return;
    };
    let _ = percent_decode(text);
    let encoded: String = text.bytes().map(|b| format!("%{b:02X}")).collect();
    assert_eq!(percent_decode(&encoded).as_deref(), Some(text));
    let lower: String = text.bytes().map(|b| format!("%{b:02x}")).collect();
    assert_eq!(percent_decode(&lower).as_deref(), Some(text));
});
