//! JSON request bodies: serde_json for small bodies, simd-json from
//! [`SIMD_JSON_THRESHOLD`] bytes, where it is faster (measured in `benches/json.rs`).

use std::fmt;

use bytes::Bytes;
use serde::de::{self, DeserializeOwned, Deserializer, Visitor};

/// Bodies at least this long are parsed with simd-json.
pub const SIMD_JSON_THRESHOLD: usize = 2048;

/// Parses a request body.
pub fn from_body<T: DeserializeOwned>(body: &Bytes) -> Result<T, String> {
    if body.len() >= SIMD_JSON_THRESHOLD {
        // simd-json parses in place, so it needs its own mutable copy.
        let mut copy = body.to_vec();
        simd_json::serde::from_slice(&mut copy).map_err(|e| e.to_string())
    } else {
        serde_json::from_slice(body).map_err(|e| e.to_string())
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
        for pad in [0usize, SIMD_JSON_THRESHOLD] {
            let ws = " ".repeat(pad);
            let body = Bytes::from(format!(r#"{{"data":"{{\"a\":1}}"{ws}}}"#));
            let e: Ev = from_body(&body).unwrap();
            assert_eq!(e.data, r#"{"a":1}"#);
            let body = Bytes::from(format!(r#"{{"data":{{"a":[1,true,null]}}{ws}}}"#));
            let e: Ev = from_body(&body).unwrap();
            assert_eq!(e.data, r#"{"a":[1,true,null]}"#);
        }
    }

    #[test]
    fn invalid_json_is_an_error_with_both_parsers() {
        assert!(from_body::<Ev>(&Bytes::from_static(b"{")).is_err());
        let big = format!("{{\"data\": {}", "1".repeat(SIMD_JSON_THRESHOLD));
        assert!(from_body::<Ev>(&Bytes::from(big)).is_err());
    }
}
