//! One worker's subscribers, by channel.

use std::cell::RefCell;
use std::rc::Rc;

use bytes::Bytes;
use indexmap::IndexMap;

use super::conn::{Conn, Push};
use crate::app::{ChannelKey, ChannelRef};
use crate::protocol::SocketId;

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

    /// Subscribers of `key` on this worker.
    #[cfg(test)]
    fn count(&self, key: ChannelRef<'_>) -> usize {
        self.map.borrow().get(&key).map_or(0, |s| s.len())
    }

    /// Queues `frame` (the same allocation) for every subscriber of `key` except the
    /// connection with socket id `except`.
    pub fn deliver(
        &self,
        key: ChannelRef<'_>,
        frame: &Bytes,
        except: Option<SocketId>,
        stamp: u64,
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
            match conn.push_stamped(frame.clone(), stamp) {
                Push::Queued => d.queued += 1,
                Push::Overflow => d.overflowed += 1,
                Push::Closing => {}
            }
        }
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(id: usize) -> Rc<Conn> {
        Rc::new(Conn::new(
            id,
            SocketId {
                random: 7,
                seq: id as u64,
            },
            Some(0),
            true,
            1 << 20,
        ))
    }

    #[test]
    fn every_subscriber_gets_the_same_allocation() {
        let channels = LocalChannels::default();
        let key = ChannelKey::new(0, "news");
        let conns: Vec<_> = (0..3).map(conn).collect();
        for c in &conns {
            assert_eq!(channels.add(&key, c), Some(c.id == 0));
        }
        let frame = crate::protocol::messages::event_frame("e", Some("news"), "payload");
        let d = channels.deliver(
            ChannelRef {
                app: 0,
                name: "news",
            },
            &frame,
            None,
            0,
        );
        assert_eq!(d.queued, 3);
        for c in &conns {
            let mut out = vec![];
            c.take_batch(&mut out, |_| {});
            assert_eq!(out.len(), 1);
            assert_eq!(out[0].as_ptr(), frame.as_ptr(), "the frame was copied");
        }
    }

    #[test]
    fn except_skips_one_socket_and_removal_reports_the_last() {
        let channels = LocalChannels::default();
        let key = ChannelKey::new(0, "room");
        let (a, b) = (conn(1), conn(2));
        channels.add(&key, &a);
        channels.add(&key, &b);
        assert_eq!(channels.add(&key, &a), None);
        let frame = crate::protocol::messages::event_frame("e", Some("room"), "x");
        let d = channels.deliver(
            ChannelRef {
                app: 0,
                name: "room",
            },
            &frame,
            Some(a.socket_id),
            0,
        );
        assert_eq!(d.queued, 1);
        assert!(a.queue_is_empty());
        assert!(!b.queue_is_empty());
        let r = ChannelRef {
            app: 0,
            name: "room",
        };
        assert_eq!(channels.remove(r, 1), Some(false));
        assert_eq!(channels.remove(r, 1), None);
        assert_eq!(channels.remove(r, 2), Some(true));
        assert_eq!(channels.count(r), 0);
    }
}
