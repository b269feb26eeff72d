//! Which workers have subscribers of each channel: the lock-free index every publish reads
//! to route an event only to the workers that need it.

use std::sync::Arc;

use crate::app::{AppIdx, ChannelKey, ChannelRef};
use crate::runtime::MAX_WORKERS;

/// A set of worker indexes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorkerSet([u64; MAX_WORKERS / 64]);

impl WorkerSet {
    /// Adds worker `i`.
    pub fn insert(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }

    /// Removes worker `i`.
    pub fn remove(&mut self, i: usize) {
        self.0[i / 64] &= !(1 << (i % 64));
    }

    /// Whether worker `i` is in the set.
    pub fn contains(&self, i: usize) -> bool {
        self.0[i / 64] & (1 << (i % 64)) != 0
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|w| *w == 0)
    }

    /// The workers in the set, ascending.
    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.0.iter().enumerate().flat_map(|(wi, &word)| {
            let mut w = word;
            std::iter::from_fn(move || {
                if w == 0 {
                    return None;
                }
                let bit = w.trailing_zeros() as usize;
                w &= w - 1;
                Some(wi * 64 + bit)
            })
        })
    }
}

/// Where a channel's subscribers are.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Occupancy {
    /// Workers with at least one subscriber.
    pub workers: WorkerSet,
    /// Subscriptions over all workers.
    pub subscription_count: u64,
}

type FastState = foldhash::fast::RandomState;

/// One app's occupied channels.
type AppChannels = papaya::HashMap<Arc<str>, Occupancy, FastState>;

/// The shared, lock-free index of occupied channels, one table per app: a publish looks up
/// its app's table (an index into a vector) and then the channel; listing an app's channels
/// walks that app's table only, whatever the other apps hold.
pub struct ChannelIndex {
    apps: arc_swap::ArcSwap<Vec<Arc<AppChannels>>>,
}

impl Default for ChannelIndex {
    fn default() -> Self {
        Self {
            apps: arc_swap::ArcSwap::from_pointee(Vec::new()),
        }
    }
}

fn app_channels() -> AppChannels {
    // Blocking resizes: a writer finishes a resize before it returns, so readers (every
    // publish) never walk two tables. Incremental resizing measured 9x slower lookups at
    // 10^6 channels (benches/routing.rs).
    papaya::HashMap::builder()
        .hasher(FastState::default())
        .resize_mode(papaya::ResizeMode::Blocking)
        .build()
}

impl ChannelIndex {
    /// `app`'s table, if it has ever had a channel.
    fn table(&self, app: AppIdx) -> Option<Arc<AppChannels>> {
        self.apps.load().get(app as usize).cloned()
    }

    /// `app`'s table, created (with those of lower indexes) if needed.
    fn table_or_new(&self, app: AppIdx) -> Arc<AppChannels> {
        let i = app as usize;
        if let Some(t) = self.apps.load().get(i) {
            return t.clone();
        }
        self.apps.rcu(|apps| {
            let mut apps = Vec::clone(apps);
            while apps.len() <= i {
                apps.push(Arc::new(app_channels()));
            }
            apps
        });
        self.apps.load()[i].clone()
    }

    /// Where `channel`'s subscribers are, if it is occupied.
    pub fn get(&self, channel: ChannelRef<'_>) -> Option<Occupancy> {
        let apps = self.apps.load();
        let occupancy = apps
            .get(channel.app as usize)?
            .pin()
            .get(channel.name)
            .copied();
        occupancy
    }

    /// Records one more subscription of `key` on `worker`; returns the channel's
    /// subscription count after it (1: the channel just became occupied).
    pub fn add(&self, key: ChannelKey, worker: usize) -> u64 {
        self.table_or_new(key.app)
            .pin()
            .update_or_insert_with(
                key.name,
                |o| {
                    let mut o = *o;
                    o.workers.insert(worker);
                    o.subscription_count += 1;
                    o
                },
                || {
                    let mut workers = WorkerSet::default();
                    workers.insert(worker);
                    Occupancy {
                        workers,
                        subscription_count: 1,
                    }
                },
            )
            .subscription_count
    }

    /// Records one subscription fewer of `key` on `worker`; `worker_left` says whether it
    /// was the worker's last. Removes the entry when the channel is vacated. Returns the
    /// subscription count after it (0: vacated), or `None` if the channel was not occupied.
    pub fn remove(&self, key: ChannelKey, worker: usize, worker_left: bool) -> Option<u64> {
        let table = self.table(key.app)?;
        let after = std::cell::Cell::new(None);
        table.pin().compute(key.name, |entry| match entry {
            None => {
                after.set(None);
                papaya::Operation::Abort(())
            }
            Some((_, o)) => {
                let mut o = *o;
                o.subscription_count = o.subscription_count.saturating_sub(1);
                if worker_left {
                    o.workers.remove(worker);
                }
                if o.workers.is_empty() {
                    after.set(Some(0));
                    papaya::Operation::Remove
                } else {
                    after.set(Some(o.subscription_count));
                    papaya::Operation::Insert(o)
                }
            }
        });
        after.get()
    }

    /// Every occupied channel, with its subscriptions.
    pub fn all(&self) -> Vec<(ChannelKey, u64)> {
        let apps = self.apps.load();
        let mut all = Vec::new();
        for (app, table) in apps.iter().enumerate() {
            all.extend(table.pin().iter().map(|(name, o)| {
                (
                    ChannelKey {
                        app: app as AppIdx,
                        name: name.clone(),
                    },
                    o.subscription_count,
                )
            }));
        }
        all
    }

    /// Occupied channels of `app` whose name starts with `prefix` (its table only).
    pub fn channels(&self, app: AppIdx, prefix: &str) -> Vec<(Arc<str>, Occupancy)> {
        let Some(table) = self.table(app) else {
            return Vec::new();
        };
        let map = table.pin();
        map.iter()
            // `#server-to-user-` channels are per-user delivery, not channels an app lists.
            .filter(|(name, _)| name.starts_with(prefix) && !name.starts_with('#'))
            .map(|(name, o)| (name.clone(), *o))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_set_iterates_members() {
        let mut s = WorkerSet::default();
        for i in [0, 5, 63, 64, 200, 255] {
            s.insert(i);
        }
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![0, 5, 63, 64, 200, 255]);
        s.remove(64);
        assert!(!s.contains(64));
        assert!(s.contains(200));
    }

    #[test]
    fn index_counts_and_vacates() {
        let idx = ChannelIndex::default();
        let r = ChannelRef { app: 0, name: "a" };
        assert_eq!(idx.add(ChannelKey::new(0, "a"), 1), 1);
        assert_eq!(idx.add(ChannelKey::new(0, "a"), 1), 2);
        assert_eq!(idx.add(ChannelKey::new(0, "a"), 3), 3);
        let o = idx.get(r).unwrap();
        assert_eq!(o.subscription_count, 3);
        assert_eq!(o.workers.iter().collect::<Vec<_>>(), vec![1, 3]);
        assert_eq!(idx.remove(ChannelKey::new(0, "a"), 3, true), Some(2));
        assert_eq!(idx.remove(ChannelKey::new(0, "a"), 1, false), Some(1));
        assert_eq!(idx.get(r).unwrap().subscription_count, 1);
        assert_eq!(idx.remove(ChannelKey::new(0, "a"), 1, true), Some(0));
        assert_eq!(idx.get(r), None);
        assert_eq!(idx.remove(ChannelKey::new(0, "a"), 1, true), None);
        assert!(idx.get(ChannelRef { app: 1, name: "a" }).is_none());
    }
}
