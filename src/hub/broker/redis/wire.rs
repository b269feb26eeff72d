//! What travels between nodes over Redis pub/sub: an event (its encoded WebSocket frame,
//! as every subscriber receives it, with the socket to skip) or a user message. Binary, so
//! a frame crosses as it is: the receiving node fans out the very bytes the publishing node
//! encoded.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::protocol::SocketId;

const VERSION: u8 = 1;
/// Marks an event published by a script as JSON text (Lua cannot frame it): each receiving
/// node frames it once.
const JSON: u8 = 2;

/// Identifies a process, so a node can tell its own messages when they come back.
pub type Origin = [u8; 16];

/// The origin of a message every node (its publisher included) acts on.
pub const NOBODY: Origin = [0; 16];

/// An event received from another node (or published by a script for every node).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The process that published it, if its own subscribers already have it.
    pub origin: Option<Origin>,
    /// A connection that must not receive it.
    pub except: Option<SocketId>,
    /// The encoded frame.
    pub frame: Bytes,
}

/// Encodes an event; `origin` is the publishing process when it delivers to its own
/// subscribers itself, `None` when every node (that one included) delivers from Redis.
pub fn event(origin: Option<Origin>, except: Option<SocketId>, frame: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(31 + frame.len());
    b.put_u8(VERSION);
    b.put_u8(origin.is_some() as u8);
    b.put_slice(&origin.unwrap_or_default());
    match except {
        Some(s) => {
            b.put_u8(1);
            b.put_u32(s.random);
            b.put_u64(s.seq);
        }
        None => {
            b.put_u8(0);
            b.put_u32(0);
            b.put_u64(0);
        }
    }
    b.put_slice(frame);
    b.freeze()
}

/// Decodes an event; `None` for anything else.
pub fn parse_event(payload: &[u8]) -> Option<Event> {
    if payload.first() == Some(&JSON) {
        std::str::from_utf8(&payload[1..]).ok()?;
        return Some(Event {
            origin: None,
            except: None,
            frame: crate::ws::codec::encode(crate::ws::codec::OpCode::Text, &payload[1..]),
        });
    }
    if payload.len() < 31 || payload[0] != VERSION {
        return None;
    }
    let mut p = &payload[1..];
    let has_origin = p.get_u8() == 1;
    let mut origin = Origin::default();
    p.copy_to_slice(&mut origin);
    let has_except = p.get_u8() == 1;
    let random = p.get_u32();
    let seq = p.get_u64();
    Some(Event {
        origin: has_origin.then_some(origin),
        except: has_except.then_some(SocketId { random, seq }),
        frame: Bytes::copy_from_slice(p),
    })
}

/// A user message between nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserMessage {
    /// The node that sent it (it applied the message to its own workers already).
    pub origin: Origin,
    /// The app's id (app indexes are each node's own).
    pub app_id: String,
    /// The user.
    pub user: String,
    /// What to tell.
    pub kind: UserKind,
}

/// What a user message tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserKind {
    /// Close the user's connections.
    Terminate = 1,
    /// The user came online.
    Online = 2,
    /// The user went offline.
    Offline = 3,
}

/// Encodes a user message.
pub fn user_message(m: &UserMessage) -> Bytes {
    let mut b = BytesMut::with_capacity(20 + m.app_id.len() + m.user.len());
    b.put_u8(VERSION);
    b.put_u8(m.kind as u8);
    b.put_slice(&m.origin);
    b.put_u16(m.app_id.len() as u16);
    b.put_slice(m.app_id.as_bytes());
    b.put_slice(m.user.as_bytes());
    b.freeze()
}

/// Decodes a user message; `None` for anything else.
pub fn parse_user_message(payload: &[u8]) -> Option<UserMessage> {
    if payload.len() < 20 || payload[0] != VERSION {
        return None;
    }
    let mut p = &payload[1..];
    let kind = match p.get_u8() {
        1 => UserKind::Terminate,
        2 => UserKind::Online,
        3 => UserKind::Offline,
        _ => return None,
    };
    let mut origin = Origin::default();
    p.copy_to_slice(&mut origin);
    let len = p.get_u16() as usize;
    if p.len() < len {
        return None;
    }
    let app_id = std::str::from_utf8(&p[..len]).ok()?.to_string();
    let user = std::str::from_utf8(&p[len..]).ok()?.to_string();
    Some(UserMessage {
        origin,
        app_id,
        user,
        kind,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_with_and_without_origin_and_except() {
        let origin = [7; 16];
        let except = SocketId { random: 9, seq: 12 };
        let frame = b"\x81\x02{}";
        let e = parse_event(&event(Some(origin), Some(except), frame)).unwrap();
        assert_eq!(
            e,
            Event {
                origin: Some(origin),
                except: Some(except),
                frame: Bytes::from_static(frame)
            }
        );
        let e = parse_event(&event(None, None, frame)).unwrap();
        assert_eq!((e.origin, e.except), (None, None));
        assert_eq!(parse_event(b"short"), None);
    }

    #[test]
    fn json_events_from_scripts_are_framed_on_receipt() {
        let e = parse_event(b"\x02{\"event\":\"e\"}").unwrap();
        assert_eq!(&e.frame[..], b"\x81\x0d{\"event\":\"e\"}");
        assert_eq!((e.origin, e.except), (None, None));
        assert_eq!(parse_event(b"\x02\xff"), None, "not UTF-8");
    }

    #[test]
    fn user_messages_round_trip() {
        let m = UserMessage {
            origin: [1; 16],
            app_id: "app/1".into(),
            user: "ann".into(),
            kind: UserKind::Offline,
        };
        assert_eq!(parse_user_message(&user_message(&m)), Some(m));
        assert_eq!(parse_user_message(&[VERSION, 9]), None);
    }
}
