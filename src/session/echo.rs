//! The plain RFC 6455 echo endpoint (`--echo-path`): every message comes back as it was
//! sent. It runs the same framing code as Pusher connections, so the Autobahn suite can
//! check that code.

use crate::hub::Conn;
use crate::ws::codec::{self, OpCode};
use crate::ws::Message;

/// Echoes a text or binary message.
pub(super) fn echo(conn: &Conn, msg: Message) {
    let frame = match msg {
        Message::Text(t) => codec::encode(OpCode::Text, &t),
        Message::Binary(b) => codec::encode(OpCode::Binary, &b),
        Message::Ping(_) | Message::Pong(_) | Message::Close(_) => return,
    };
    conn.push(frame);
}
