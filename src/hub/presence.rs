//! Presence channels: who is in each, over all workers.
//!
//! A member is a user id; several connections of one user (tabs, devices, workers) are one
//! member, counted. `member_added` is for a user's first connection and `member_removed`
//! for its last, so the registry must see every join and leave of every worker: it is one
//! shared [`Sharded`] map. Joins and leaves happen per subscription, never per published
//! event, so its locks are off the fan-out path.

use std::sync::Arc;

use bytes::{BufMut, BytesMut};
use indexmap::IndexMap;

use crate::hub::sharded::Sharded;
use crate::hub::{ChannelKey, ChannelRef};
use crate::protocol::messages::push_json_str;

type FastState = foldhash::fast::RandomState;

struct Member {
    /// `user_info` as JSON text (`null` when absent).
    info: Arc<str>,
    /// Connections of this user subscribed to the channel.
    connections: u32,
}

#[derive(Default)]
struct Channel {
    members: IndexMap<Arc<str>, Member, FastState>,
}

/// The result of a join.
#[derive(Debug, PartialEq, Eq)]
pub enum Joined {
    /// The user's first connection: others are told `member_added`. Carries the
    /// `subscription_succeeded` data.
    First(String),
    /// Another connection of a user already present. Carries the same data.
    Again(String),
    /// The channel has `max` members already and this user is not one of them.
    Full,
}

/// Every presence channel's members.
#[derive(Default)]
pub struct PresenceRegistry {
    channels: Sharded<Channel>,
}

impl PresenceRegistry {
    /// Adds a connection of `user_id` to the channel.
    pub fn join(
        &self,
        key: &ChannelKey,
        user_id: &Arc<str>,
        info: &Arc<str>,
        max: usize,
    ) -> Joined {
        let r = ChannelRef {
            app: key.app,
            name: &key.name,
        };
        let mut shard = self.channels.lock(r);
        let channel = shard.entry(key.clone()).or_default();
        let first = if let Some(m) = channel.members.get_mut(user_id) {
            m.connections += 1;
            false
        } else if channel.members.len() >= max {
            if channel.members.is_empty() {
                shard.remove(&r);
            }
            return Joined::Full;
        } else {
            channel.members.insert(
                user_id.clone(),
                Member {
                    info: info.clone(),
                    connections: 1,
                },
            );
            true
        };
        let data = subscription_data(channel);
        if first {
            Joined::First(data)
        } else {
            Joined::Again(data)
        }
    }

    /// Removes a connection of `user_id`; returns whether that was the user's last, so the
    /// member left.
    pub fn leave(&self, key: ChannelRef<'_>, user_id: &str) -> bool {
        let mut shard = self.channels.lock(key);
        let Some(channel) = shard.get_mut(&key) else {
            return false;
        };
        let Some(m) = channel.members.get_mut(user_id) else {
            return false;
        };
        m.connections -= 1;
        if m.connections > 0 {
            return false;
        }
        channel.members.shift_remove(user_id);
        if channel.members.is_empty() {
            shard.remove(&key);
        }
        true
    }

    /// The `subscription_succeeded` data for the channel's current members.
    pub fn snapshot(&self, key: ChannelRef<'_>) -> String {
        let shard = self.channels.lock(key);
        match shard.get(&key) {
            Some(c) => subscription_data(c),
            None => subscription_data(&Channel::default()),
        }
    }

    /// The member ids of a channel, in joining order.
    pub fn members(&self, key: ChannelRef<'_>) -> Vec<Arc<str>> {
        self.channels
            .lock(key)
            .get(&key)
            .map(|c| c.members.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// How many distinct users are in a channel.
    pub fn user_count(&self, key: ChannelRef<'_>) -> usize {
        self.channels
            .lock(key)
            .get(&key)
            .map_or(0, |c| c.members.len())
    }
}

/// `{"presence":{"ids":[…],"hash":{"id":info,…},"count":n}}`, as pusher-js reads it.
fn subscription_data(channel: &Channel) -> String {
    let mut b = BytesMut::with_capacity(64 + channel.members.len() * 48);
    b.put_slice(br#"{"presence":{"ids":["#);
    for (i, id) in channel.members.keys().enumerate() {
        if i > 0 {
            b.put_u8(b',');
        }
        push_json_str(&mut b, id);
    }
    b.put_slice(br#"],"hash":{"#);
    for (i, (id, m)) in channel.members.iter().enumerate() {
        if i > 0 {
            b.put_u8(b',');
        }
        push_json_str(&mut b, id);
        b.put_u8(b':');
        b.put_slice(m.info.as_bytes());
    }
    b.put_slice(br#"},"count":"#);
    b.put_slice(channel.members.len().to_string().as_bytes());
    b.put_slice(b"}}");
    String::from_utf8(b.to_vec()).expect("built from UTF-8")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> Arc<str> {
        Arc::from(s)
    }

    #[test]
    fn several_connections_of_a_user_are_one_member() {
        let reg = PresenceRegistry::default();
        let key = ChannelKey::new(0, "presence-room");
        let r = ChannelRef {
            app: 0,
            name: "presence-room",
        };
        let info = id(r#"{"name":"Ann"}"#);
        let Joined::First(data) = reg.join(&key, &id("1"), &info, 100) else {
            panic!()
        };
        let v: serde_json::Value = serde_json::from_str(&data).unwrap();
        assert_eq!(v["presence"]["count"], 1);
        assert_eq!(v["presence"]["hash"]["1"]["name"], "Ann");
        assert!(matches!(
            reg.join(&key, &id("1"), &info, 100),
            Joined::Again(_)
        ));
        assert!(matches!(
            reg.join(&key, &id("2"), &id("null"), 100),
            Joined::First(_)
        ));
        assert_eq!(reg.user_count(r), 2);
        assert!(!reg.leave(r, "1"), "one tab of user 1 is still there");
        assert!(reg.leave(r, "1"));
        assert_eq!(reg.members(r), vec![id("2")]);
        assert!(reg.leave(r, "2"));
        assert_eq!(reg.user_count(r), 0);
        assert!(!reg.leave(r, "2"));
    }

    #[test]
    fn a_full_channel_refuses_new_users_but_not_more_tabs() {
        let reg = PresenceRegistry::default();
        let key = ChannelKey::new(0, "presence-x");
        let null = id("null");
        for u in 0..3 {
            assert!(matches!(
                reg.join(&key, &id(&u.to_string()), &null, 3),
                Joined::First(_)
            ));
        }
        assert_eq!(reg.join(&key, &id("9"), &null, 3), Joined::Full);
        assert!(matches!(
            reg.join(&key, &id("0"), &null, 3),
            Joined::Again(_)
        ));
    }
}
