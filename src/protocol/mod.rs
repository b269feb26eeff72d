//! The Pusher Channels protocol (v7): client messages, server messages, channel names,
//! socket ids and close codes.

pub mod channel;
pub mod client;
pub mod codes;
pub mod messages;
pub mod socket_id;

pub use socket_id::{SocketId, SocketIdGen};
