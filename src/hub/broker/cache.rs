//! Cache channels: the last event published to each, kept for the app's TTL and sent to
//! new subscribers right after `subscription_succeeded`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::app::{ChannelKey, ChannelRef};

type FastState = foldhash::fast::RandomState;

/// How long a reported cache miss suppresses further `cache_miss` webhooks.
const MISS_TTL: Duration = Duration::from_secs(60);

/// One cached event.
#[derive(Debug, Clone)]
pub struct Cached {
    /// The event frame as subscribers received it.
    pub frame: Bytes,
    /// The event name.
    pub event: Arc<str>,
    /// The event data.
    pub data: Arc<str>,
    /// When it expires.
    pub expires: Instant,
}

impl Cached {
    /// What it holds in memory, roughly: its frame, event name and data.
    fn size(&self) -> usize {
        self.frame.len() + self.event.len() + self.data.len()
    }
}

/// The last event of every cache channel, shared by all workers (lock-free).
pub struct EventCache {
    /// Its size is papaya's own count of what was inserted and removed (never negative),
    /// so concurrent puts and sweeps cannot make it drift.
    map: papaya::HashMap<ChannelKey, Cached, FastState>,
    max: usize,
    /// Bytes the entries hold (frames, names and data), against `max_bytes`.
    bytes: std::sync::atomic::AtomicUsize,
    max_bytes: usize,
    /// Channels whose cache miss was reported (the `cache_miss` webhook is sent once until
    /// the channel gets an event), with when the report expires.
    missed: papaya::HashMap<ChannelKey, Instant, FastState>,
}

impl EventCache {
    /// A cache holding at most `max` channels and `max_bytes` of events.
    pub fn new(max: usize, max_bytes: usize) -> Self {
        Self {
            map: papaya::HashMap::builder()
                .hasher(FastState::default())
                .resize_mode(papaya::ResizeMode::Blocking)
                .build(),
            max,
            bytes: Default::default(),
            max_bytes,
            missed: papaya::HashMap::builder()
                .hasher(FastState::default())
                .build(),
        }
    }

    /// Records a cache miss on `key`; returns whether it is the first since the channel's
    /// last event (so the `cache_miss` webhook is not repeated for every subscriber).
    /// Reports expire after `MISS_TTL`; past `max` channels, every miss is reported.
    pub fn note_miss(&self, key: ChannelRef<'_>) -> bool {
        let missed = self.missed.pin();
        if missed
            .get(&key)
            .is_some_and(|&until| until > Instant::now())
        {
            return false;
        }
        if missed.len() < self.max {
            missed.insert(
                ChannelKey::new(key.app, key.name),
                Instant::now() + MISS_TTL,
            );
        }
        true
    }

    /// Keeps `event` as the channel's last. Returns false (and keeps nothing new) when the
    /// cache is full: at `max` channels and this one has no entry yet, or the event would
    /// take it past `max_bytes`. (Puts racing for the last free places may overshoot by a
    /// few entries; the counts themselves stay exact.)
    pub fn put(
        &self,
        key: ChannelKey,
        frame: Bytes,
        event: &str,
        data: &str,
        ttl: Duration,
    ) -> bool {
        let map = self.map.pin();
        let r = ChannelRef {
            app: key.app,
            name: &key.name,
        };
        self.missed.pin().remove(&r);
        let old = map.get(&r).map(Cached::size);
        if old.is_none() && map.len() >= self.max {
            return false;
        }
        let cached = Cached {
            frame,
            event: Arc::from(event),
            data: Arc::from(data),
            expires: deadline(ttl),
        };
        let size = cached.size();
        let held = self.bytes.load(std::sync::atomic::Ordering::Relaxed);
        if held.saturating_sub(old.unwrap_or(0)) + size > self.max_bytes {
            return false;
        }
        self.bytes
            .fetch_add(size, std::sync::atomic::Ordering::Relaxed);
        if let Some(replaced) = map.insert(key, cached) {
            self.bytes
                .fetch_sub(replaced.size(), std::sync::atomic::Ordering::Relaxed);
        }
        true
    }

    /// Bytes the cached events hold.
    #[cfg(test)]
    fn bytes(&self) -> usize {
        self.bytes.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The channel's last event, unless expired.
    pub fn get(&self, key: ChannelRef<'_>) -> Option<Cached> {
        let map = self.map.pin();
        map.get(&key)
            .filter(|c| c.expires > Instant::now())
            .cloned()
    }

    /// Drops expired entries.
    pub fn sweep(&self) {
        let now = Instant::now();
        self.missed.pin().retain(|_, &until| until > now);
        let map = self.map.pin();
        let expired: Vec<ChannelKey> = map
            .iter()
            .filter(|(_, c)| c.expires <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for k in expired {
            let r = ChannelRef {
                app: k.app,
                name: &k.name,
            };
            if let Ok(Some((_, c))) = map.remove_if(&r, |_, c| c.expires <= now) {
                self.bytes
                    .fetch_sub(c.size(), std::sync::atomic::Ordering::Relaxed);
            }
        }
    }
}

/// `ttl` from now; a TTL too long for the clock means "never" (a century).
fn deadline(ttl: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(ttl)
        .or_else(|| now.checked_add(Duration::from_secs(100 * 365 * 86_400)))
        .unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_holds_at_most_its_bytes() {
        let c = EventCache::new(100, 1000);
        let ttl = Duration::from_secs(60);
        let big = "x".repeat(400);
        assert!(c.put(
            ChannelKey::new(0, "cache-a"),
            Bytes::from(big.clone()),
            "e",
            &big,
            ttl
        ));
        assert_eq!(c.bytes(), 801);
        // A second entry that would pass 1000 bytes is not kept; replacing the first is.
        assert!(!c.put(
            ChannelKey::new(0, "cache-b"),
            Bytes::from(big.clone()),
            "e",
            &big,
            ttl
        ));
        assert!(c.put(
            ChannelKey::new(0, "cache-a"),
            Bytes::from_static(b"1"),
            "e",
            "one",
            ttl
        ));
        assert_eq!(c.bytes(), 5);
        assert!(c.put(
            ChannelKey::new(0, "cache-b"),
            Bytes::from(big.clone()),
            "e",
            &big,
            ttl
        ));
        // Expired entries give their bytes back.
        c.put(
            ChannelKey::new(0, "cache-c"),
            Bytes::from_static(b"22"),
            "e",
            "2",
            Duration::ZERO,
        );
        c.sweep();
        assert_eq!(c.bytes(), 5 + 801);
    }

    #[test]
    fn keeps_the_last_event_until_it_expires() {
        let c = EventCache::new(10, usize::MAX);
        let key = ChannelKey::new(0, "cache-a");
        let r = ChannelRef {
            app: 0,
            name: "cache-a",
        };
        assert!(c.get(r).is_none());
        assert!(c.put(
            key.clone(),
            Bytes::from_static(b"1"),
            "e",
            "one",
            Duration::from_secs(60)
        ));
        assert!(c.put(
            key.clone(),
            Bytes::from_static(b"2"),
            "e",
            "two",
            Duration::from_secs(60)
        ));
        assert_eq!(&*c.get(r).unwrap().data, "two");
        assert!(c.put(key, Bytes::new(), "e", "gone", Duration::ZERO));
        assert!(c.get(r).is_none());
        c.sweep();
        assert_eq!(c.map.len(), 0);
    }

    #[test]
    fn concurrent_puts_and_sweeps_leave_an_emptied_cache_accepting_max_channels() {
        const MAX: usize = 32;
        let c = EventCache::new(MAX, usize::MAX);
        let put = |name: &str, ttl| c.put(ChannelKey::new(0, name), Bytes::new(), "e", "d", ttl);
        for round in 0..200 {
            std::thread::scope(|s| {
                for t in 0..4 {
                    s.spawn(move || {
                        for i in 0..MAX {
                            // The same new channel from every thread, and one of its own;
                            // both expire at once, so they race the sweeps.
                            put(&format!("cache-{round}-{i}"), Duration::ZERO);
                            put(&format!("cache-{round}-{t}-{i}"), Duration::ZERO);
                        }
                    });
                }
                s.spawn(|| {
                    for _ in 0..MAX {
                        c.sweep();
                    }
                });
            });
        }
        c.sweep();
        assert_eq!(c.map.len(), 0);
        for i in 0..MAX {
            assert!(
                put(&format!("cache-fresh-{i}"), Duration::from_secs(60)),
                "new channel {i} refused by an emptied cache"
            );
        }
        assert!(!put("cache-one-too-many", Duration::from_secs(60)));
    }

    #[test]
    fn a_ttl_too_long_for_the_clock_never_expires() {
        let c = EventCache::new(1, usize::MAX);
        let key = ChannelKey::new(0, "cache-a");
        assert!(c.put(key.clone(), Bytes::new(), "e", "d", Duration::MAX));
        assert!(c
            .get(ChannelRef {
                app: 0,
                name: &key.name
            })
            .is_some());
    }

    #[test]
    fn a_full_cache_keeps_updating_what_it_has() {
        let c = EventCache::new(1, usize::MAX);
        assert!(c.put(
            ChannelKey::new(0, "cache-a"),
            Bytes::new(),
            "e",
            "1",
            Duration::from_secs(60)
        ));
        assert!(!c.put(
            ChannelKey::new(0, "cache-b"),
            Bytes::new(),
            "e",
            "1",
            Duration::from_secs(60)
        ));
        assert!(c.put(
            ChannelKey::new(0, "cache-a"),
            Bytes::new(),
            "e",
            "2",
            Duration::from_secs(60)
        ));
    }
}
