//! The tokens already verified, so a client presenting the same JWT on every request pays for
//! one signature check, not one per request.
//!
//! An entry is keyed by the SHA-256 of the whole token (the token itself is not kept) and
//! holds the principal it named, the token's `exp` and the generation of the key set that
//! verified it. It answers only while the gateway's clock is before `exp` — never inside the
//! leeway, where the full check decides again — and only under the same key generation: a
//! reloaded key file (a rotation, a removed key) makes every entry stale at once. The cache
//! holds at most `auth.jwt.verified_cache_size` entries (evicting the least useful by
//! quick_cache's S3-FIFO); 0 turns it off.

use crate::identity::Principal;
use sha2::{Digest, Sha256};

#[derive(Debug, Clone)]
struct Entry {
    principal: Principal,
    /// The token's `exp`, Unix seconds.
    expires: u64,
    /// The key set generation that verified it.
    keys: u64,
}

/// See the module documentation.
pub(super) struct VerifiedTokens {
    cache: Option<quick_cache::sync::Cache<[u8; 32], Entry>>,
}

impl std::fmt::Debug for VerifiedTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifiedTokens").field("entries", &self.len()).finish()
    }
}

/// The cache key of a token.
pub(super) fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl VerifiedTokens {
    /// A cache of at most `capacity` tokens (none when 0).
    pub(super) fn new(capacity: usize) -> Self {
        Self { cache: (capacity > 0).then(|| quick_cache::sync::Cache::new(capacity)) }
    }

    /// The principal of a token verified under key generation `keys`, if still good at `now`.
    pub(super) fn get(&self, digest: &[u8; 32], keys: u64, now: u64) -> Option<Principal> {
        let cache = self.cache.as_ref()?;
        let entry = cache.get(digest)?;
        if entry.keys == keys && now < entry.expires {
            return Some(entry.principal);
        }
        cache.remove(digest);
        None
    }

    /// Remembers a token that was just verified under key generation `keys`, unless its
    /// `exp` is already past at `now`.
    pub(super) fn put(&self, digest: [u8; 32], principal: &Principal, expires: u64, keys: u64, now: u64) {
        if let Some(cache) = &self.cache {
            if now < expires {
                cache.insert(digest, Entry { principal: principal.clone(), expires, keys });
            }
        }
    }

    /// Entries held.
    pub(super) fn len(&self) -> usize {
        self.cache.as_ref().map_or(0, |c| c.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::AuthMethod;

    fn alice() -> Principal {
        Principal { name: "alice".into(), groups: vec!["etl".into()], method: AuthMethod::Jwt }
    }

    #[test]
    fn answers_only_before_exp() {
        let cache = VerifiedTokens::new(16);
        let d = digest("token");
        cache.put(d, &alice(), 1_000, 0, 900);
        assert_eq!(cache.get(&d, 0, 999), Some(alice()));
        assert_eq!(cache.get(&d, 0, 1_000), None, "at exp the full check decides");
        assert_eq!(cache.len(), 0, "an expired entry is dropped when met");
        cache.put(d, &alice(), 1_000, 0, 1_000);
        assert_eq!(cache.len(), 0, "a token already past exp (accepted within the leeway) is not kept");
    }

    #[test]
    fn a_key_reload_makes_every_entry_stale() {
        let cache = VerifiedTokens::new(16);
        let (a, b) = (digest("a"), digest("b"));
        cache.put(a, &alice(), 1_000, 3, 0);
        cache.put(b, &alice(), 1_000, 3, 0);
        assert!(cache.get(&a, 3, 1).is_some());
        assert_eq!(cache.get(&a, 4, 1), None);
        assert_eq!(cache.get(&b, 4, 1), None);
    }

    #[test]
    fn is_bounded_and_can_be_off() {
        let cache = VerifiedTokens::new(100);
        for i in 0..10_000 {
            cache.put(digest(&format!("token-{i}")), &alice(), u64::MAX, 0, 0);
        }
        assert!(cache.len() <= 100, "{} entries", cache.len());
        assert!(cache.len() >= 50, "{} entries", cache.len());
        let off = VerifiedTokens::new(0);
        off.put(digest("a"), &alice(), u64::MAX, 0, 0);
        assert_eq!((off.get(&digest("a"), 0, 0), off.len()), (None, 0));
    }

    #[test]
    fn different_tokens_are_different_entries() {
        let cache = VerifiedTokens::new(16);
        cache.put(digest("a.b.c"), &alice(), 1_000, 0, 0);
        assert_eq!(cache.get(&digest("a.b.d"), 0, 1), None);
    }
}
