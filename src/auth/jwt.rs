//! JWT bearer authentication: keys from a PEM file or a JWKS document (picked by `kid`),
//! reloaded when the file changes; an explicit list of asymmetric algorithms (never `none`,
//! never HMAC, so a public key can never be used as an HMAC secret); `exp`, `iss` and `aud`
//! required, `nbf` honoured, an explicit leeway. Also the development key pair and tokens.

use super::{AuthOutcome, AuthSetupError, Authenticator};
use crate::config::ValidatedConfig;
use crate::identity::{AuthMethod, ConnInfo, Principal};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

/// The `kid` of the development key pair.
pub const DEV_KID: &str = "sparkgate-dev";

/// Where the development key pair lives.
pub fn dev_key_paths(data_dir: &Path) -> (PathBuf, PathBuf) {
    let dir = data_dir.join("jwt");
    (dir.join("dev-private.pem"), dir.join("dev-public.pem"))
}

/// Creates the development RSA key pair unless it exists. Returns the public key path.
pub fn ensure_dev_keys(data_dir: &Path) -> Result<PathBuf, AuthSetupError> {
    use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
    let (private, public) = dev_key_paths(data_dir);
    if private.exists() && public.exists() {
        return Ok(public);
    }
    let key = rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048)
        .map_err(|e| AuthSetupError(format!("generating the development JWT key: {e}")))?;
    let private_pem = key.to_pkcs8_pem(LineEnding::LF).map_err(|e| AuthSetupError(e.to_string()))?;
    let public_pem =
        key.to_public_key().to_public_key_pem(LineEnding::LF).map_err(|e| AuthSetupError(e.to_string()))?;
    if let Some(dir) = private.parent() {
        crate::fs::create_private_dir(dir).map_err(|e| AuthSetupError(e.to_string()))?;
    }
    crate::fs::write_file(&private, private_pem.as_bytes(), 0o600).map_err(|e| AuthSetupError(e.to_string()))?;
    crate::fs::write_file(&public, public_pem.as_bytes(), 0o644).map_err(|e| AuthSetupError(e.to_string()))?;
    tracing::info!(public_key = %public.display(), "generated the development JWT key pair");
    Ok(public)
}

/// Signs a development token with the dev private key (for `sparkgate token`).
pub fn mint_dev_token(
    config: &ValidatedConfig,
    user: &str,
    groups: &[String],
    ttl: Duration,
) -> Result<String, AuthSetupError> {
    ring_backend::install();
    let jwt = &config.config.auth.jwt;
    if jwt.public_key.is_some() || jwt.jwks.is_some() {
        return Err(AuthSetupError(
            "auth.jwt uses configured keys; development tokens are only for the generated key pair".into(),
        ));
    }
    ensure_dev_keys(&config.config.server.data_dir)?;
    let (private, _) = dev_key_paths(&config.config.server.data_dir);
    let pem = std::fs::read(&private).map_err(|e| AuthSetupError(format!("{}: {e}", private.display())))?;
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(&pem).map_err(|e| AuthSetupError(e.to_string()))?;
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let mut claims = serde_json::Map::new();
    claims.insert(jwt.user_claim.clone(), Value::String(user.to_string()));
    claims.insert(jwt.groups_claim.clone(), Value::from(groups.to_vec()));
    claims.insert("iss".into(), Value::String(jwt.issuer.clone()));
    claims.insert("aud".into(), Value::String(jwt.audience.clone()));
    claims.insert("iat".into(), Value::from(now));
    claims.insert("nbf".into(), Value::from(now));
    claims.insert("exp".into(), Value::from(now + ttl.as_secs()));
    let mut header = jsonwebtoken::Header::new(Algorithm::RS256);
    header.kid = Some(DEV_KID.into());
    jsonwebtoken::encode(&header, &Value::Object(claims), &key).map_err(|e| AuthSetupError(e.to_string()))
}

/// Where verification keys come from.
#[derive(Debug, Clone)]
enum KeySource {
    Pem(PathBuf),
    Jwks(PathBuf),
}

impl KeySource {
    fn path(&self) -> &Path {
        match self {
            Self::Pem(p) | Self::Jwks(p) => p,
        }
    }
}

/// The loaded keys: `(kid, key)`; a PEM key has no kid and matches any.
struct KeySet {
    keys: Vec<(Option<String>, DecodingKey)>,
    /// SHA-256 of the file the keys were read from: a change is seen even when the new file
    /// has the old one's size and modification time.
    stamp: [u8; 32],
    /// Counts the loads: what the verified-token cache keys its entries to.
    generation: u64,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySet").field("keys", &self.keys.len()).finish()
    }
}

fn load_keys(source: &KeySource) -> Result<KeySet, String> {
    let path = source.path();
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let stamp = Sha256::digest(&bytes).into();
    let keys = match source {
        KeySource::Pem(_) => {
            let key = DecodingKey::from_rsa_pem(&bytes)
                .or_else(|_| DecodingKey::from_ec_pem(&bytes))
                .or_else(|_| DecodingKey::from_ed_pem(&bytes))
                .map_err(|_| format!("{}: not an RSA, EC or Ed25519 public key in PEM form", path.display()))?;
            vec![(None, key)]
        }
        KeySource::Jwks(_) => {
            let set: JwkSet =
                serde_json::from_slice(&bytes).map_err(|e| format!("{}: not a JWKS document: {e}", path.display()))?;
            let mut keys = Vec::new();
            for jwk in &set.keys {
                match DecodingKey::from_jwk(jwk) {
                    Ok(key) => keys.push((jwk.common.key_id.clone(), key)),
                    Err(e) => tracing::warn!(kid = ?jwk.common.key_id, error = %e, "skipping an unusable JWKS key"),
                }
            }
            if keys.is_empty() {
                return Err(format!("{}: the JWKS document holds no usable key", path.display()));
            }
            keys
        }
    };
    Ok(KeySet { keys, stamp, generation: 0 })
}

/// Verifies `Authorization: Bearer <jwt>`.
#[derive(Debug)]
pub struct JwtAuthenticator {
    source: KeySource,
    keys: RwLock<Arc<KeySet>>,
    last_check: Mutex<tokio::time::Instant>,
    reload_interval: Duration,
    algorithms: Vec<Algorithm>,
    issuer: String,
    audience: String,
    leeway: Duration,
    user_claim: String,
    groups_claim: String,
    verified: VerifiedTokens,
    /// Key set loads so far (the first is generation 0).
    generations: std::sync::atomic::AtomicU64,
}

impl JwtAuthenticator {
    /// Builds it from the configuration (generating the development key pair when no key is
    /// configured).
    pub fn from_config(config: &ValidatedConfig) -> Result<Self, AuthSetupError> {
        ring_backend::install();
        let jwt = &config.config.auth.jwt;
        let source = match (&jwt.public_key, &jwt.jwks) {
            (Some(pem), None) => KeySource::Pem(pem.clone()),
            (None, Some(jwks)) => KeySource::Jwks(jwks.clone()),
            (None, None) => KeySource::Pem(ensure_dev_keys(&config.config.server.data_dir)?),
            (Some(_), Some(_)) => {
                return Err(AuthSetupError("auth.jwt.public_key and auth.jwt.jwks are exclusive".into()))
            }
        };
        let keys = load_keys(&source).map_err(|e| AuthSetupError(format!("auth.jwt: {e}")))?;
        let algorithms = jwt
            .algorithms
            .iter()
            .map(|a| a.parse::<Algorithm>().map_err(|_| AuthSetupError(format!("auth.jwt.algorithms: unknown `{a}`"))))
            .collect::<Result<Vec<_>, _>>()?;
        if algorithms.iter().any(|a| matches!(a, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)) {
            return Err(AuthSetupError("auth.jwt.algorithms: HMAC algorithms are never accepted".into()));
        }
        Ok(Self {
            source,
            keys: RwLock::new(Arc::new(keys)),
            last_check: Mutex::new(tokio::time::Instant::now()),
            reload_interval: config.durations.jwt_reload_interval,
            algorithms,
            issuer: jwt.issuer.clone(),
            audience: jwt.audience.clone(),
            leeway: config.durations.jwt_leeway,
            user_claim: jwt.user_claim.clone(),
            groups_claim: jwt.groups_claim.clone(),
            verified: VerifiedTokens::new(jwt.verified_cache_size),
            generations: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// The current keys, reloading the file first if it changed (checked at most once per
    /// reload interval). A file that no longer parses keeps the old keys and logs why.
    fn current_keys(&self) -> Arc<KeySet> {
        let due = {
            let mut last = self.last_check.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if last.elapsed() >= self.reload_interval {
                *last = tokio::time::Instant::now();
                true
            } else {
                false
            }
        };
        let current = self.keys.read().map(|k| k.clone()).unwrap_or_else(|p| p.into_inner().clone());
        if !due {
            return current;
        }
        let unchanged = std::fs::read(self.source.path())
            .is_ok_and(|bytes| <[u8; 32]>::from(Sha256::digest(&bytes)) == current.stamp);
        if unchanged {
            return current;
        }
        match load_keys(&self.source) {
            Ok(mut fresh) => {
                // Unique per load, even when two reloads overlap.
                fresh.generation = self.generations.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                let fresh = Arc::new(fresh);
                tracing::info!(path = %self.source.path().display(), keys = fresh.keys.len(), "reloaded JWT verification keys");
                if let Ok(mut slot) = self.keys.write() {
                    *slot = fresh.clone();
                }
                fresh
            }
            Err(e) => {
                tracing::warn!(error = %e, "JWT keys not reloaded; keeping the previous keys");
                current
            }
        }
    }

    /// Verifies a token and returns the principal, or why not (no token material in the reason).
    /// A token verified before under the same keys and not yet at its `exp` is answered from
    /// the cache ([`verified`]).
    pub fn verify(&self, token: &str) -> Result<Principal, String> {
        let keys = self.current_keys();
        let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let digest = verified::digest(token);
        if let Some(principal) = self.verified.get(&digest, keys.generation, now) {
            return Ok(principal);
        }
        let (principal, expires) = self.verify_signed(token, &keys)?;
        self.verified.put(digest, &principal, expires, keys.generation, now);
        Ok(principal)
    }

    /// The full check: header, algorithm, key, signature, claims. Returns the principal and
    /// the token's `exp` (0 if it is not a whole number of seconds: such a token is not cached).
    fn verify_signed(&self, token: &str, keys: &KeySet) -> Result<(Principal, u64), String> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| format!("malformed token: {e}"))?;
        if !self.algorithms.contains(&header.alg) {
            return Err(format!("token algorithm {:?} is not accepted", header.alg));
        }
        let key = match &header.kid {
            Some(kid) => keys
                .keys
                .iter()
                .find(|(k, _)| k.as_deref() == Some(kid.as_str()))
                .or_else(|| keys.keys.iter().find(|(k, _)| k.is_none()))
                .map(|(_, key)| key)
                .ok_or_else(|| "token signed with an unknown key (kid)".to_string())?,
            None if keys.keys.len() == 1 => &keys.keys[0].1,
            None => return Err("token has no kid and several keys are configured".into()),
        };
        let mut validation = Validation::new(header.alg);
        validation.algorithms = vec![header.alg];
        validation.leeway = self.leeway.as_secs();
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        let data = jsonwebtoken::decode::<Value>(token, key, &validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as K;
            match e.kind() {
                K::ExpiredSignature => "token expired".to_string(),
                K::ImmatureSignature => "token not valid yet (nbf)".to_string(),
                K::InvalidAudience => "token audience is not accepted".to_string(),
                K::InvalidIssuer => "token issuer is not accepted".to_string(),
                K::InvalidSignature => "token signature is invalid".to_string(),
                K::MissingRequiredClaim(c) => format!("token lacks the required claim `{c}`"),
                _ => format!("token rejected: {e}"),
            }
        })?;
        let claims = data.claims;
        let expires = claims.get("exp").and_then(Value::as_u64).unwrap_or(0);
        let name = claims
            .get(&self.user_claim)
            .and_then(Value::as_str)
            .filter(|n| !n.trim().is_empty())
            .ok_or_else(|| format!("token lacks the user claim `{}`", self.user_claim))?
            .to_string();
        let groups = match claims.get(&self.groups_claim) {
            Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).map(str::to_string).collect(),
            Some(Value::String(s)) => {
                s.split(',').map(str::trim).filter(|g| !g.is_empty()).map(str::to_string).collect()
            }
            _ => Vec::new(),
        };
        Ok((Principal { name, groups, method: AuthMethod::Jwt }, expires))
    }
}

impl Authenticator for JwtAuthenticator {
    fn challenge(&self) -> Option<String> {
        Some("Bearer realm=\"sparkgate\"".into())
    }

    fn authenticate(&self, parts: &Parts, _conn: Option<&ConnInfo>) -> AuthOutcome {
        let Some(value) = parts.headers.get(AUTHORIZATION) else { return AuthOutcome::NotApplicable };
        let Ok(value) = value.to_str() else { return AuthOutcome::Rejected("malformed Authorization header".into()) };
        let Some((scheme, token)) = value.split_once(' ') else { return AuthOutcome::NotApplicable };
        if !scheme.eq_ignore_ascii_case("bearer") {
            return AuthOutcome::NotApplicable;
        }
        match self.verify(token.trim()) {
            Ok(principal) => AuthOutcome::authenticated(principal),
            Err(reason) => AuthOutcome::Rejected(reason),
        }
    }
}

mod ring_backend;
mod verified;
use verified::VerifiedTokens;

#[cfg(test)]
mod tests;
