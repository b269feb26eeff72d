//! The per-IP table of new connections (`--max-connections-per-ip-per-second`), shared by
//! every worker: a few mutex-guarded shards, touched once per WebSocket upgrade (not per
//! message), each lock held for one map update.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

use super::admission::{ip_key, shard_of, SHARDS};

/// Entries a shard keeps before dropping those of past seconds (at most once a second).
const PRUNE_ABOVE: usize = 4096;
/// Entries a shard never grows beyond, however many addresses arrive in one second.
const HARD_CAP: usize = 4 * PRUNE_ABOVE;

/// Counts new connections per IP address in one-second windows. IPv6 addresses count per
/// /64 (what one host or site is routinely given), IPv4 per address.
pub struct IpRateTable {
    shards: [Mutex<Shard>; SHARDS],
}

#[derive(Default)]
struct Shard {
    /// Address (or /64) → (second, connections in it).
    map: HashMap<IpAddr, (u64, u32)>,
    /// The second this shard last dropped past seconds' entries.
    pruned: u64,
}

impl Default for IpRateTable {
    fn default() -> Self {
        Self {
            shards: std::array::from_fn(|_| Mutex::default()),
        }
    }
}

impl IpRateTable {
    /// Counts a connection from `ip` in `second`; false when it is over `per_second`
    /// (0: no limit, nothing counted).
    pub fn allow(&self, ip: IpAddr, second: u64, per_second: u32) -> bool {
        if per_second == 0 {
            return true;
        }
        let key = ip_key(ip);
        let mut shard = self.shards[shard_of(key)]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if shard.map.len() > PRUNE_ABOVE && shard.pruned != second {
            shard.map.retain(|_, (s, _)| *s == second);
            shard.pruned = second;
        }
        if shard.map.len() >= HARD_CAP && !shard.map.contains_key(&key) {
            // More new addresses in this second than a shard may hold: let this one through
            // uncounted. Failing open bounds the memory (and the pruning work) an attacker
            // with many addresses can cause; addresses already counted stay limited.
            return true;
        }
        let entry = shard.map.entry(key).or_insert((second, 0));
        if entry.0 != second {
            *entry = (second, 0);
        }
        entry.1 = entry.1.saturating_add(1);
        entry.1 <= per_second
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_address_gets_its_own_window() {
        let r = IpRateTable::default();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        assert!(r.allow(a, 5, 2) && r.allow(a, 5, 2));
        assert!(!r.allow(a, 5, 2));
        assert!(r.allow(b, 5, 2));
        assert!(r.allow(a, 6, 2));
        assert!((0..100).all(|_| r.allow(a, 6, 0)));
    }

    #[test]
    fn ipv6_addresses_count_per_64_prefix() {
        let r = IpRateTable::default();
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let same_64: IpAddr = "2001:db8:1:2:ffff:ffff:ffff:fffe".parse().unwrap();
        let other_64: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert!(r.allow(a, 5, 2) && r.allow(same_64, 5, 2));
        assert!(!r.allow(a, 5, 2), "the /64 has used its two");
        assert!(!r.allow(same_64, 5, 2), "the /64 has used its two");
        assert!(r.allow(other_64, 5, 2));
        // An IPv4 address seen through a dual-stack socket is still one IPv4 address.
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        let v4: IpAddr = "10.0.0.1".parse().unwrap();
        let v4_other: IpAddr = "10.0.0.2".parse().unwrap();
        assert!(r.allow(mapped, 5, 1));
        assert!(!r.allow(v4, 5, 1));
        assert!(r.allow(v4_other, 5, 1));
    }

    #[test]
    fn many_addresses_in_one_second_stay_bounded_and_are_let_through() {
        let r = IpRateTable::default();
        let shard_len = |r: &IpRateTable| {
            r.shards
                .iter()
                .map(|s| s.lock().unwrap().map.len())
                .max()
                .unwrap()
        };
        // Far more distinct addresses in one second than the shards may hold.
        for i in 0..(SHARDS * HARD_CAP * 2) as u32 {
            assert!(r.allow(IpAddr::from(i.to_be_bytes()), 7, 1));
        }
        assert!(shard_len(&r) <= HARD_CAP, "{}", shard_len(&r));
        // An address already counted is still limited.
        assert!(!r.allow(IpAddr::from(0u32.to_be_bytes()), 7, 1));
        // The next second, each shard drops the past one's addresses once.
        for i in 0..SHARDS as u8 {
            assert!(r.allow(IpAddr::from([192, 0, 2, i]), 8, 1));
        }
        assert!(shard_len(&r) <= 1, "{}", shard_len(&r));
    }
}
