//! Client addresses as the gateway counts them: [`AddrKey`] (an IPv6 client is its /64 prefix)
//! and [`PerAddr`], the per-address connection caps of the HTTPS listener and the driver RPC
//! server.
//!
//! Why /64: an IPv6 site or host is normally given a whole /64 and picks addresses in it
//! freely (privacy extensions rotate them), so counting exact IPv6 addresses would let one
//! client open up to 2^64 "different" clients' worth of connections. IPv4 addresses, and
//! IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`, how a dual-stack socket reports an IPv4 peer),
//! count one by one — except loopback: every address of 127.0.0.0/8 and `::1` is one client,
//! "this host", since code on this host (a session's driver: its sandbox shares the host's
//! network) can pick any of them as its source address.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex, PoisonError};

/// The unit a client is counted by: an IPv4 address, or the /64 prefix of an IPv6 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AddrKey(IpAddr);

impl AddrKey {
    /// The key of a client address.
    pub fn of(ip: IpAddr) -> Self {
        let this_host = match ip {
            IpAddr::V4(v4) => v4.is_loopback(),
            IpAddr::V6(v6) => v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
        };
        if this_host {
            return Self(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));
        }
        match ip {
            IpAddr::V4(v4) => Self(IpAddr::V4(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Self(IpAddr::V4(v4)),
                None => Self(IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !u128::from(u64::MAX)))),
            },
        }
    }
}

impl fmt::Display for AddrKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            IpAddr::V4(v4) => write!(f, "{v4}"),
            IpAddr::V6(v6) => write!(f, "{v6}/64"),
        }
    }
}

/// Counts what is open per [`AddrKey`]; a slot is held by the [`AddrSlot`] guard that
/// [`PerAddr::enter`] returns and given back when it is dropped.
#[derive(Debug, Default)]
pub struct PerAddr(Mutex<HashMap<AddrKey, usize>>);

/// One counted connection; dropping it frees the slot.
#[derive(Debug)]
pub struct AddrSlot {
    table: Arc<PerAddr>,
    key: AddrKey,
}

impl PerAddr {
    /// Takes a slot for `ip` unless its key already holds `limit`.
    pub fn enter(self: &Arc<Self>, ip: IpAddr, limit: usize) -> Option<AddrSlot> {
        let key = AddrKey::of(ip);
        let mut table = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let count = table.entry(key).or_insert(0);
        if *count >= limit {
            if *count == 0 {
                table.remove(&key); // a zero limit must not leave entries behind
            }
            return None;
        }
        *count += 1;
        Some(AddrSlot { table: self.clone(), key })
    }

    /// Slots held by `ip`'s key (tests, diagnostics).
    pub fn held(&self, ip: IpAddr) -> usize {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).get(&AddrKey::of(ip)).copied().unwrap_or(0)
    }
}

impl Drop for AddrSlot {
    fn drop(&mut self) {
        let mut table = self.table.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = table.get_mut(&self.key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                table.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn an_ipv6_client_counts_by_its_64_prefix() {
        let table = Arc::new(PerAddr::default());
        let first = table.enter(ip("2001:db8:1:2::1"), 2).unwrap();
        let _second = table.enter(ip("2001:db8:1:2:aaaa::7"), 2).unwrap();
        // Deny: a third address in the same /64 is the same client.
        assert!(table.enter(ip("2001:db8:1:2:ffff:ffff:ffff:fffe"), 2).is_none());
        // Allow: the neighbouring /64 is another client.
        let _other = table.enter(ip("2001:db8:1:3::1"), 2).unwrap();
        assert_eq!(table.held(ip("2001:db8:1:2::99")), 2);
        drop(first);
        assert!(table.enter(ip("2001:db8:1:2::5"), 2).is_some(), "a freed slot is usable again");
        assert_eq!(AddrKey::of(ip("2001:db8:1:2:3:4:5:6")).to_string(), "2001:db8:1:2::/64");
    }

    #[test]
    fn ipv4_and_ipv4_mapped_clients_count_by_address() {
        let table = Arc::new(PerAddr::default());
        let _a = table.enter(ip("192.0.2.1"), 1).unwrap();
        // Deny: the same IPv4 client seen through a dual-stack socket.
        assert!(table.enter(ip("::ffff:192.0.2.1"), 1).is_none());
        // Allow: the next IPv4 address is another client (no prefix grouping for IPv4).
        assert!(table.enter(ip("192.0.2.2"), 1).is_some());
        assert!(table.enter(ip("::ffff:192.0.2.3"), 1).is_some());
        assert_eq!(AddrKey::of(ip("::ffff:192.0.2.1")).to_string(), "192.0.2.1");
    }

    #[test]
    fn every_loopback_address_is_one_client() {
        // Code on this host picks its source address freely among 127.0.0.0/8.
        let table = Arc::new(PerAddr::default());
        let _slots: Vec<_> =
            ["127.0.0.1", "127.0.0.2", "127.9.8.7"].iter().map(|a| table.enter(ip(a), 3).unwrap()).collect();
        for other in ["127.1.2.3", "::1", "::ffff:127.0.0.5"] {
            assert!(table.enter(ip(other), 3).is_none(), "{other} is this host too");
        }
        assert!(table.enter(ip("192.0.2.1"), 3).is_some(), "another host is not");
        assert_eq!(AddrKey::of(ip("127.200.0.1")).to_string(), "127.0.0.1");
    }

    #[test]
    fn slots_are_given_back_and_empty_entries_removed() {
        let table = Arc::new(PerAddr::default());
        let slot = table.enter(ip("10.0.0.1"), 1).unwrap();
        drop(slot);
        assert!(table.0.lock().unwrap().is_empty());
        assert!(table.enter(ip("10.0.0.1"), 0).is_none());
        assert!(table.0.lock().unwrap().is_empty());
    }
}
