//! The signed authentication cookie issued after a successful SPNEGO handshake (like Hadoop's
//! `hadoop.auth`) or LDAP login, so a client does not redo Kerberos, or the directory bind, on
//! every request.
//!
//! `sparkgate_auth=<payload>.<mac>`: `payload` is base64url (no padding) of a small JSON object
//! (user, groups, how the user logged in, expiry in Unix seconds) and `mac` is base64url of HMAC-SHA256 over
//! `"sparkgate_auth.v1." + payload`, keyed with 32 random bytes drawn from the OS when the
//! gateway process starts. The key lives only in memory, so cookies do not survive a restart
//! and are not accepted by another gateway instance: such clients simply redo SPNEGO (the 401
//! carries the `Negotiate` challenge). The MAC is checked in constant time before anything in
//! the payload is parsed; the expiry is enforced on the gateway's clock, not only by the
//! browser's `Max-Age`.

use super::{AuthOutcome, Authenticator};
use crate::identity::{AuthMethod, ConnInfo, Principal};
use axum::http::header::{AUTHORIZATION, COOKIE};
use axum::http::request::Parts;
use axum::http::HeaderValue;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The cookie's name.
pub const COOKIE_NAME: &str = "sparkgate_auth";

/// Domain separation for the MAC: a key can never sign anything else by accident.
const MAC_CONTEXT: &[u8] = b"sparkgate_auth.v1.";

/// Cookies longer than this are refused before any work (browsers cap a cookie at 4 KiB).
const MAX_COOKIE_LEN: usize = 4096;

/// Why a cookie could not be issued or was not accepted. The messages hold no secret.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum CookieError {
    /// The operating system's random generator failed while creating the key.
    #[error("cannot generate the cookie signing key: {0}")]
    Random(String),
    /// The cookie is not `<payload>.<mac>` in base64url, or too long.
    #[error("malformed {COOKIE_NAME} cookie")]
    Malformed,
    /// The MAC does not match: tampered, or signed by another gateway process.
    #[error("invalid {COOKIE_NAME} cookie signature (tampered, or issued by another gateway process)")]
    BadSignature,
    /// The cookie's lifetime is over.
    #[error("expired {COOKIE_NAME} cookie")]
    Expired,
    /// The principal cannot be encoded (never happens for a `Principal` the gateway built).
    #[error("cannot encode the {COOKIE_NAME} cookie")]
    Encode,
    /// The cookie would be longer than a browser keeps (a user in very many groups).
    #[error("the {COOKIE_NAME} cookie would be longer than {MAX_COOKIE_LEN} bytes")]
    TooLarge,
}

/// What the cookie carries.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Payload {
    /// Short user name.
    u: String,
    /// Groups.
    g: Vec<String>,
    /// How the user logged in: `spnego` or `ldap`.
    m: String,
    /// Expiry, Unix seconds.
    e: u64,
}

/// Signs and verifies cookies with a per-process key.
pub struct CookieSigner {
    key: [u8; 32],
    ttl: Duration,
}

impl std::fmt::Debug for CookieSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CookieSigner").field("key", &"[redacted]").field("ttl", &self.ttl).finish()
    }
}

impl CookieSigner {
    /// A signer with a fresh 32-byte key from the OS CSPRNG; cookies live for `ttl`.
    pub fn generate(ttl: Duration) -> Result<Self, CookieError> {
        let mut key = [0u8; 32];
        rand::rngs::OsRng.try_fill_bytes(&mut key).map_err(|e| CookieError::Random(e.to_string()))?;
        Ok(Self::with_key(key, ttl))
    }

    /// A signer with a given key (tests; two gateways never share one).
    pub fn with_key(key: [u8; 32], ttl: Duration) -> Self {
        Self { key, ttl }
    }

    /// A signer with the same key and another lifetime (one key per process, one lifetime per
    /// method that issues cookies).
    pub fn with_ttl(&self, ttl: Duration) -> Self {
        Self { key: self.key, ttl }
    }

    /// The cookie lifetime.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The MAC state after the context prefix. HMAC accepts keys of any length, so the error
    /// (`fail`) is unreachable; it exists to keep panics out of the request path.
    fn mac(&self, fail: CookieError) -> Result<Hmac<Sha256>, CookieError> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key).map_err(|_| fail)?;
        mac.update(MAC_CONTEXT);
        Ok(mac)
    }

    /// The cookie value (`<payload>.<mac>`) for `principal`, valid until `now + ttl`.
    pub fn sign(&self, principal: &Principal, now: SystemTime) -> Result<String, CookieError> {
        let expiry = now.checked_add(self.ttl).ok_or(CookieError::Encode)?;
        let e = expiry.duration_since(UNIX_EPOCH).map_err(|_| CookieError::Encode)?.as_secs();
        let m = match principal.method {
            AuthMethod::Ldap | AuthMethod::LdapCookie => "ldap",
            _ => "spnego",
        };
        let json =
            serde_json::to_vec(&Payload { u: principal.name.clone(), g: principal.groups.clone(), m: m.into(), e })
                .map_err(|_| CookieError::Encode)?;
        let payload = URL_SAFE_NO_PAD.encode(json);
        let mut mac = self.mac(CookieError::Encode)?;
        mac.update(payload.as_bytes());
        let tag = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        let value = format!("{payload}.{tag}");
        if value.len() > MAX_COOKIE_LEN {
            return Err(CookieError::TooLarge);
        }
        Ok(value)
    }

    /// The complete `Set-Cookie` header value for `principal`.
    pub fn set_cookie_header(&self, principal: &Principal, now: SystemTime) -> Result<HeaderValue, CookieError> {
        let value = self.sign(principal, now)?;
        // Max-Age 0 would delete the cookie; a sub-second TTL still yields a usable one.
        let max_age = self.ttl.as_secs().max(1);
        HeaderValue::from_str(&format!(
            "{COOKIE_NAME}={value}; Path=/; HttpOnly; Secure; SameSite=Strict; Max-Age={max_age}"
        ))
        .map_err(|_| CookieError::Encode)
    }

    /// Checks a cookie value and returns its principal (method `SpnegoCookie` or `LdapCookie`).
    pub fn verify(&self, value: &str, now: SystemTime) -> Result<Principal, CookieError> {
        if value.len() > MAX_COOKIE_LEN {
            return Err(CookieError::Malformed);
        }
        let (payload, tag) = value.split_once('.').ok_or(CookieError::Malformed)?;
        let tag = URL_SAFE_NO_PAD.decode(tag).map_err(|_| CookieError::Malformed)?;
        let mut mac = self.mac(CookieError::BadSignature)?;
        mac.update(payload.as_bytes());
        // Constant-time comparison (hmac uses `subtle`); nothing is parsed before it passes.
        mac.verify_slice(&tag).map_err(|_| CookieError::BadSignature)?;
        let json = URL_SAFE_NO_PAD.decode(payload).map_err(|_| CookieError::Malformed)?;
        let payload: Payload = serde_json::from_slice(&json).map_err(|_| CookieError::Malformed)?;
        let now_secs = now.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        if now_secs >= payload.e {
            return Err(CookieError::Expired);
        }
        let method = match payload.m.as_str() {
            "spnego" => AuthMethod::SpnegoCookie,
            "ldap" => AuthMethod::LdapCookie,
            _ => return Err(CookieError::Malformed),
        };
        Ok(Principal { name: payload.u, groups: payload.g, method })
    }
}

/// Every `sparkgate_auth` value among the request's `Cookie` headers (HTTP/2 may split them).
fn cookie_values(parts: &Parts) -> Vec<&str> {
    parts
        .headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(|(name, _)| *name == COOKIE_NAME)
        .map(|(_, value)| value.trim().trim_matches('"'))
        .collect()
}

/// Whether the request carries fresh credentials that log in again: `Authorization: Negotiate …`
/// or `Authorization: Basic …`.
fn has_fresh_credentials(parts: &Parts) -> bool {
    parts.headers.get_all(AUTHORIZATION).iter().any(|v| {
        v.to_str()
            .ok()
            .and_then(|v| v.split_whitespace().next())
            .is_some_and(|scheme| scheme.eq_ignore_ascii_case("negotiate") || scheme.eq_ignore_ascii_case("basic"))
    })
}

/// Accepts the cookie on later requests ([`AuthMethod::SpnegoCookie`],
/// [`AuthMethod::LdapCookie`]). It sits right before the first method that issues cookies in
/// the chain.
#[derive(Debug)]
pub struct CookieAuthenticator {
    signer: Arc<CookieSigner>,
}

impl CookieAuthenticator {
    /// Verifies cookies signed by `signer` (the same one the SPNEGO authenticator issues with).
    pub fn new(signer: Arc<CookieSigner>) -> Self {
        Self { signer }
    }

    /// [`Authenticator::authenticate`] with an explicit clock.
    pub fn authenticate_at(&self, parts: &Parts, now: SystemTime) -> AuthOutcome {
        let values = cookie_values(parts);
        if values.is_empty() {
            return AuthOutcome::NotApplicable;
        }
        // A fresh Negotiate handshake or Basic login is the stronger proof and replaces the
        // cookie (as Hadoop's filter does): an expired or foreign cookie must not block
        // re-authentication, and a cookie never overrides the user the credentials name.
        if has_fresh_credentials(parts) {
            return AuthOutcome::NotApplicable;
        }
        let mut last_error = CookieError::Malformed;
        let mut valid: Option<Principal> = None;
        for value in values {
            match self.signer.verify(value, now) {
                // Two valid cookies naming different users: one was planted (a page on another
                // port of this host, or a sibling domain, can set a cookie with a longer path
                // that the browser sends first). Neither is trusted.
                Ok(principal) if valid.as_ref().is_some_and(|v| v.name != principal.name) => {
                    return AuthOutcome::Rejected(format!(
                        "conflicting {COOKIE_NAME} cookies for different users; log in again"
                    ));
                }
                Ok(principal) => valid = Some(valid.unwrap_or(principal)),
                Err(e) => last_error = e,
            }
        }
        match valid {
            Some(principal) => AuthOutcome::authenticated(principal),
            None => AuthOutcome::Rejected(last_error.to_string()),
        }
    }
}

impl Authenticator for CookieAuthenticator {
    fn challenge(&self) -> Option<String> {
        // The cookie is obtained through SPNEGO or an LDAP login, whose authenticators send
        // the challenges.
        None
    }

    fn authenticate(&self, parts: &Parts, _conn: Option<&ConnInfo>) -> AuthOutcome {
        self.authenticate_at(parts, SystemTime::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Request;

    fn alice() -> Principal {
        Principal { name: "alice".into(), groups: vec!["eng".into()], method: AuthMethod::Spnego }
    }

    fn signer() -> CookieSigner {
        CookieSigner::with_key([9u8; 32], Duration::from_secs(600))
    }

    fn parts_with(headers: &[(&str, &str)]) -> Parts {
        let mut b = Request::builder();
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    fn t(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn round_trip_gives_the_cookie_method() {
        let s = signer();
        let v = s.sign(&alice(), t(1_000)).unwrap();
        let p = s.verify(&v, t(1_599)).unwrap();
        assert_eq!(p, Principal { name: "alice".into(), groups: vec!["eng".into()], method: AuthMethod::SpnegoCookie });
    }

    #[test]
    fn expired_is_refused() {
        let s = signer();
        let v = s.sign(&alice(), t(1_000)).unwrap();
        assert_eq!(s.verify(&v, t(1_600)), Err(CookieError::Expired));
    }

    #[test]
    fn tampered_payload_or_mac_is_refused() {
        let s = signer();
        let v = s.sign(&alice(), t(1_000)).unwrap();
        let (payload, tag) = v.split_once('.').unwrap();
        // Another user's payload with alice's MAC.
        let bob = URL_SAFE_NO_PAD.encode(br#"{"u":"bob","g":[],"e":999999999999}"#);
        assert_eq!(s.verify(&format!("{bob}.{tag}"), t(1_001)), Err(CookieError::BadSignature));
        // One flipped MAC character.
        let mut bad = tag.as_bytes().to_vec();
        bad[3] = if bad[3] == b'A' { b'B' } else { b'A' };
        let bad = String::from_utf8(bad).unwrap();
        assert_eq!(s.verify(&format!("{payload}.{bad}"), t(1_001)), Err(CookieError::BadSignature));
    }

    #[test]
    fn another_key_is_refused() {
        let v = signer().sign(&alice(), t(1_000)).unwrap();
        let other = CookieSigner::with_key([8u8; 32], Duration::from_secs(600));
        assert_eq!(other.verify(&v, t(1_001)), Err(CookieError::BadSignature));
    }

    #[test]
    fn malformed_is_refused() {
        let s = signer();
        for v in ["", "abc", "a.b", "!!!.!!!", &"a".repeat(5000)] {
            assert!(s.verify(v, t(1)).is_err(), "{v}");
        }
    }

    #[test]
    fn generated_keys_differ() {
        let a = CookieSigner::generate(Duration::from_secs(60)).unwrap();
        let b = CookieSigner::generate(Duration::from_secs(60)).unwrap();
        assert_ne!(a.key, b.key);
        assert!(!format!("{a:?}").contains(&format!("{:?}", a.key)));
    }

    #[test]
    fn set_cookie_has_every_attribute() {
        let h = signer().set_cookie_header(&alice(), t(1_000)).unwrap();
        let h = h.to_str().unwrap();
        assert!(h.starts_with("sparkgate_auth="), "{h}");
        for attr in ["; Path=/", "; HttpOnly", "; Secure", "; SameSite=Strict", "; Max-Age=600"] {
            assert!(h.contains(attr), "{h} lacks {attr}");
        }
    }

    #[test]
    fn authenticator_allows_valid_and_denies_bad_or_absent() {
        let s = Arc::new(signer());
        let a = CookieAuthenticator::new(s.clone());
        let good = s.sign(&alice(), t(1_000)).unwrap();
        let cookie = format!("other=1; {COOKIE_NAME}={good}");
        match a.authenticate_at(&parts_with(&[("cookie", &cookie)]), t(1_001)) {
            AuthOutcome::Authenticated { principal, .. } => assert_eq!(principal.name, "alice"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(a.authenticate_at(&parts_with(&[]), t(1_001)), AuthOutcome::NotApplicable));
        assert!(matches!(
            a.authenticate_at(&parts_with(&[("cookie", "other=1")]), t(1_001)),
            AuthOutcome::NotApplicable
        ));
        let bad = format!("{COOKIE_NAME}=x{good}");
        assert!(matches!(a.authenticate_at(&parts_with(&[("cookie", &bad)]), t(1_001)), AuthOutcome::Rejected(_)));
        // Expired.
        assert!(matches!(
            a.authenticate_at(&parts_with(&[("cookie", &cookie)]), t(5_000)),
            AuthOutcome::Rejected(r) if r.contains("expired")
        ));
        // A Negotiate header takes over, so a stale cookie cannot block re-authentication.
        assert!(matches!(
            a.authenticate_at(&parts_with(&[("cookie", &bad), ("authorization", "Negotiate YII=")]), t(1_001)),
            AuthOutcome::NotApplicable
        ));
    }

    #[test]
    fn a_planted_cookie_for_another_user_is_refused_not_obeyed() {
        // A review planted bob's cookie with a longer path from another port of the host: the
        // browser sent it first and alice's pages became bob's.
        let s = Arc::new(signer());
        let a = CookieAuthenticator::new(s.clone());
        let bob = Principal { name: "bob".into(), ..alice() };
        let (planted, own) = (s.sign(&bob, t(1_000)).unwrap(), s.sign(&alice(), t(1_000)).unwrap());
        let both = format!("{COOKIE_NAME}={planted}; {COOKIE_NAME}={own}");
        assert!(matches!(
            a.authenticate_at(&parts_with(&[("cookie", &both)]), t(1_001)),
            AuthOutcome::Rejected(r) if r.contains("conflicting")
        ));
        // Two valid cookies of the same user (a renewed one beside the old) are fine.
        let again = s.sign(&alice(), t(1_001)).unwrap();
        let same = format!("{COOKIE_NAME}={own}; {COOKIE_NAME}={again}");
        assert!(matches!(
            a.authenticate_at(&parts_with(&[("cookie", &same)]), t(1_002)),
            AuthOutcome::Authenticated { .. }
        ));
    }
}
