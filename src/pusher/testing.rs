//! What the rules' unit tests share: a connection of an app with default settings, signed
//! messages, and readers for the frames the rules produce.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;
use serde_json::Value;

use super::*;
use crate::app::Webhook;
use crate::protocol::webhook::Kind;

pub(crate) const KEY: &str = "app-key";
pub(crate) const SECRET: &str = "app-secret";

/// A node where nothing is occupied unless a test says so.
#[derive(Default)]
pub(crate) struct FakeNode {
    pub occupied: HashSet<String>,
    pub channels_open: u64,
}

impl NodeView for FakeNode {
    fn occupied(&self, channel: ChannelRef<'_>) -> bool {
        self.occupied.contains(channel.name)
    }
    fn channels_open(&self) -> u64 {
        self.channels_open
    }
}

/// One connection of app 0, and what its rules see.
pub(crate) struct Test {
    pub conn: ConnState,
    pub app: App,
    pub limits: Limits,
    pub node: FakeNode,
    pub socket_id: SocketId,
    pub now: Tick,
    /// The member each presence channel was joined as.
    members: HashMap<String, Member>,
}

impl Test {
    pub fn new() -> Self {
        Self {
            conn: ConnState::new(0),
            app: App::new("1", KEY, SECRET),
            limits: Limits {
                max_channels: 0,
                ..Limits::defaults()
            },
            node: FakeNode::default(),
            socket_id: SocketId {
                random: 123,
                seq: 456,
            },
            now: 0,
            members: HashMap::new(),
        }
    }

    pub fn ctx(&self) -> Ctx<'_> {
        ctx(&self.app, &self.limits, self.now)
    }

    /// The effects of a client text message, as they are before any broker answers.
    pub fn text_unanswered(&mut self, text: &str) -> Vec<Effect> {
        let mut out = Vec::new();
        let ctx = ctx(&self.app, &self.limits, self.now);
        on_text(
            &mut self.conn,
            &ctx,
            self.socket_id,
            text,
            &self.node,
            &mut out,
        );
        out
    }

    /// The effects of a client text message, with a subscription's interest answered at
    /// once (as the one-node broker does).
    pub fn text(&mut self, text: &str) -> Vec<Effect> {
        let mut out = self.text_unanswered(text);
        let mut i = 0;
        while i < out.len() {
            if let Effect::Subscribe {
                channel, member, ..
            } = &out[i]
            {
                let (channel, member) = (channel.clone(), member.clone());
                subscribe::on_subscribed(&mut self.conn, &channel, member, &mut out);
            }
            if let Effect::JoinPresence {
                channel, member, ..
            } = &out[i]
            {
                self.members.insert(channel.to_string(), member.clone());
            }
            i += 1;
        }
        out
    }

    /// `key:signature` of `signed` with the app's secret.
    pub fn auth(&self, signed: &str) -> String {
        format!("{KEY}:{}", crate::protocol::signature::sign(SECRET, signed))
    }

    pub fn subscribe(
        &mut self,
        channel: &str,
        auth: Option<&str>,
        data: Option<&str>,
    ) -> Vec<Effect> {
        let msg = serde_json::json!({
            "event": "pusher:subscribe",
            "data": { "channel": channel, "auth": auth, "channel_data": data },
        });
        self.text(&msg.to_string())
    }

    pub fn subscribe_public(&mut self, channel: &str) -> Vec<Effect> {
        self.subscribe(channel, None, None)
    }

    /// A correctly signed presence subscription as `user`, named after itself.
    pub fn subscribe_presence(&mut self, channel: &str, user: &str) -> Vec<Effect> {
        let data =
            serde_json::json!({ "user_id": user, "user_info": { "name": user } }).to_string();
        let auth = self.auth(&format!("{}:{channel}:{data}", self.socket_id));
        self.subscribe(channel, Some(&auth), Some(&data))
    }

    /// The broker's answer to this connection's join of `channel`.
    pub fn joined(&mut self, channel: &str, joined: Joined) -> Vec<Effect> {
        let member = self
            .members
            .get(channel)
            .cloned()
            .unwrap_or_else(|| member("?"));
        let mut out = Vec::new();
        let ctx = ctx(&self.app, &self.limits, self.now);
        subscribe::on_joined(
            &mut self.conn,
            &ctx,
            &Arc::from(channel),
            &member,
            joined,
            &mut out,
        );
        out
    }

    /// A correctly signed sign-in as `user`, watching `watchlist`.
    pub fn signin(&mut self, user: &str, watchlist: &[&str]) -> Vec<Effect> {
        let data = serde_json::json!({ "id": user, "watchlist": watchlist }).to_string();
        let auth = self.auth(&format!("{}::user::{data}", self.socket_id));
        self.signin_with(&data, &auth)
    }

    pub fn signin_with(&mut self, user_data: &str, auth: &str) -> Vec<Effect> {
        let msg = serde_json::json!({
            "event": "pusher:signin",
            "data": { "user_data": user_data, "auth": auth },
        });
        self.text(&msg.to_string())
    }
}

/// The context of app 0 (the connection's state is borrowed apart from it).
fn ctx<'a>(app: &'a App, limits: &'a Limits, now: Tick) -> Ctx<'a> {
    Ctx {
        app: 0,
        settings: app,
        limits,
        now,
    }
}

pub(crate) fn member(id: &str) -> Member {
    Member {
        user_id: Arc::from(id),
        user_info: Arc::from("null"),
    }
}

/// One webhook URL wanting `kinds`.
pub(crate) fn webhooks_for(kinds: &[Kind]) -> Vec<Webhook> {
    vec![Webhook {
        url: "http://127.0.0.1:9/hooks".into(),
        events: kinds.to_vec(),
    }]
}

/// The frame an effect sends.
pub(crate) fn sent(e: &Effect) -> &Bytes {
    match e {
        Effect::Send(frame) => frame,
        other => panic!("not a Send: {other:?}"),
    }
}

/// A server frame's JSON.
pub(crate) fn frame_json(frame: &Bytes) -> Value {
    let start = match frame[1] & 0x7f {
        126 => 4,
        127 => 10,
        _ => 2,
    };
    serde_json::from_slice(&frame[start..]).expect("a JSON text frame")
}

/// A server frame's `data`, decoded from its string.
pub(crate) fn frame_data(frame: &Bytes) -> Value {
    match &frame_json(frame)["data"] {
        Value::String(s) => serde_json::from_str(s).expect("data holds JSON"),
        other => other.clone(),
    }
}

/// The `data` of the `pusher:subscription_error` among the effects.
pub(crate) fn subscription_error_of(out: &[Effect]) -> Value {
    let frame = out
        .iter()
        .find_map(|e| match e {
            Effect::Send(f) if frame_json(f)["event"] == "pusher:subscription_error" => Some(f),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no subscription_error in {out:?}"));
    frame_json(frame)["data"].clone()
}
