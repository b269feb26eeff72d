//! Signed-in users over all workers: how many connections each user has signed in on, so
//! a user is "online" from its first sign-in to its last disconnect (watchlist events).

use super::sharded::Sharded;
use crate::app::{AppIdx, ChannelKey, ChannelRef};
use crate::protocol::SocketId;

type HashSet<T> = hashbrown::HashSet<T, foldhash::fast::RandomState>;

/// The connections of each signed-in user, keyed by (app, user id): a set, so an app that
/// signs thousands of connections in as one user pays no scan per sign-out.
#[derive(Default)]
pub struct UserRegistry {
    map: Sharded<HashSet<SocketId>>,
}

impl UserRegistry {
    /// Records a sign-in; returns whether the user just came online.
    pub fn sign_in(&self, app: AppIdx, user: &str, socket: SocketId) -> bool {
        let r = ChannelRef { app, name: user };
        let mut shard = self.map.lock(r);
        match shard.get_mut(&r) {
            Some(conns) => {
                conns.insert(socket);
                false
            }
            None => {
                shard.insert(ChannelKey::new(app, user), HashSet::from_iter([socket]));
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
        if !conns.remove(&socket) {
            return false;
        }
        if conns.is_empty() {
            shard.remove(&r);
            return true;
        }
        false
    }

    /// The user's signed-in connections.
    pub fn connections(&self, app: AppIdx, user: &str) -> Vec<SocketId> {
        let r = ChannelRef { app, name: user };
        let mut conns: Vec<SocketId> = self
            .map
            .lock(r)
            .get(&r)
            .map(|c| c.iter().copied().collect())
            .unwrap_or_default();
        conns.sort_by_key(|s| s.seq);
        conns
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
