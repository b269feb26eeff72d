//! The Pusher Channels protocol (v7) on the wire: client messages, server messages, channel
//! names, socket ids, close codes, signatures and webhook events. Formats only; the rules
//! that decide what to send are in [`crate::pusher`].

pub mod channel;
pub mod client;
pub mod codes;
pub mod messages;
pub mod signature;
pub mod socket_id;
pub mod webhook;

pub use socket_id::{SocketId, SocketIdGen};

/// Longest event name, from a client or the HTTP API (Laravel names events after PHP
/// classes, so anything else goes).
pub const MAX_EVENT_NAME_LEN: usize = 200;

/// Longest user id (presence members, signed-in users).
pub const MAX_USER_ID_LEN: usize = 128;
