//! WebSocket (RFC 6455): the sans-IO codec and the opening handshake. No permessage-deflate
//! and no subprotocols are negotiated.

pub mod codec;
pub mod handshake;

pub use codec::{close_code, DecodeError, Decoder, FrameBuilder, Message, OpCode};
