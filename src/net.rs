//! Client addresses as the gateway counts them: [`AddrKey`] (an IPv6 client is its /64 prefix)
//! and [`PerAddr`], the per-address connection caps of the HTTPS listener and the driver RPC
//! server.
//!
//! Why /64: an IPv6 site or host is normally given a whole /64 and picks addresses in it
//! freely (privacy extensions rotate them), so counting exact IPv6 addresses would let one
//! client open up to 2^64 "different" clients' worth of connections. IPv4 addresses, and
//! IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`, how a dual-stack socket reports an IPv4 peer),
//! count one by one.
//!
//! The driver RPC server counts by [`AddrKey::of_rpc_peer`], which also makes every loopback
//! address one client: on the gateway host any local process (a sandboxed driver's user code
//! shares the host network) may pick any source address in 127.0.0.0/8, so counting those one
//! by one would let one local process take the server's whole pending-handshake total.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex, PoisonError};

/// The unit a client is counted by: an IPv4 address, or the /64 prefix of an IPv6 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AddrKey(IpAddr);

impl AddrKey {
    /// The key of a client address.
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Self(IpAddr::V4(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Self(IpAddr::V4(v4)),
                None => Self(IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !u128::from(u64::MAX)))),
            },
        }
    }

    /// The key of a driver RPC peer: as [`AddrKey::of`], except that every loopback address
    /// (127.0.0.0/8, `::1`, and IPv4-mapped loopback) is one key, `127.0.0.1`. Local processes
    /// choose their loopback source address freely, so only "the host itself" is a client.
    pub fn of_rpc_peer(ip: IpAddr) -> Self {
        let loopback = match ip {
            IpAddr::V4(v4) => v4.is_loopback(),
            IpAddr::V6(v6) => v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
        };
        if loopback {
            Self(IpAddr::V4(Ipv4Addr::LOCALHOST))
        } else {
            Self::of(ip)
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
    /// Takes a slot for `ip` (counted by [`AddrKey::of`]) unless its key already holds `limit`.
    pub fn enter(self: &Arc<Self>, ip: IpAddr, limit: usize) -> Option<AddrSlot> {
        self.enter_key(AddrKey::of(ip), limit)
    }

    /// Takes a slot for `key` unless it already holds `limit`.
    pub fn enter_key(self: &Arc<Self>, key: AddrKey, limit: usize) -> Option<AddrSlot> {
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
    fn every_loopback_address_is_one_rpc_peer() {
        let table = Arc::new(PerAddr::default());
        let _a = table.enter_key(AddrKey::of_rpc_peer(ip("127.0.0.1")), 2).unwrap();
        let _b = table.enter_key(AddrKey::of_rpc_peer(ip("127.0.0.2")), 2).unwrap();
        // Deny: another source address in 127.0.0.0/8, ::1 or mapped loopback is the same host.
        for other in ["127.0.0.3", "127.255.255.254", "::1", "::ffff:127.0.0.9"] {
            assert!(table.enter_key(AddrKey::of_rpc_peer(ip(other)), 2).is_none(), "{other}");
            assert_eq!(AddrKey::of_rpc_peer(ip(other)).to_string(), "127.0.0.1");
        }
        // Allow: other hosts count as before (and the HTTPS server's keys do not change).
        assert!(table.enter_key(AddrKey::of_rpc_peer(ip("192.0.2.1")), 2).is_some());
        assert_eq!(AddrKey::of_rpc_peer(ip("2001:db8:1:2::1")), AddrKey::of(ip("2001:db8:1:2::7")));
        assert_eq!(AddrKey::of(ip("127.0.0.2")).to_string(), "127.0.0.2");
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
