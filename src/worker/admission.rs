//! Admission at accept, before a connection costs anything: concurrent connections per IP
//! address (`--max-connections-per-ip`, shared by every worker), and the worker's share of
//! `--max-http-connections` (connections not upgraded to WebSocket: API calls, health
//! checks, upgrades and TLS handshakes in progress). At that cap the quietest HTTP
//! connection not serving a request is closed to make room (idle keep-alive connections
//! and slow heads first), so idle clients cannot keep the API out.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio_util::sync::CancellationToken;

/// Shards of the per-IP tables (this one and `ip_rate`'s).
pub(super) const SHARDS: usize = 16;

/// What `ip` is counted as, by both per-IP limits: IPv4 addresses (also when mapped into
/// IPv6) as they are, IPv6 addresses as their /64 prefix.
pub fn ip_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a) & !u128::from(u64::MAX))),
        v4 => v4,
    }
}

/// The shard of a per-IP table holding `key`.
pub(super) fn shard_of(key: IpAddr) -> usize {
    (match key {
        IpAddr::V4(a) => a.octets()[3] as usize,
        IpAddr::V6(a) => a.octets()[7] as usize,
    }) % SHARDS
}

/// Open connections per IP address (IPv6: per /64), over every worker.
#[derive(Default)]
pub struct IpConnTable {
    shards: [Mutex<HashMap<IpAddr, u32>>; SHARDS],
}

/// An address already has its `--max-connections-per-ip` open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddressFull;

/// One connection counted against its address, until dropped.
pub struct IpSlot {
    table: Arc<IpConnTable>,
    key: IpAddr,
}

impl IpConnTable {
    /// Counts a connection from `ip`: `Ok(None)` when there is no limit (`limit` 0, nothing
    /// counted), `Err` when `ip` already has `limit` connections open.
    pub fn enter(self: &Arc<Self>, ip: IpAddr, limit: u32) -> Result<Option<IpSlot>, AddressFull> {
        if limit == 0 {
            return Ok(None);
        }
        let key = ip_key(ip);
        let mut shard = self.shards[shard_of(key)]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let n = shard.entry(key).or_insert(0);
        if *n >= limit {
            return Err(AddressFull);
        }
        *n += 1;
        Ok(Some(IpSlot {
            table: self.clone(),
            key,
        }))
    }

    /// Connections open from `ip` (its /64 for IPv6).
    pub fn open(&self, ip: IpAddr) -> u32 {
        let key = ip_key(ip);
        let shard = self.shards[shard_of(key)]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        shard.get(&key).copied().unwrap_or(0)
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut shard = self.table.shards[shard_of(self.key)]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(n) = shard.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                shard.remove(&self.key);
            }
        }
    }
}

/// What the worker knows of one of its HTTP connections, to pick one to close at the cap.
pub struct HttpConn {
    /// When bytes last moved.
    pub quiet_since: Rc<Cell<Instant>>,
    /// Requests being served (a connection serving one is never picked).
    pub serving: Rc<Cell<u32>>,
    /// Cancelled to close the connection (gracefully: an idle one closes at once).
    pub evict: CancellationToken,
}

/// The worker's HTTP connections.
#[derive(Default)]
pub struct HttpConns {
    next: Cell<u64>,
    conns: RefCell<HashMap<u64, Rc<HttpConn>>>,
}

/// An HTTP connection in the worker's table, until dropped (also when its task is dropped
/// after a panic).
pub struct HttpEntry {
    conns: Rc<HttpConns>,
    id: u64,
}

impl HttpConns {
    /// Open HTTP connections.
    pub fn len(&self) -> usize {
        self.conns.borrow().len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.conns.borrow().is_empty()
    }

    /// Adds `conn`.
    pub fn enter(self: &Rc<Self>, conn: Rc<HttpConn>) -> HttpEntry {
        let id = self.next.get();
        self.next.set(id + 1);
        self.conns.borrow_mut().insert(id, conn);
        HttpEntry {
            conns: self.clone(),
            id,
        }
    }

    /// Closes the connection quiet for longest among those not serving a request and not
    /// already being closed; false if there is none.
    pub fn evict_quietest(&self) -> bool {
        let conns = self.conns.borrow();
        let victim = conns
            .values()
            .filter(|c| c.serving.get() == 0 && !c.evict.is_cancelled())
            .min_by_key(|c| c.quiet_since.get());
        match victim {
            Some(c) => {
                c.evict.cancel();
                true
            }
            None => false,
        }
    }
}

impl Drop for HttpEntry {
    fn drop(&mut self) {
        self.conns.conns.borrow_mut().remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_gets_its_limit_of_connections_and_slots_return_when_dropped() {
        let table = Arc::new(IpConnTable::default());
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        assert!(
            table.enter(ip, 0).unwrap().is_none(),
            "no limit: not counted"
        );
        let a = table.enter(ip, 2).unwrap();
        let b = table.enter(ip, 2).unwrap();
        assert!(table.enter(ip, 2).is_err());
        assert!(table.enter("10.0.0.2".parse().unwrap(), 2).is_ok());
        drop(a);
        assert_eq!(table.open(ip), 1);
        let _c = table.enter(ip, 2).unwrap();
        drop(b);
        // IPv6 counts per /64.
        let v6a: IpAddr = "2001:db8::1".parse().unwrap();
        let v6b: IpAddr = "2001:db8::2".parse().unwrap();
        let _d = table.enter(v6a, 1).unwrap();
        assert!(table.enter(v6b, 1).is_err());
    }

    #[test]
    fn the_quietest_connection_not_serving_is_evicted() {
        let conns = Rc::new(HttpConns::default());
        let now = Instant::now();
        let conn = |ago: u64, serving: u32| {
            Rc::new(HttpConn {
                quiet_since: Rc::new(Cell::new(now - std::time::Duration::from_secs(ago))),
                serving: Rc::new(Cell::new(serving)),
                evict: CancellationToken::new(),
            })
        };
        let (busy, old, young) = (conn(100, 1), conn(50, 0), conn(1, 0));
        let _e = [busy.clone(), old.clone(), young.clone()].map(|c| conns.enter(c));
        assert!(conns.evict_quietest());
        assert!(old.evict.is_cancelled() && !busy.evict.is_cancelled());
        assert!(conns.evict_quietest());
        assert!(young.evict.is_cancelled());
        assert!(
            !conns.evict_quietest(),
            "only one serving a request is left"
        );
        drop(_e);
        assert!(conns.is_empty());
    }
}
