//! Presence channels' members, over all workers of this process.
//!
//! A member is a user id; several connections of one user (tabs, devices, workers) are one
//! member, and each connection is recorded, so that the first join and the last leave can
//! be told apart exactly, and a leave by a connection that never joined changes nothing.
//! Joins and leaves happen per subscription, never per published event, so the shard locks
//! are off the fan-out path.

use std::sync::Arc;

use indexmap::IndexMap;

use super::sharded::Sharded;
use crate::app::{ChannelKey, ChannelRef};
use crate::protocol::SocketId;
use crate::pusher::{Joined, Member, Roster};

type FastState = foldhash::fast::RandomState;

struct Entry {
    /// `user_info` as JSON text (`null` when absent), as the first connection gave it.
    info: Arc<str>,
    /// The user's connections subscribed to the channel.
    sockets: Vec<SocketId>,
}

#[derive(Default)]
struct Channel {
    members: IndexMap<Arc<str>, Entry, FastState>,
    /// The members as subscribers receive them, built on the first subscription after a
    /// change of membership and shared by every one until the next.
    roster: Option<Roster>,
}

impl Channel {
    fn roster(&mut self, name: &str) -> Roster {
        if let Some(r) = &self.roster {
            return r.clone();
        }
        let r = Roster::of(name, &self.members());
        self.roster = Some(r.clone());
        r
    }

    fn members(&self) -> Vec<Member> {
        self.members
            .iter()
            .map(|(id, e)| Member {
                user_id: id.clone(),
                user_info: e.info.clone(),
            })
            .collect()
    }
}

/// Every presence channel's members.
#[derive(Default)]
pub struct PresenceRegistry {
    channels: Sharded<Channel>,
}

impl PresenceRegistry {
    /// Adds connection `socket_id` of `member` to the channel, unless the channel has `max`
    /// other users. `on_first` runs, still under the channel's lock, if this is the user's
    /// first connection: what it publishes is ordered with every other decision.
    pub fn join(
        &self,
        key: &ChannelKey,
        member: &Member,
        socket_id: SocketId,
        max: usize,
        on_first: impl FnOnce(),
    ) -> Joined {
        let r = key.as_ref();
        let mut shard = self.channels.lock(r);
        let channel = shard.entry(key.clone()).or_default();
        let first = if let Some(e) = channel.members.get_mut(&member.user_id) {
            if !e.sockets.contains(&socket_id) {
                e.sockets.push(socket_id);
            }
            false
        } else if channel.members.len() >= max {
            if channel.members.is_empty() {
                shard.remove(&r);
            }
            return Joined::Full;
        } else {
            channel.members.insert(
                member.user_id.clone(),
                Entry {
                    info: member.user_info.clone(),
                    sockets: vec![socket_id],
                },
            );
            channel.roster = None;
            true
        };
        let roster = channel.roster(&key.name);
        if first {
            on_first();
            Joined::First(roster)
        } else {
            Joined::Again(roster)
        }
    }

    /// Removes connection `socket_id` of `user`; returns whether that was the user's last,
    /// so the member left. `on_last` runs then, still under the channel's lock.
    pub fn leave(
        &self,
        key: ChannelRef<'_>,
        user: &str,
        socket_id: SocketId,
        on_last: impl FnOnce(),
    ) -> bool {
        let mut shard = self.channels.lock(key);
        let Some(channel) = shard.get_mut(&key) else {
            return false;
        };
        let Some(e) = channel.members.get_mut(user) else {
            return false;
        };
        let Some(pos) = e.sockets.iter().position(|s| *s == socket_id) else {
            return false;
        };
        e.sockets.swap_remove(pos);
        if !e.sockets.is_empty() {
            return false;
        }
        channel.members.shift_remove(user);
        channel.roster = None;
        if channel.members.is_empty() {
            shard.remove(&key);
        }
        on_last();
        true
    }

    /// The channel's members as a (repeated) subscription receives them.
    pub fn roster(&self, key: ChannelRef<'_>) -> Roster {
        match self.channels.lock(key).get_mut(&key) {
            Some(channel) => channel.roster(key.name),
            None => Roster::of(key.name, &[]),
        }
    }

    /// The channel's members, in joining order.
    pub fn members(&self, key: ChannelRef<'_>) -> Vec<Member> {
        self.channels
            .lock(key)
            .get(&key)
            .map(Channel::members)
            .unwrap_or_default()
    }

    /// Calls `f` with every membership: channel, member, connection.
    pub fn for_each(&self, mut f: impl FnMut(&ChannelKey, &Member, SocketId)) {
        self.channels.for_each(|key, channel| {
            for (id, e) in &channel.members {
                let member = Member {
                    user_id: id.clone(),
                    user_info: e.info.clone(),
                };
                for socket in &e.sockets {
                    f(key, &member, *socket);
                }
            }
        });
    }

    /// How many distinct users are in the channel.
    pub fn user_count(&self, key: ChannelRef<'_>) -> usize {
        self.channels
            .lock(key)
            .get(&key)
            .map_or(0, |c| c.members.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: &str, info: &str) -> Member {
        Member {
            user_id: Arc::from(id),
            user_info: Arc::from(info),
        }
    }

    fn socket(n: u64) -> SocketId {
        SocketId { random: 1, seq: n }
    }

    #[test]
    fn several_connections_of_a_user_are_one_member() {
        let reg = PresenceRegistry::default();
        let key = ChannelKey::new(0, "presence-room");
        let r = key.as_ref();
        let ann = member("1", r#"{"name":"Ann"}"#);
        let Joined::First(roster) = reg.join(&key, &ann, socket(1), 100, || {}) else {
            panic!()
        };
        assert_eq!(
            roster,
            Roster::of("presence-room", std::slice::from_ref(&ann))
        );
        assert!(matches!(
            reg.join(&key, &ann, socket(2), 100, || {}),
            Joined::Again(_)
        ));
        assert!(matches!(
            reg.join(&key, &member("2", "null"), socket(3), 100, || {}),
            Joined::First(_)
        ));
        assert_eq!(reg.user_count(r), 2);
        assert!(
            !reg.leave(r, "1", socket(1), || {}),
            "one tab of user 1 is still there"
        );
        assert!(reg.leave(r, "1", socket(2), || {}));
        assert_eq!(reg.members(r), vec![member("2", "null")]);
        assert!(reg.leave(r, "2", socket(3), || {}));
        assert_eq!(reg.user_count(r), 0);
        assert!(!reg.leave(r, "2", socket(3), || {}));
    }

    /// Re-subscribing to a large channel hands out the same encoded frame (no rebuilt
    /// snapshot) until a member joins or leaves.
    #[test]
    fn the_roster_is_built_once_per_change_of_membership() {
        let reg = PresenceRegistry::default();
        let key = ChannelKey::new(0, "presence-big");
        let r = key.as_ref();
        let info = format!(r#"{{"bio":"{}"}}"#, "x".repeat(900));
        for u in 0..100 {
            reg.join(&key, &member(&u.to_string(), &info), socket(u), 100, || {});
        }
        let first = reg.roster(r);
        assert!(first.frame().len() > 90_000, "{}", first.frame().len());
        let again = reg.roster(r);
        assert_eq!(
            first.frame().as_ptr(),
            again.frame().as_ptr(),
            "shared, not rebuilt"
        );
        let Joined::Again(tab) = reg.join(&key, &member("7", &info), socket(500), 100, || {})
        else {
            panic!()
        };
        assert_eq!(
            tab.frame().as_ptr(),
            first.frame().as_ptr(),
            "another tab: same members"
        );
        assert!(reg.leave(r, "3", socket(3), || {}));
        let after = reg.roster(r);
        assert_ne!(after.frame().as_ptr(), first.frame().as_ptr());
        let members = reg.members(r);
        assert_eq!(members.len(), 99);
        assert_eq!(after, Roster::of("presence-big", &members));
    }

    #[test]
    fn leaving_with_a_connection_that_never_joined_changes_nothing() {
        let reg = PresenceRegistry::default();
        let key = ChannelKey::new(0, "presence-room");
        reg.join(&key, &member("1", "null"), socket(1), 100, || {});
        assert!(!reg.leave(key.as_ref(), "1", socket(9), || {}));
        assert_eq!(reg.user_count(key.as_ref()), 1);
    }

    #[test]
    fn a_full_channel_refuses_new_users_but_not_more_tabs() {
        let reg = PresenceRegistry::default();
        let key = ChannelKey::new(0, "presence-x");
        for u in 0..3 {
            let m = member(&u.to_string(), "null");
            assert!(matches!(
                reg.join(&key, &m, socket(u), 3, || {}),
                Joined::First(_)
            ));
        }
        assert_eq!(
            reg.join(&key, &member("9", "null"), socket(9), 3, || {}),
            Joined::Full
        );
        assert!(matches!(
            reg.join(&key, &member("0", "null"), socket(10), 3, || {}),
            Joined::Again(_)
        ));
    }
}
