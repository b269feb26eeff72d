//! Limits that need state shared by every worker: new connections per IP address per
//! second.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

const SHARDS: usize = 16;
/// Entries a shard keeps before dropping those of past seconds.
const PRUNE_ABOVE: usize = 4096;

/// Counts new connections per IP address in one-second windows.
pub struct IpRate {
    shards: [Mutex<HashMap<IpAddr, (u64, u32)>>; SHARDS],
}

impl Default for IpRate {
    fn default() -> Self {
        Self {
            shards: std::array::from_fn(|_| Mutex::new(HashMap::new())),
        }
    }
}

impl IpRate {
    /// Counts a connection from `ip` in `second`; false when it is over `per_second`
    /// (0: no limit, nothing counted).
    pub fn allow(&self, ip: IpAddr, second: u64, per_second: u32) -> bool {
        if per_second == 0 {
            return true;
        }
        let shard = match ip {
            IpAddr::V4(a) => a.octets()[3] as usize,
            IpAddr::V6(a) => a.octets()[15] as usize,
        } % SHARDS;
        let mut map = self.shards[shard].lock().unwrap_or_else(|e| e.into_inner());
        if map.len() > PRUNE_ABOVE {
            map.retain(|_, (s, _)| *s == second);
        }
        let entry = map.entry(ip).or_insert((second, 0));
        if entry.0 != second {
            *entry = (second, 0);
        }
        entry.1 += 1;
        entry.1 <= per_second
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_address_gets_its_own_window() {
        let r = IpRate::default();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        assert!(r.allow(a, 5, 2) && r.allow(a, 5, 2));
        assert!(!r.allow(a, 5, 2));
        assert!(r.allow(b, 5, 2));
        assert!(r.allow(a, 6, 2));
        assert!((0..100).all(|_| r.allow(a, 6, 0)));
    }
}
