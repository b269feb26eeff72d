//! JSON request bodies, parsed with whichever of serde_json and simd-json is faster for
//! their shape (measured in `benches/json.rs`, see docs/architecture.md):
//!
//! * single events (`/events`): a few fields and one long `data` string — serde_json is
//!   faster at every size (1.2–1.5×), so it is always used;
//! * batches (`/batch_events`) below [`SIMD_JSON_BATCH_MAX`] bytes: many short fields —
//!   simd-json is faster (about 1.3× at 1.8 KB); larger batches carry long strings again
//!   and go to serde_json.

use std::fmt;

use bytes::Bytes;
use serde::de::{self, DeserializeOwned, Deserializer, Visitor};

/// Batch bodies shorter than this are parsed with simd-json.
pub const SIMD_JSON_BATCH_MAX: usize = 4096;

/// The shape of a request body, which decides the parser.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// One event: few fields, one long string.
    Event,
    /// A batch of events: many short fields.
    Batch,
}

/// A request body that is not the JSON its endpoint expects (the parser's explanation).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidBody(String);

/// Parses a request body.
pub fn from_body<T: DeserializeOwned>(body: &Bytes, shape: Shape) -> Result<T, InvalidBody> {
    if shape == Shape::Batch && body.len() < SIMD_JSON_BATCH_MAX {
        // simd-json parses in place, so it needs its own mutable copy.
        let mut copy = body.to_vec();
        simd_json::serde::from_slice(&mut copy).map_err(|e| InvalidBody(e.to_string()))
    } else {
        serde_json::from_slice(body).map_err(|e| InvalidBody(e.to_string()))
    }
}

/// Deserializes event `data`: a string as it is (what the SDKs send), any other JSON value
/// as its compact JSON text.
pub fn string_or_json<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = String;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a string or any JSON value")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_string<E: de::Error>(self, v: String) -> Result<String, E> {
            Ok(v)
        }
        fn visit_bool<E: de::Error>(self, v: bool) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<String, E> {
            Ok(serde_json::Value::from(v).to_string())
        }
        fn visit_unit<E: de::Error>(self) -> Result<String, E> {
            Ok("null".into())
        }
        fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<String, A::Error> {
            let v: serde_json::Value =
                serde::Deserialize::deserialize(de::value::MapAccessDeserializer::new(map))?;
            Ok(v.to_string())
        }
        fn visit_seq<A: de::SeqAccess<'de>>(self, seq: A) -> Result<String, A::Error> {
            let v: serde_json::Value =
                serde::Deserialize::deserialize(de::value::SeqAccessDeserializer::new(seq))?;
            Ok(v.to_string())
        }
    }
    d.deserialize_any(V)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    struct Ev {
        #[serde(deserialize_with = "string_or_json")]
        data: String,
    }

    #[test]
    fn data_accepts_strings_and_objects_with_both_parsers() {
        for shape in [Shape::Event, Shape::Batch] {
            let body = Bytes::from_static(br#"{"data":"{\"a\":1}"}"#);
            let e: Ev = from_body(&body, shape).unwrap();
            assert_eq!(e.data, r#"{"a":1}"#);
            let body = Bytes::from_static(br#"{"data":{"a":[1,true,null,2.5,"s"]}}"#);
            let e: Ev = from_body(&body, shape).unwrap();
            assert_eq!(e.data, r#"{"a":[1,true,null,2.5,"s"]}"#);
        }
    }

    #[test]
    fn invalid_json_is_an_error_with_both_parsers() {
        for shape in [Shape::Event, Shape::Batch] {
            assert!(from_body::<Ev>(&Bytes::from_static(b"{"), shape).is_err());
            assert!(from_body::<Ev>(&Bytes::from_static(br#"{"data":"\ud800"}"#), shape).is_err());
        }
    }
}
