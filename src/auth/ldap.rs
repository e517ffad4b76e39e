//! LDAP login: `Authorization: Basic` (sparkmagic's `Basic_Access`, `curl -u`, Hue) checked by
//! binding to the directory as the user ([`directory`]), over LDAPS or StartTLS.
//!
//! What a login costs and what it leaves behind:
//! - A user name that is not a valid gateway user name, or an empty password (an LDAP
//!   "unauthenticated bind" that would succeed for any DN), is refused without asking the
//!   directory.
//! - Wrong password and unknown user get the same 401 and the same audit record (under the name
//!   tried), and count towards the throttle ([`throttle`]): after `max_failures` within
//!   `failure_window`, per name and per client address, 429 with `Retry-After`, without asking
//!   the directory.
//! - A directory that cannot answer is a 503 naming the directory, never a 401: the password
//!   was not judged.
//! - Success answers with the signed cookie (see [`super::cookie`]), and the name and password
//!   are remembered for `auth.ldap.remember` as an HMAC under a per-process key (never the
//!   password itself), so Basic clients that keep no cookie do not bind on every request.
//!
//! The password is held in a [`Secret`] from the header on, so it cannot reach a log, the audit
//! trail or an error message.

mod directory;
mod throttle;

use self::directory::{Directory, Login};
use self::throttle::Throttle;
use super::cookie::CookieSigner;
use super::{AuthOutcome, AuthSetupError, Authenticator, Pending};
use crate::config::{Secret, ValidatedConfig};
use crate::error::ApiError;
use crate::identity::{valid_user_name, AuthMethod, ConnInfo, Principal};
use crate::net::AddrKey;
use axum::http::header::{AUTHORIZATION, SET_COOKIE};
use axum::http::request::Parts;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};
use tokio::time::Instant;

/// The `WWW-Authenticate` challenge.
const CHALLENGE: &str = "Basic realm=\"sparkgate\", charset=\"UTF-8\"";

/// The one answer to wrong credentials, whoever the user is.
const WRONG: &str = "wrong user name or password";

/// Credentials longer than this are refused before any work.
const MAX_CREDENTIALS_LEN: usize = 4096;

/// Logins remembered at most (see the module documentation).
const REMEMBERED: usize = 10_000;

/// 429 with `Retry-After` in whole seconds, rounded up (a client that waits that long is not
/// refused again).
fn throttled(retry_after: Duration) -> AuthOutcome {
    let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
    AuthOutcome::Failed(ApiError::TooManyRequests {
        msg: "too many failed logins; try again later".into(),
        retry_after: secs.max(1),
    })
}

/// See the module documentation.
#[derive(Debug, Clone)]
pub struct LdapAuthenticator {
    shared: Arc<Shared>,
}

struct Shared {
    directory: Directory,
    cookies: Option<Arc<CookieSigner>>,
    throttle: Mutex<Throttle>,
    remember: Option<Duration>,
    /// HMAC(key, user NUL password) → the principal and until when it is remembered.
    remembered: quick_cache::sync::Cache<[u8; 32], (Principal, Instant)>,
    remember_key: [u8; 32],
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LdapAuthenticator").field("directory", &self.directory).finish_non_exhaustive()
    }
}

impl LdapAuthenticator {
    /// The `ldap` entry of `auth.methods`; successful logins get a cookie from `cookies`.
    pub fn from_config(config: &ValidatedConfig, cookies: Option<Arc<CookieSigner>>) -> Result<Self, AuthSetupError> {
        let ldap = &config.config.auth.ldap;
        let directory = Directory::from_config(config).map_err(AuthSetupError)?;
        let mut remember_key = [0u8; 32];
        rand::rngs::OsRng
            .try_fill_bytes(&mut remember_key)
            .map_err(|e| AuthSetupError(format!("auth.ldap: no random key: {e}")))?;
        Ok(Self {
            shared: Arc::new(Shared {
                directory,
                cookies,
                throttle: Mutex::new(Throttle::new(
                    ldap.max_failures,
                    ldap.max_address_failures,
                    config.durations.ldap_failure_window,
                )),
                remember: config.durations.ldap_remember,
                remembered: quick_cache::sync::Cache::new(REMEMBERED),
                remember_key,
            }),
        })
    }

    /// Checks `user` and `password` from the web UI's login form, coming from `peer`: the
    /// principal and the cookie to set, or how to refuse. Always asks the directory (a form
    /// login is a person logging in, and gets a cookie from a real bind).
    pub async fn login(&self, user: String, password: Secret<String>, peer: Option<AddrKey>) -> AuthOutcome {
        self.shared.login(user, password, peer, Remembered::Ignore).await
    }
}

/// Whether a login may be answered from the remembered ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Remembered {
    /// HTTP Basic, sent with every request.
    Use,
    /// The login form.
    Ignore,
}

impl Shared {
    async fn login(
        &self,
        user: String,
        password: Secret<String>,
        peer: Option<AddrKey>,
        remembered: Remembered,
    ) -> AuthOutcome {
        if !valid_user_name(&user) {
            // Not a name the gateway could hand on (nor record as given): refused as wrong
            // credentials, counted against the address only.
            if let Err(retry_after) = self.lock().attempt(None, peer, Instant::now()) {
                return throttled(retry_after);
            }
            return AuthOutcome::Rejected(WRONG.into());
        }
        // Directories match user names without regard to case: so do the throttle and the
        // remembered logins (the principal is named as the directory spells it).
        let key = user.to_lowercase();
        let digest = self.digest(&key, &password);
        // Credentials that bound a moment ago are right: no lock applies to them, and no new
        // cookie is issued (the one from the bind stays the longest a login lasts).
        if remembered == Remembered::Use {
            if let Some(principal) = digest.as_ref().and_then(|d| self.remembered(d)) {
                return AuthOutcome::authenticated(principal);
            }
        }
        let attempt = match self.lock().attempt(Some(&key), peer, Instant::now()) {
            Ok(attempt) => attempt,
            Err(retry_after) => return throttled(retry_after),
        };
        match self.directory.login(&user, &password).await {
            Ok(Login::Valid { name, groups }) => {
                self.lock().succeed(attempt);
                let principal = Principal { name, groups, method: AuthMethod::Ldap };
                if let (Some(remember), Some(digest)) = (self.remember, digest) {
                    self.remembered.insert(digest, (principal.clone(), Instant::now() + remember));
                }
                self.authenticated(principal)
            }
            // The attempt stays counted.
            Ok(Login::Invalid) => AuthOutcome::LoginFailed { user: key, reason: WRONG.into() },
            Err(unavailable) => {
                // Not judged: not a failure of the user's.
                self.lock().give_back(attempt);
                AuthOutcome::Failed(ApiError::Unavailable(unavailable.0))
            }
        }
    }

    fn remembered(&self, digest: &[u8; 32]) -> Option<Principal> {
        let (principal, until) = self.remembered.get(digest)?;
        if Instant::now() < until {
            return Some(principal);
        }
        self.remembered.remove(digest);
        None
    }

    fn authenticated(&self, principal: Principal) -> AuthOutcome {
        let mut response_headers = Vec::new();
        if let Some(cookies) = &self.cookies {
            match cookies.set_cookie_header(&principal, SystemTime::now()) {
                Ok(value) => response_headers.push((SET_COOKIE, value)),
                // The login succeeded; without a cookie the client just logs in again.
                Err(e) => tracing::warn!(error = %e, "cannot issue the LDAP login cookie"),
            }
        }
        AuthOutcome::Authenticated { principal, response_headers }
    }

    /// The key a login is remembered by. HMAC accepts keys of any length, so `None` (nothing
    /// is remembered) cannot happen; it keeps panics out of the request path.
    fn digest(&self, user: &str, password: &Secret<String>) -> Option<[u8; 32]> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.remember_key).ok()?;
        mac.update(user.as_bytes());
        mac.update(&[0]);
        mac.update(password.expose().as_bytes());
        Some(mac.finalize().into_bytes().into())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Throttle> {
        self.throttle.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The user name and password of an `Authorization: Basic` header: `None` when there is none,
/// `Err` when it is malformed (the reason holds neither).
pub fn basic_credentials(parts: &Parts) -> Option<Result<(String, Secret<String>), &'static str>> {
    let value = parts.headers.get_all(AUTHORIZATION).iter().find_map(|v| {
        let text = v.to_str().ok()?;
        let (scheme, rest) = text.split_once(' ')?;
        scheme.eq_ignore_ascii_case("basic").then(|| rest.trim())
    })?;
    if value.len() > MAX_CREDENTIALS_LEN {
        return Some(Err("Basic credentials too long"));
    }
    let Ok(decoded) = STANDARD.decode(value) else { return Some(Err("malformed Basic credentials")) };
    // Decoded bytes hold the password: wrapped before anything else can see them.
    let decoded = Secret::new(decoded);
    let Ok(text) = std::str::from_utf8(decoded.expose()) else {
        return Some(Err("Basic credentials must be UTF-8"));
    };
    let Some((user, password)) = text.split_once(':') else { return Some(Err("malformed Basic credentials")) };
    Some(Ok((user.to_string(), Secret::new(password.to_string()))))
}

impl Authenticator for LdapAuthenticator {
    fn challenge(&self) -> Option<String> {
        Some(CHALLENGE.into())
    }

    fn authenticate(&self, parts: &Parts, conn: Option<&ConnInfo>) -> AuthOutcome {
        let (user, password) = match basic_credentials(parts) {
            None => return AuthOutcome::NotApplicable,
            Some(Err(reason)) => return AuthOutcome::Rejected(reason.into()),
            Some(Ok(credentials)) => credentials,
        };
        let peer = conn.map(|c| AddrKey::of(c.peer.ip()));
        let shared = self.shared.clone();
        AuthOutcome::Pending(Pending::new(async move { shared.login(user, password, peer, Remembered::Use).await }))
    }
}

#[cfg(test)]
mod tests;
