//! Arbitrary bytes, split at arbitrary points, through the WebSocket frame decoder: it must
//! never panic, never hand out invalid UTF-8 as text, and never buffer past its limit.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use ringcast::ws::{Decoder, Message};

fuzz_target!(|input: &[u8]| {
    let Some((&head, data)) = input.split_first() else { return };
    // The first byte picks the size limit and how the input is chunked.
    let limit = 16 + (head as usize % 16) * 1024;
    let chunk = 1 + (head as usize >> 4) * 7;
    let mut decoder = Decoder::new(limit);
    let mut buf = BytesMut::new();
    for piece in data.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(Message::Text(t))) => {
                    assert!(std::str::from_utf8(&t).is_ok());
                    assert!(t.len() <= limit);
                }
                Ok(Some(Message::Binary(b))) => assert!(b.len() <= limit),
                Ok(Some(Message::Ping(p) | Message::Pong(p))) => assert!(p.len() <= 125),
                Ok(Some(Message::Close(_))) => {}
                Ok(None) => break,
                Err(e) => {
                    assert!(matches!(e.close_code(), 1002 | 1007 | 1009));
                    return;
                }
            }
        }
    }
});
