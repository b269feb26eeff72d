//! Signed-in users over all workers: how many connections each user has signed in on, so
//! a user is "online" from its first sign-in to its last disconnect (watchlist events).

use super::sharded::Sharded;
use crate::app::{AppIdx, ChannelKey, ChannelRef};

/// Connections per signed-in user, keyed by (app, user id).
#[derive(Default)]
pub struct UserRegistry {
    map: Sharded<u32>,
}

impl UserRegistry {
    /// Counts a sign-in; returns whether the user just came online.
    pub fn sign_in(&self, app: AppIdx, user: &str) -> bool {
        let r = ChannelRef { app, name: user };
        let mut shard = self.map.lock(r);
        match shard.get_mut(&r) {
            Some(n) => {
                *n += 1;
                false
            }
            None => {
                shard.insert(ChannelKey::new(app, user), 1);
                true
            }
        }
    }

    /// Counts a signed-in connection going away; returns whether the user went offline.
    pub fn sign_out(&self, app: AppIdx, user: &str) -> bool {
        let r = ChannelRef { app, name: user };
        let mut shard = self.map.lock(r);
        let Some(n) = shard.get_mut(&r) else {
            return false;
        };
        *n -= 1;
        if *n == 0 {
            shard.remove(&r);
            return true;
        }
        false
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

    #[test]
    fn online_from_first_sign_in_to_last_sign_out() {
        let users = UserRegistry::default();
        assert!(users.sign_in(0, "ann"));
        assert!(!users.sign_in(0, "ann"));
        assert!(!users.is_online(1, "ann"), "apps are separate");
        assert!(!users.sign_out(0, "ann"));
        assert!(users.is_online(0, "ann"));
        assert!(users.sign_out(0, "ann"));
        assert!(!users.is_online(0, "ann"));
        assert!(!users.sign_out(0, "ann"));
    }
}
