//! One worker's subscribers, by channel.

use std::cell::RefCell;
use std::rc::Rc;

use bytes::Bytes;
use indexmap::IndexMap;

use crate::hub::{ChannelKey, ChannelRef};
use crate::protocol::SocketId;
use crate::session::conn::{Conn, Push};

type FastState = foldhash::fast::RandomState;
type Subscribers = IndexMap<usize, Rc<Conn>, FastState>;

/// What a delivery did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    /// Frames queued.
    pub queued: u64,
    /// Subscribers closed because their queue overflowed.
    pub overflowed: u64,
}

/// The subscribers of each channel on one worker.
#[derive(Default)]
pub struct LocalChannels {
    map: RefCell<hashbrown::HashMap<ChannelKey, Subscribers, FastState>>,
}

impl LocalChannels {
    /// Adds `conn` to `key`. Returns `None` if it was already subscribed, otherwise
    /// whether it is the channel's first subscriber on this worker.
    pub fn add(&self, key: &ChannelKey, conn: &Rc<Conn>) -> Option<bool> {
        let mut map = self.map.borrow_mut();
        let subs = map
            .entry(key.clone())
            .or_insert_with(|| Subscribers::with_hasher(FastState::default()));
        if subs.contains_key(&conn.id) {
            return None;
        }
        subs.insert(conn.id, conn.clone());
        Some(subs.len() == 1)
    }

    /// Removes connection `conn_id` from `key`. Returns `None` if it was not subscribed,
    /// otherwise whether it was the channel's last subscriber on this worker.
    pub fn remove(&self, key: ChannelRef<'_>, conn_id: usize) -> Option<bool> {
        let mut map = self.map.borrow_mut();
        let subs = map.get_mut(&key)?;
        subs.swap_remove(&conn_id)?;
        if subs.is_empty() {
            map.remove(&key);
            return Some(true);
        }
        Some(false)
    }

    /// Whether `conn_id` is subscribed to `key`.
    pub fn contains(&self, key: ChannelRef<'_>, conn_id: usize) -> bool {
        self.map
            .borrow()
            .get(&key)
            .is_some_and(|s| s.contains_key(&conn_id))
    }

    /// Subscribers of `key` on this worker.
    pub fn count(&self, key: ChannelRef<'_>) -> usize {
        self.map.borrow().get(&key).map_or(0, |s| s.len())
    }

    /// Queues `frame` (the same allocation) for every subscriber of `key` except the
    /// connection with socket id `except`.
    pub fn deliver(
        &self,
        key: ChannelRef<'_>,
        frame: &Bytes,
        except: Option<SocketId>,
    ) -> Delivered {
        let map = self.map.borrow();
        let mut d = Delivered::default();
        let Some(subs) = map.get(&key) else {
            return d;
        };
        for conn in subs.values() {
            if except == Some(conn.socket_id) {
                continue;
            }
            match conn.push(frame.clone()) {
                Push::Queued => d.queued += 1,
                Push::Overflow => d.overflowed += 1,
                Push::Closing => {}
            }
        }
        d
    }
}
