//! The plain RFC 6455 echo endpoint (`--echo-path`): every message comes back as it was
//! sent. It runs the same framing code as Pusher connections, so the Autobahn suite can
//! check that code.

use std::rc::Rc;

use super::conn::Conn;
use super::Handler;
use crate::worker::Worker;
use crate::ws::codec::{self, OpCode};
use crate::ws::Message;

pub(super) struct Echo;

impl Handler for Echo {
    fn on_message(&mut self, _worker: &Worker, conn: &Rc<Conn>, msg: Message) {
        let frame = match msg {
            Message::Text(t) => codec::encode(OpCode::Text, &t),
            Message::Binary(b) => codec::encode(OpCode::Binary, &b),
            Message::Ping(p) => codec::encode(OpCode::Pong, &p),
            Message::Pong(_) | Message::Close(_) => return,
        };
        conn.push(frame);
    }
}
