//! The gateway key sessions' RPC secrets are derived from, so that no secret needs storing:
//! a session's secret is HMAC-SHA256(key, session id, a nonce of its own), the nonce is in the
//! session's record, and the key is in an owner-only file of its own — outside the store, so a
//! copy of the database alone authenticates no driver.

use super::handshake::{SessionSecret, SECRET_LEN};
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use std::path::Path;

/// Length of a session's nonce, in bytes.
pub const NONCE_LEN: usize = 16;

/// The key. Never printed.
#[derive(Clone)]
pub struct SecretKey([u8; SECRET_LEN]);

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey([redacted])")
    }
}

/// Why the key file could not be read or made. The message names the file, never its content.
#[derive(Debug, thiserror::Error)]
#[error("{}: {why}", path.display())]
pub struct KeyError {
    path: std::path::PathBuf,
    why: String,
}

impl SecretKey {
    /// A key from the OS CSPRNG, in memory only (tests).
    pub fn generate() -> Self {
        let mut bytes = [0u8; SECRET_LEN];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        Self(bytes)
    }

    /// The key in `path` (0600, in a 0700 directory), made on first use. A file that is not a
    /// key (wrong length, readable by others) is refused, never replaced: the sessions of an
    /// earlier run could not prove themselves with a new one.
    pub fn load_or_create(path: &Path) -> Result<Self, KeyError> {
        use std::os::unix::fs::PermissionsExt;
        let fail = |why: String| KeyError { path: path.to_path_buf(), why };
        match std::fs::read(path) {
            Ok(bytes) => {
                let mode = std::fs::metadata(path).map_err(|e| fail(e.to_string()))?.permissions().mode();
                if mode & 0o077 != 0 {
                    return Err(fail(format!("readable by others (mode {:o}); it must be 0600", mode & 0o777)));
                }
                let key: [u8; SECRET_LEN] = bytes
                    .try_into()
                    .map_err(|_| fail(format!("not a session secret key (it must be {SECRET_LEN} bytes)")))?;
                Ok(Self(key))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if let Some(dir) = path.parent() {
                    crate::fs::create_private_dir(dir).map_err(|e| fail(e.to_string()))?;
                }
                let key = Self::generate();
                crate::fs::write_file(path, &key.0, 0o600).map_err(|e| fail(e.to_string()))?;
                Ok(key)
            }
            Err(e) => Err(fail(e.to_string())),
        }
    }

    /// A fresh nonce for a new session.
    pub fn nonce() -> [u8; NONCE_LEN] {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        nonce
    }

    /// Session `session_id`'s secret for `nonce`.
    pub fn derive(&self, session_id: u32, nonce: &[u8; NONCE_LEN]) -> SessionSecret {
        // Were HMAC to refuse the key, a random secret would let no driver in: safe, and visible.
        self.mac(b"sparkgate-session-secret-v1|", session_id, nonce)
            .map_or_else(SessionSecret::generate, SessionSecret::from_bytes)
    }

    /// The Spark UI key of launch `id` of `kind` (`session` or `batch`) for `nonce`: derived,
    /// like the RPC secret, so that a restarted gateway signs what the running UI accepts.
    /// None only if HMAC refused the key (the caller then uses a random key).
    pub fn derive_ui_key(&self, kind: &str, id: u32, nonce: &[u8; NONCE_LEN]) -> Option<[u8; 32]> {
        self.mac(format!("sparkgate-ui-key-v1|{kind}|").as_bytes(), id, nonce)
    }

    fn mac(&self, label: &[u8], id: u32, nonce: &[u8; NONCE_LEN]) -> Option<[u8; 32]> {
        // new_from_slice only fails for key lengths HMAC cannot take; SHA-256 HMAC takes any.
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).ok()?;
        mac.update(label);
        mac.update(&id.to_be_bytes());
        mac.update(b"|");
        mac.update(nonce);
        Some(mac.finalize().into_bytes().into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_secret_follows_from_key_id_and_nonce_and_from_nothing_less() {
        let key = SecretKey::generate();
        let nonce = SecretKey::nonce();
        assert_eq!(key.derive(3, &nonce).to_hex(), key.derive(3, &nonce).to_hex());
        assert_ne!(key.derive(3, &nonce).to_hex(), key.derive(4, &nonce).to_hex());
        assert_ne!(key.derive(3, &nonce).to_hex(), key.derive(3, &SecretKey::nonce()).to_hex());
        assert_ne!(key.derive(3, &nonce).to_hex(), SecretKey::generate().derive(3, &nonce).to_hex());
        assert_eq!(format!("{key:?}"), "SecretKey([redacted])");
    }

    #[test]
    fn the_key_file_is_made_once_owner_only_and_a_wrong_one_is_refused_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys").join("session-secrets.key");
        let made = SecretKey::load_or_create(&path).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!((mode(&path), mode(path.parent().unwrap())), (0o600, 0o700));
        let nonce = SecretKey::nonce();
        let again = SecretKey::load_or_create(&path).unwrap();
        assert_eq!(made.derive(1, &nonce).to_hex(), again.derive(1, &nonce).to_hex(), "the same key after a restart");

        std::fs::write(&path, b"short").unwrap();
        let err = SecretKey::load_or_create(&path).unwrap_err().to_string();
        assert!(err.starts_with(&path.display().to_string()) && err.contains("32 bytes"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"short", "never replaced");

        std::fs::write(&path, [7u8; SECRET_LEN]).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = SecretKey::load_or_create(&path).unwrap_err().to_string();
        assert!(err.contains("readable by others"), "{err}");
        assert!(!err.contains("0707"), "the content is never shown: {err}");
    }
}
