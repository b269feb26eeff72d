//! A map keyed by (app, name), split over mutex-guarded shards, for the little state that
//! must be exact over all workers (presence members, signed-in users). It is touched on
//! subscribe, unsubscribe and sign-in, never per published event (so its locks are not on
//! the hot path), and each lock is held only to update one entry.

use std::hash::BuildHasher;
use std::sync::{Mutex, MutexGuard};

use crate::app::{ChannelKey, ChannelRef};

type FastState = foldhash::fast::RandomState;

const SHARDS: usize = 64;

/// One shard: a plain map, looked up with [`ChannelRef`] without allocating.
pub type Shard<V> = hashbrown::HashMap<ChannelKey, V, FastState>;

/// The sharded map.
pub struct Sharded<V> {
    shards: Box<[Mutex<Shard<V>>]>,
    hasher: FastState,
}

impl<V> Default for Sharded<V> {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            hasher: FastState::default(),
        }
    }
}

impl<V> Sharded<V> {
    /// Locks the shard holding `key`. A panic while a shard was held cannot leave an entry
    /// half-updated (every update is a single map operation), so poisoning is ignored.
    pub fn lock(&self, key: ChannelRef<'_>) -> MutexGuard<'_, Shard<V>> {
        let shard = &self.shards[(self.hasher.hash_one(key) as usize) % SHARDS];
        shard.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Calls `f` with every entry, one shard locked at a time.
    pub fn for_each(&self, mut f: impl FnMut(&ChannelKey, &V)) {
        for shard in self.shards.iter() {
            let shard = shard.lock().unwrap_or_else(|e| e.into_inner());
            for (k, v) in shard.iter() {
                f(k, v);
            }
        }
    }
}
