//! Signed-in users over all workers: how many connections each user has signed in on, so
//! a user is "online" from its first sign-in to its last disconnect (watchlist events).

use super::sharded::Sharded;
use crate::app::{AppIdx, ChannelKey, ChannelRef};
use crate::protocol::SocketId;

/// The connections of each signed-in user, keyed by (app, user id).
#[derive(Default)]
pub struct UserRegistry {
    map: Sharded<Vec<SocketId>>,
}

impl UserRegistry {
    /// Records a sign-in; returns whether the user just came online.
    pub fn sign_in(&self, app: AppIdx, user: &str, socket: SocketId) -> bool {
        let r = ChannelRef { app, name: user };
        let mut shard = self.map.lock(r);
        match shard.get_mut(&r) {
            Some(conns) => {
                conns.push(socket);
                false
            }
            None => {
                shard.insert(ChannelKey::new(app, user), vec![socket]);
                true
            }
        }
    }

    /// Records a signed-in connection going away; returns whether the user went offline.
    pub fn sign_out(&self, app: AppIdx, user: &str, socket: SocketId) -> bool {
        let r = ChannelRef { app, name: user };
        let mut shard = self.map.lock(r);
        let Some(conns) = shard.get_mut(&r) else {
            return false;
        };
        let Some(i) = conns.iter().position(|s| *s == socket) else {
            return false;
        };
        conns.swap_remove(i);
        if conns.is_empty() {
            shard.remove(&r);
            return true;
        }
        false
    }

    /// The user's signed-in connections.
    pub fn connections(&self, app: AppIdx, user: &str) -> Vec<SocketId> {
        let r = ChannelRef { app, name: user };
        self.map.lock(r).get(&r).cloned().unwrap_or_default()
    }

    /// Whether the user is signed in on any connection.
    pub fn is_online(&self, app: AppIdx, user: &str) -> bool {
        let r = ChannelRef { app, name: user };
        self.map.lock(r).contains_key(&r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(seq: u64) -> SocketId {
        SocketId { random: 1, seq }
    }

    #[test]
    fn online_from_first_sign_in_to_last_sign_out() {
        let users = UserRegistry::default();
        assert!(users.sign_in(0, "ann", s(1)));
        assert!(!users.sign_in(0, "ann", s(2)));
        assert!(!users.is_online(1, "ann"), "apps are separate");
        assert_eq!(users.connections(0, "ann"), vec![s(1), s(2)]);
        assert!(!users.sign_out(0, "ann", s(1)));
        assert!(users.is_online(0, "ann"));
        assert!(!users.sign_out(0, "ann", s(9)), "not one of hers");
        assert_eq!(users.connections(0, "ann"), vec![s(2)]);
        assert!(users.sign_out(0, "ann", s(2)));
        assert!(!users.is_online(0, "ann"));
        assert!(users.connections(0, "ann").is_empty());
        assert!(!users.sign_out(0, "ann", s(2)));
    }
}
