//! The Pusher protocol on an open connection: answering each client message.

use std::rc::Rc;

use super::conn::Conn;
use super::Handler;
use crate::app::AppIdx;
use crate::protocol::channel::{self, ChannelKind};
use crate::protocol::client::{self, ClientMessage, Subscribe};
use crate::protocol::messages;
use crate::worker::Worker;
use crate::ws::codec::{self, close_code, OpCode};
use crate::ws::Message;

/// Sends `pusher:connection_established`.
pub(super) fn on_open(worker: &Worker, conn: &Conn) {
    conn.push(messages::connection_established(
        conn.socket_id,
        worker.config().activity_timeout.as_secs(),
    ));
}

/// A connection of a valid app.
pub(super) struct Pusher {
    pub app: AppIdx,
}

impl Handler for Pusher {
    fn on_message(&mut self, worker: &Worker, conn: &Rc<Conn>, msg: Message) {
        match msg {
            Message::Text(text) => {
                let text = std::str::from_utf8(&text).expect("the decoder validated UTF-8");
                self.on_text(worker, conn, text);
            }
            Message::Binary(_) => {
                conn.close(
                    close_code::UNSUPPORTED_DATA,
                    "Binary frames are not supported: send JSON text messages",
                );
            }
            Message::Ping(payload) => {
                conn.push(codec::encode(OpCode::Pong, &payload));
            }
            Message::Pong(_) | Message::Close(_) => {}
        }
    }
}

impl Pusher {
    fn on_text(&self, worker: &Worker, conn: &Rc<Conn>, text: &str) {
        let msg = match client::parse(text) {
            Ok(m) => m,
            Err(e) => {
                conn.push(messages::error(None, &e.to_string()));
                return;
            }
        };
        match msg {
            ClientMessage::Ping => {
                conn.push(messages::pong());
            }
            ClientMessage::Pong => {}
            ClientMessage::Subscribe(s) => self.subscribe(worker, conn, s),
            ClientMessage::Unsubscribe(u) => {
                worker.unsubscribe(conn, self.app, &u.channel);
            }
            ClientMessage::Signin => {
                conn.push(messages::error(
                    None,
                    "pusher:signin is not supported by this server yet",
                ));
            }
            ClientMessage::ClientEvent { .. } => {
                conn.push(messages::error(
                    None,
                    "Client event rejected: client events are only supported on private and presence channels",
                ));
            }
            ClientMessage::Unknown(event) => {
                conn.push(messages::error(
                    None,
                    &format!("Unsupported event: {event}"),
                ));
            }
        }
    }

    fn subscribe(&self, worker: &Worker, conn: &Rc<Conn>, s: Subscribe) {
        let name = s.channel.as_str();
        let kind = match channel::parse(name) {
            Ok(k) => k,
            Err(e) => {
                conn.push(messages::subscription_error(
                    name,
                    "InvalidChannelName",
                    &e.to_string(),
                    400,
                ));
                return;
            }
        };
        if kind != ChannelKind::Public {
            conn.push(messages::subscription_error(
                name,
                "UnsupportedChannel",
                &format!(
                    "{} channels are not supported by this server yet",
                    kind_name(kind)
                ),
                501,
            ));
            return;
        }
        let limit = worker.config().limits.max_channels_per_connection;
        let already = worker.channels.contains(
            crate::hub::ChannelRef {
                app: self.app,
                name,
            },
            conn.id,
        );
        if !already && conn.channels.borrow().len() >= limit {
            conn.push(messages::subscription_error(
                name,
                "LimitReached",
                &format!("A connection may subscribe to at most {limit} channels"),
                429,
            ));
            return;
        }
        worker.subscribe(conn, self.app, name);
        conn.push(messages::subscription_succeeded(name));
    }
}

fn kind_name(kind: ChannelKind) -> &'static str {
    match kind {
        ChannelKind::Public => "public",
        ChannelKind::Cache => "cache",
        ChannelKind::Private => "private",
        ChannelKind::PrivateCache => "private cache",
        ChannelKind::PrivateEncrypted => "private encrypted",
        ChannelKind::PrivateEncryptedCache => "private encrypted cache",
        ChannelKind::Presence => "presence",
        ChannelKind::PresenceCache => "presence cache",
        ChannelKind::ServerToUser => "server-to-user",
    }
}
