//! Webhook events: what an app's backend is told about its channels, and the objects that
//! carry them in a webhook body (`{"time_ms":…,"events":[…]}`).

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::SocketId;

/// A webhook event type (also what an app's webhook filter lists).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A channel got its first subscriber.
    ChannelOccupied,
    /// A channel lost its last subscriber (sent after 3 s, unless re-occupied).
    ChannelVacated,
    /// A user joined a presence channel (first connection).
    MemberAdded,
    /// A user left a presence channel (last connection; sent after 3 s, unless back).
    MemberRemoved,
    /// A client event was sent.
    ClientEvent,
    /// A cache channel was subscribed to with nothing cached.
    CacheMiss,
    /// A channel's subscription count changed.
    SubscriptionCount,
}

impl Kind {
    /// Every event type.
    pub fn all() -> Vec<Self> {
        vec![
            Self::ChannelOccupied,
            Self::ChannelVacated,
            Self::MemberAdded,
            Self::MemberRemoved,
            Self::ClientEvent,
            Self::CacheMiss,
            Self::SubscriptionCount,
        ]
    }

    /// The name used in webhook bodies.
    pub fn name(self) -> &'static str {
        match self {
            Self::ChannelOccupied => "channel_occupied",
            Self::ChannelVacated => "channel_vacated",
            Self::MemberAdded => "member_added",
            Self::MemberRemoved => "member_removed",
            Self::ClientEvent => "client_event",
            Self::CacheMiss => "cache_miss",
            Self::SubscriptionCount => "subscription_count",
        }
    }
}

/// One webhook event object.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// What happened.
    pub kind: Kind,
    /// The channel.
    pub channel: Arc<str>,
    /// The user, for member events and client events on presence channels.
    pub user_id: Option<Arc<str>>,
    /// The fields only some kinds carry.
    pub detail: Detail,
    /// For a debounced leave decided by the cluster: the decision to confirm before it
    /// is sent (not part of the webhook body).
    pub confirm: Option<Arc<str>>,
}

/// Fields of a webhook event beyond its name, channel and user.
#[derive(Debug, Clone, PartialEq)]
pub enum Detail {
    /// Nothing more.
    None,
    /// A client event: its name, its `data` as a string, and the sender's socket id.
    ClientEvent {
        /// The event name (`client-…`).
        event: String,
        /// `data`: a string as sent, anything else as its JSON text.
        data: String,
        /// The sender.
        socket_id: SocketId,
    },
    /// The channel's subscription count now.
    SubscriptionCount(u64),
}

impl Event {
    /// An event of `kind` on `channel`, with nothing more.
    pub fn new(kind: Kind, channel: &str) -> Self {
        Self {
            kind,
            channel: Arc::from(channel),
            user_id: None,
            detail: Detail::None,
            confirm: None,
        }
    }

    /// The same event about `user`.
    pub fn with_user(mut self, user: &Arc<str>) -> Self {
        self.user_id = Some(user.clone());
        self
    }

    /// About how many bytes the event holds (its strings, plus the structure).
    pub fn size(&self) -> usize {
        let detail = match &self.detail {
            Detail::None => 0,
            Detail::ClientEvent { event, data, .. } => event.len() + data.len() + 48,
            Detail::SubscriptionCount(_) => 32,
        };
        128 + self.channel.len() + self.user_id.as_ref().map_or(0, |u| u.len()) + detail
    }

    /// The event object as it appears in a webhook body.
    pub fn to_json(&self) -> Value {
        let mut o = Map::new();
        o.insert("name".into(), self.kind.name().into());
        o.insert("channel".into(), (*self.channel).into());
        if let Some(u) = &self.user_id {
            o.insert("user_id".into(), (**u).into());
        }
        match &self.detail {
            Detail::None => {}
            Detail::ClientEvent {
                event,
                data,
                socket_id,
            } => {
                o.insert("event".into(), event.as_str().into());
                o.insert("data".into(), data.as_str().into());
                o.insert("socket_id".into(), socket_id.to_string().into());
            }
            Detail::SubscriptionCount(n) => {
                o.insert("subscription_count".into(), (*n).into());
            }
        }
        Value::Object(o)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_objects_carry_the_documented_fields() {
        let user = Arc::from("42");
        let e = Event::new(Kind::MemberAdded, "presence-room").with_user(&user);
        assert_eq!(
            serde_json::to_string(&e.to_json()).unwrap(),
            r#"{"name":"member_added","channel":"presence-room","user_id":"42"}"#
        );
        let mut e = Event::new(Kind::SubscriptionCount, "news");
        e.detail = Detail::SubscriptionCount(3);
        assert_eq!(
            serde_json::to_string(&e.to_json()).unwrap(),
            r#"{"name":"subscription_count","channel":"news","subscription_count":3}"#
        );
        let mut e = Event::new(Kind::ClientEvent, "private-a");
        e.detail = Detail::ClientEvent {
            event: "client-x".into(),
            data: r#"{"a":1}"#.into(),
            socket_id: SocketId { random: 1, seq: 2 },
        };
        assert_eq!(
            serde_json::to_string(&e.to_json()).unwrap(),
            r#"{"name":"client_event","channel":"private-a","event":"client-x","data":"{\"a\":1}","socket_id":"1.2"}"#
        );
    }
}
