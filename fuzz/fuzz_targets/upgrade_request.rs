//! The WebSocket upgrade as a client sends it: arbitrary request heads parsed as hyper
//! would (httparse), then the handshake check and the `/app/{key}?protocol=` decision.
//! Nothing may panic, and an accepted handshake answers the RFC 6455 key.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringcast::app::{App, Apps};
use ringcast::ws::handshake;

fuzz_target!(|input: &[u8]| {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    let Ok(httparse::Status::Complete(_)) = req.parse(input) else {
        return;
    };
    let mut map = http::HeaderMap::new();
    for h in req.headers.iter() {
        let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(h.name.as_bytes()),
            http::HeaderValue::from_bytes(h.value),
        ) else {
            return;
        };
        map.append(name, value);
    }
    if let Ok(accept) = handshake::accept(&map) {
        let key = map.get("sec-websocket-key").unwrap().as_bytes();
        assert_eq!(accept.as_bytes(), handshake::accept_key(key).as_bytes());
    }
    let Some(path) = req.path else { return };
    let (path, query) = match path.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path, None),
    };
    if let Some(key) = path.strip_prefix("/app/") {
        let apps = Apps::new(vec![App::new("1", "app-key", "a-secret-long-enough")]).unwrap();
        let _ = ringcast::http::upgrade_protocol(&apps, key, query);
    }
});
