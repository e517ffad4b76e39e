//! The mutual HMAC-SHA256 challenge–response that opens every driver connection: the driver
//! proves it holds the session's secret, then the gateway proves it too.

use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// Length of the per-session secret and of each nonce, in bytes.
pub const SECRET_LEN: usize = 32;

/// A per-session secret: 32 bytes from the OS CSPRNG. Never printed.
#[derive(Clone)]
pub struct SessionSecret([u8; SECRET_LEN]);

impl std::fmt::Debug for SessionSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionSecret([redacted])")
    }
}

impl SessionSecret {
    /// A fresh secret from the operating system's CSPRNG.
    pub fn generate() -> Self {
        let mut bytes = [0u8; SECRET_LEN];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        Self(bytes)
    }

    /// From raw bytes (tests and recovery).
    pub fn from_bytes(bytes: [u8; SECRET_LEN]) -> Self {
        Self(bytes)
    }

    /// Hex form, for the driver's 0600 configuration file only.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The MAC one side sends: HMAC(secret, "sparkgate-rpc-v1|role|session|client_nonce|server_nonce").
    pub fn mac(&self, role: Role, session_id: u32, client_nonce: &str, server_nonce: &str) -> String {
        hex::encode(self.mac_bytes(role, session_id, client_nonce, server_nonce))
    }

    fn mac_bytes(&self, role: Role, session_id: u32, client_nonce: &str, server_nonce: &str) -> Vec<u8> {
        // new_from_slice only fails for key lengths HMAC cannot take; SHA-256 HMAC takes any.
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&self.0) else {
            return Vec::new();
        };
        let input = format!("sparkgate-rpc-v1|{}|{session_id}|{client_nonce}|{server_nonce}", role.as_str());
        mac.update(input.as_bytes());
        mac.finalize().into_bytes().to_vec()
    }

    /// Checks a MAC sent by the other side, in constant time.
    pub fn verify(&self, role: Role, session_id: u32, client_nonce: &str, server_nonce: &str, mac_hex: &str) -> bool {
        let Ok(given) = hex::decode(mac_hex) else {
            return false;
        };
        let expected = self.mac_bytes(role, session_id, client_nonce, server_nonce);
        !expected.is_empty() && expected.len() == given.len() && bool::from(expected.ct_eq(&given))
    }
}

/// Which side computed a MAC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The driver's proof.
    Driver,
    /// The gateway's answer.
    Gateway,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Self::Driver => "driver",
            Self::Gateway => "gateway",
        }
    }
}

/// A fresh 32-byte nonce, hex.
pub fn fresh_nonce() -> String {
    let mut bytes = [0u8; SECRET_LEN];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// Whether a nonce sent by a peer has the right shape (64 hex chars).
pub fn valid_nonce(nonce: &str) -> bool {
    nonce.len() == SECRET_LEN * 2 && nonce.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proofs_verify_only_with_the_same_inputs() {
        let secret = SessionSecret::generate();
        let (cn, sn) = (fresh_nonce(), fresh_nonce());
        let mac = secret.mac(Role::Driver, 7, &cn, &sn);
        assert!(secret.verify(Role::Driver, 7, &cn, &sn, &mac));
        // Deny twins: another role, session, nonce or secret.
        assert!(!secret.verify(Role::Gateway, 7, &cn, &sn, &mac));
        assert!(!secret.verify(Role::Driver, 8, &cn, &sn, &mac));
        assert!(!secret.verify(Role::Driver, 7, &cn, &fresh_nonce(), &mac));
        assert!(!SessionSecret::generate().verify(Role::Driver, 7, &cn, &sn, &mac));
        assert!(!secret.verify(Role::Driver, 7, &cn, &sn, "zz"));
        assert!(!secret.verify(Role::Driver, 7, &cn, &sn, ""));
    }

    #[test]
    fn known_answer() {
        // Pins the MAC input format that the Python driver computes independently.
        let secret = SessionSecret::from_bytes([7u8; 32]);
        let mac = secret.mac(Role::Driver, 1, &"a".repeat(64), &"b".repeat(64));
        let mut m = Hmac::<Sha256>::new_from_slice(&[7u8; 32]).unwrap();
        m.update(format!("sparkgate-rpc-v1|driver|1|{}|{}", "a".repeat(64), "b".repeat(64)).as_bytes());
        assert_eq!(mac, hex::encode(m.finalize().into_bytes()));
    }

    #[test]
    fn nonces_are_fresh_and_checked() {
        let a = fresh_nonce();
        assert!(valid_nonce(&a));
        assert_ne!(a, fresh_nonce());
        assert!(!valid_nonce("abc"));
        assert!(!valid_nonce(&"g".repeat(64)));
        assert_eq!(format!("{:?}", SessionSecret::generate()), "SessionSecret([redacted])");
    }
}
