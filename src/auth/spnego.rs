//! SPNEGO/Kerberos authentication (RFC 4559 `Authorization: Negotiate`): a GSSAPI acceptor
//! (MIT krb5 through libgssapi) with the service keytab, auth_to_local-style rules that map the
//! client principal to a short user name, the mutual-authentication token returned in
//! `WWW-Authenticate`, and the signed cookie of [`super::cookie`] issued on success.
//!
//! # What an operator configures
//!
//! ```toml
//! [auth]
//! methods = ["spnego"]
//! [auth.spnego]
//! keytab = "/etc/security/keytabs/sparkgate.keytab"  # holds HTTP/<gateway host>@REALM
//! principal = "HTTP/gateway.example.com@EXAMPLE.COM" # optional; unset = any key in the keytab
//! rules = [ { match = '^([a-z][a-z0-9_.-]*)@EXAMPLE\.COM$', user = '${1}' } ]
//! cookie_ttl = "10m"                                  # "0" = no cookie
//! ```
//!
//! and the environment of the gateway process:
//!
//! - `KRB5_KTNAME=FILE:<the same keytab path>` — **required**. libgssapi 0.11 exposes neither
//!   `gss_acquire_cred_from` (MIT's credential store) nor `krb5_gss_register_acceptor_identity`,
//!   the crate forbids `unsafe` (so no FFI of our own), and `std::env::set_var` is banned (a data
//!   race in a multi-threaded process). MIT therefore finds the keytab through this variable,
//!   and start-up refuses to continue unless it names the configured `auth.spnego.keytab`.
//! - `KRB5_CONFIG` — optional (default `/etc/krb5.conf`); accepting needs no KDC, only the keytab.
//! - Replay detection uses MIT's default replay cache (`$KRB5RCACHEDIR`, default `/var/tmp`,
//!   one file per user id): that directory must be writable by the gateway user. Start-up
//!   refuses `KRB5RCACHETYPE=none` and `KRB5RCACHENAME=none:…`, which would disable it.
//!
//! Each request step gets its own acceptor context (HTTP is stateless): Kerberos inside SPNEGO
//! completes in one round trip, which is what browsers, curl, Java and Python clients do; a
//! negotiation that needs a second leg gets `401 Negotiate <token>` but cannot complete. The
//! cookie's key is random per process: cookies do not survive a restart and are not accepted
//! by another gateway instance (clients then simply redo SPNEGO).

use super::cookie::CookieSigner;
use super::{AuthOutcome, AuthSetupError, Authenticator};
use crate::config::{NameRule, SpnegoConfig, ValidatedConfig};
use crate::identity::{AuthMethod, ConnInfo, Principal};
use axum::http::header::{AUTHORIZATION, SET_COOKIE, WWW_AUTHENTICATE};
use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use libgssapi::context::{CtxFlags, SecurityContext, ServerCtx};
use libgssapi::credential::{Cred, CredUsage};
use libgssapi::name::Name;
use libgssapi::oid::{GSS_MECH_KRB5, GSS_NT_KRB5_PRINCIPAL};
use regex::Regex;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

/// The `WWW-Authenticate` challenge.
pub const CHALLENGE: &str = "Negotiate";

/// Decoded tokens larger than this are refused before reaching GSSAPI (a ticket with a large
/// Active Directory PAC stays well below it).
const MAX_TOKEN_LEN: usize = 64 * 1024;

/// Why SPNEGO could not be set up at start-up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpnegoError {
    /// `auth.spnego.keytab` is not set.
    #[error("auth.spnego.keytab is required for SPNEGO")]
    NoKeytab,
    /// The keytab cannot be opened by the gateway user.
    #[error("cannot read auth.spnego.keytab {path}: {source}")]
    KeytabUnreadable {
        /// The configured path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// `KRB5_KTNAME` is unset or names another keytab (see the module documentation).
    #[error(
        "the KRB5_KTNAME environment variable must name auth.spnego.keytab: start the gateway with \
         KRB5_KTNAME=FILE:{keytab} ({problem}); MIT Kerberos reads the acceptor keytab from it and the \
         gateway cannot set it safely itself"
    )]
    KtnameMismatch {
        /// The configured keytab.
        keytab: String,
        /// What is wrong with the variable.
        problem: String,
    },
    /// The environment turns MIT's replay cache off.
    #[error("{0} disables Kerberos replay detection; unset it (a captured Negotiate token could be replayed)")]
    ReplayCacheDisabled(String),
    /// A rule's pattern or user template is invalid.
    #[error("auth.spnego.rules[{index}]: {problem}")]
    BadRule {
        /// Position in `auth.spnego.rules`.
        index: usize,
        /// What is wrong.
        problem: String,
    },
    /// No rule is configured: nobody could be mapped to a user.
    #[error("auth.spnego.rules is empty: no principal could be mapped to a user")]
    NoRules,
    /// `auth.spnego.principal` is not a valid Kerberos principal name.
    #[error("auth.spnego.principal `{principal}`: {message}")]
    BadPrincipal {
        /// The configured principal.
        principal: String,
        /// The GSSAPI message.
        message: String,
    },
    /// GSSAPI could not acquire acceptor credentials from the keytab.
    #[error("cannot acquire Kerberos acceptor credentials from {keytab}{for_principal}: {message}")]
    Credentials {
        /// The keytab.
        keytab: String,
        /// ` for <principal>` or empty.
        for_principal: String,
        /// The GSSAPI message.
        message: String,
    },
    /// The cookie key could not be generated.
    #[error(transparent)]
    Cookie(#[from] super::cookie::CookieError),
}

impl From<SpnegoError> for AuthSetupError {
    fn from(e: SpnegoError) -> Self {
        AuthSetupError(e.to_string())
    }
}

/// The Kerberos-related environment of the gateway process, passed in explicitly so tests can
/// give any environment without touching the process's.
#[derive(Debug, Clone, Default)]
pub struct KrbEnv {
    /// `KRB5_KTNAME`.
    pub ktname: Option<String>,
    /// `KRB5RCACHETYPE`.
    pub rcache_type: Option<String>,
    /// `KRB5RCACHENAME`.
    pub rcache_name: Option<String>,
}

impl KrbEnv {
    /// Reads the variables from this process's environment.
    pub fn from_process() -> Self {
        let var = |name: &str| std::env::var_os(name).map(|v| v.to_string_lossy().into_owned());
        Self { ktname: var("KRB5_KTNAME"), rcache_type: var("KRB5RCACHETYPE"), rcache_name: var("KRB5RCACHENAME") }
    }

    /// Refuses an environment in which MIT would not use `keytab` or would skip replay checks.
    pub fn check(&self, keytab: &Path) -> Result<(), SpnegoError> {
        if self.rcache_type.as_deref().is_some_and(|t| t.trim().eq_ignore_ascii_case("none")) {
            return Err(SpnegoError::ReplayCacheDisabled("KRB5RCACHETYPE=none".into()));
        }
        if self.rcache_name.as_deref().is_some_and(|n| n.trim().to_ascii_lowercase().starts_with("none:")) {
            return Err(SpnegoError::ReplayCacheDisabled("KRB5RCACHENAME=none:…".into()));
        }
        let mismatch = |problem: String| SpnegoError::KtnameMismatch { keytab: keytab.display().to_string(), problem };
        let Some(ktname) = self.ktname.as_deref() else {
            return Err(mismatch("it is not set".into()));
        };
        // MIT: "FILE:path" or "WRFILE:path", or a bare path; any other "TYPE:" is not a file.
        let path = if let Some(p) = ktname.strip_prefix("FILE:").or_else(|| ktname.strip_prefix("WRFILE:")) {
            p
        } else if ktname.contains(':') {
            return Err(mismatch(format!("it is `{ktname}`, not a FILE: keytab")));
        } else {
            ktname
        };
        let wanted = std::fs::canonicalize(keytab)
            .map_err(|source| SpnegoError::KeytabUnreadable { path: keytab.to_path_buf(), source })?;
        match std::fs::canonicalize(path) {
            Ok(actual) if actual == wanted => Ok(()),
            Ok(actual) => Err(mismatch(format!("it names {}", actual.display()))),
            Err(e) => Err(mismatch(format!("it names {path}, which cannot be opened: {e}"))),
        }
    }
}

/// One compiled rule.
#[derive(Debug)]
struct CompiledRule {
    regex: Regex,
    user: String,
}

/// Principal → short user name: regular expressions over the whole principal, tried in order;
/// the first that matches decides (`$1`, `${1}`, `${name}` expand capture groups).
#[derive(Debug)]
pub struct NameRules {
    rules: Vec<CompiledRule>,
}

/// The capture group references in a `Regex::expand` template, as `$name` or `${name}`.
fn template_refs(template: &str) -> Vec<String> {
    let mut refs = Vec::new();
    let mut rest = template;
    while let Some(i) = rest.find('$') {
        rest = &rest[i + 1..];
        if let Some(after) = rest.strip_prefix('$') {
            rest = after;
        } else if let Some(inner) = rest.strip_prefix('{') {
            if let Some(end) = inner.find('}') {
                refs.push(inner[..end].to_string());
                rest = &inner[end + 1..];
            }
        } else {
            let end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(rest.len());
            if end > 0 {
                refs.push(rest[..end].to_string());
            }
            rest = &rest[end..];
        }
    }
    refs
}

impl NameRules {
    /// Compiles the rules; each pattern must match the whole principal (it is anchored) and
    /// each template may only name groups its pattern has.
    pub fn new(rules: &[NameRule]) -> Result<Self, SpnegoError> {
        if rules.is_empty() {
            return Err(SpnegoError::NoRules);
        }
        let mut compiled = Vec::with_capacity(rules.len());
        for (index, rule) in rules.iter().enumerate() {
            let bad = |problem: String| SpnegoError::BadRule { index, problem };
            let regex = Regex::new(&format!("^(?:{})$", rule.pattern))
                .map_err(|e| bad(format!("invalid regular expression `{}`: {e}", rule.pattern)))?;
            for name in template_refs(&rule.user) {
                let known = match name.parse::<usize>() {
                    Ok(n) => n < regex.captures_len(),
                    Err(_) => regex.capture_names().flatten().any(|n| n == name),
                };
                if !known {
                    return Err(bad(format!(
                        "user `{}` refers to capture group `{name}`, which `{}` does not have \
                         (write `${{1}}x` rather than `$1x`)",
                        rule.user, rule.pattern
                    )));
                }
            }
            if rule.user.is_empty() {
                return Err(bad("user is empty".into()));
            }
            compiled.push(CompiledRule { regex, user: rule.user.clone() });
        }
        Ok(Self { rules: compiled })
    }

    /// The short name for `principal`: `Ok(None)` when no rule matches, `Err` when the first
    /// matching rule produces a name that is not a safe user name.
    pub fn map(&self, principal: &str) -> Result<Option<String>, String> {
        for rule in &self.rules {
            if let Some(caps) = rule.regex.captures(principal) {
                let mut user = String::new();
                caps.expand(&rule.user, &mut user);
                return if crate::identity::valid_user_name(&user) {
                    Ok(Some(user))
                } else {
                    Err(format!("Kerberos principal {principal} maps to `{user}`, which is not a valid user name"))
                };
            }
        }
        Ok(None)
    }
}

/// The token of the request's `Authorization: Negotiate <base64>` header: `Ok(None)` when there
/// is none (another scheme, or no header), `Err` (a reason) when it is malformed.
pub fn negotiate_token(parts: &Parts) -> Result<Option<Vec<u8>>, String> {
    let mut found: Option<&str> = None;
    for value in parts.headers.get_all(AUTHORIZATION) {
        let Ok(value) = value.to_str() else { continue };
        let value = value.trim();
        let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
        if !scheme.eq_ignore_ascii_case(CHALLENGE) {
            continue;
        }
        if found.is_some() {
            return Err("more than one Authorization: Negotiate header".into());
        }
        found = Some(rest.trim());
    }
    let Some(b64) = found else { return Ok(None) };
    if b64.is_empty() {
        return Err("empty Negotiate token".into());
    }
    if b64.len() > MAX_TOKEN_LEN / 3 * 4 + 4 {
        return Err("Negotiate token too large".into());
    }
    STANDARD.decode(b64).map(Some).map_err(|_| "malformed Negotiate token (not base64)".into())
}

/// The SPNEGO acceptor ([`AuthMethod::Spnego`]).
pub struct SpnegoAuthenticator {
    cred: Cred,
    rules: NameRules,
    cookie: Option<Arc<CookieSigner>>,
    keytab: PathBuf,
}

impl std::fmt::Debug for SpnegoAuthenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not the credential: its Debug calls into GSSAPI.
        f.debug_struct("SpnegoAuthenticator")
            .field("keytab", &self.keytab)
            .field("rules", &self.rules)
            .field("cookie", &self.cookie)
            .finish_non_exhaustive()
    }
}

impl SpnegoAuthenticator {
    /// Checks the keytab, the environment and the rules, and acquires the acceptor credential.
    /// Successful handshakes issue a cookie signed by `cookie`, when given.
    pub fn new(config: &SpnegoConfig, env: &KrbEnv, cookie: Option<Arc<CookieSigner>>) -> Result<Self, SpnegoError> {
        let keytab = config.keytab.clone().ok_or(SpnegoError::NoKeytab)?;
        std::fs::File::open(&keytab)
            .map_err(|source| SpnegoError::KeytabUnreadable { path: keytab.clone(), source })?;
        env.check(&keytab)?;
        let rules = NameRules::new(&config.rules)?;
        let name = match &config.principal {
            None => None,
            Some(p) => Some(
                Name::new(p.as_bytes(), Some(GSS_NT_KRB5_PRINCIPAL))
                    .map_err(|e| SpnegoError::BadPrincipal { principal: p.clone(), message: e.to_string() })?,
            ),
        };
        // MIT resolves the keytab now and keeps it in the credential (keys are still read from
        // the file per request, so a rotated keytab is picked up).
        let cred =
            Cred::acquire(name.as_ref(), None, CredUsage::Accept, None).map_err(|e| SpnegoError::Credentials {
                keytab: keytab.display().to_string(),
                for_principal: config.principal.as_ref().map(|p| format!(" for {p}")).unwrap_or_default(),
                message: e.to_string(),
            })?;
        tracing::info!(
            keytab = %keytab.display(),
            principal = config.principal.as_deref().unwrap_or("(any in the keytab)"),
            rules = config.rules.len(),
            cookie_ttl_secs = cookie.as_ref().map(|c| c.ttl().as_secs()),
            "SPNEGO authentication enabled"
        );
        Ok(Self { cred, rules, cookie, keytab })
    }

    /// One acceptor step over a client token.
    fn accept(&self, token: &[u8]) -> AuthOutcome {
        let mut ctx = ServerCtx::new(Some(self.cred.clone()));
        let out = match ctx.step(token, None) {
            Ok(out) => out,
            Err(e) => {
                // GSSAPI's messages name the failure (replay, skew, wrong key), never a key.
                tracing::info!(error = %e, "SPNEGO token refused");
                return AuthOutcome::Rejected(format!("Kerberos authentication failed: {e}"));
            }
        };
        let reply = out.map(|t| format!("{CHALLENGE} {}", STANDARD.encode(&*t)));
        if !ctx.is_complete() {
            return match reply {
                Some(challenge) => AuthOutcome::Continue(challenge),
                None => AuthOutcome::Rejected("Kerberos authentication did not complete".into()),
            };
        }
        // Only Kerberos proves an identity here: SPNEGO could negotiate another mechanism
        // (NTLM, if gss-ntlmssp happens to be installed), and anonymous tickets prove nothing.
        match ctx.mechanism() {
            Ok(m) if m == GSS_MECH_KRB5 => {}
            Ok(m) => return AuthOutcome::Rejected(format!("SPNEGO negotiated {m}, not Kerberos")),
            Err(e) => return AuthOutcome::Rejected(format!("Kerberos authentication failed: {e}")),
        }
        if ctx.flags().map(|f| f.contains(CtxFlags::GSS_C_ANON_FLAG)).unwrap_or(true) {
            return AuthOutcome::Rejected("anonymous Kerberos principals are not accepted".into());
        }
        let client = match ctx.source_name().and_then(|n| n.display_name()) {
            Ok(buf) => match String::from_utf8(buf.to_vec()) {
                Ok(s) => s,
                Err(_) => return AuthOutcome::Rejected("the Kerberos principal is not valid UTF-8".into()),
            },
            Err(e) => return AuthOutcome::Rejected(format!("Kerberos authentication failed: {e}")),
        };
        let user = match self.rules.map(&client) {
            Ok(Some(user)) => user,
            Ok(None) => {
                return AuthOutcome::Rejected(format!(
                    "Kerberos principal {client} is not mapped to a user by auth.spnego.rules"
                ))
            }
            Err(reason) => return AuthOutcome::Rejected(reason),
        };
        let principal = Principal { name: user, groups: Vec::new(), method: AuthMethod::Spnego };
        let mut response_headers: Vec<(HeaderName, HeaderValue)> = Vec::new();
        if let Some(reply) = reply {
            match HeaderValue::from_str(&reply) {
                Ok(v) => response_headers.push((WWW_AUTHENTICATE, v)),
                Err(_) => return AuthOutcome::Rejected("cannot encode the mutual authentication token".into()),
            }
        }
        if let Some(signer) = &self.cookie {
            match signer.set_cookie_header(&principal, SystemTime::now()) {
                Ok(v) => response_headers.push((SET_COOKIE, v)),
                // The handshake succeeded; without a cookie the client just redoes SPNEGO.
                Err(e) => tracing::warn!(error = %e, "cannot issue the SPNEGO cookie"),
            }
        }
        tracing::debug!(principal = %client, user = %principal.name, "SPNEGO authenticated");
        AuthOutcome::Authenticated { principal, response_headers }
    }
}

impl Authenticator for SpnegoAuthenticator {
    fn challenge(&self) -> Option<String> {
        Some(CHALLENGE.into())
    }

    fn authenticate(&self, parts: &Parts, _conn: Option<&ConnInfo>) -> AuthOutcome {
        match negotiate_token(parts) {
            Ok(None) => AuthOutcome::NotApplicable,
            Ok(Some(token)) => self.accept(&token),
            Err(reason) => AuthOutcome::Rejected(reason),
        }
    }
}

/// The `spnego` entry of `auth.methods`, issuing cookies with `cookies` (when
/// `auth.spnego.cookie_ttl` is not "0"). Reads the Kerberos variables of this process's
/// environment.
pub fn authenticator(
    config: &ValidatedConfig,
    cookies: Option<Arc<CookieSigner>>,
) -> Result<SpnegoAuthenticator, SpnegoError> {
    SpnegoAuthenticator::new(&config.config.auth.spnego, &KrbEnv::from_process(), cookies)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Request;

    fn rule(pattern: &str, user: &str) -> NameRule {
        NameRule { pattern: pattern.into(), user: user.into() }
    }

    fn parts_with(headers: &[(&str, &str)]) -> Parts {
        let mut b = Request::builder();
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn template_references() {
        assert_eq!(template_refs("$1"), vec!["1"]);
        assert_eq!(template_refs("${1}x-$name.$$y"), vec!["1", "name"]);
        assert_eq!(template_refs("$1x"), vec!["1x"]);
        assert!(template_refs("plain").is_empty());
        assert!(template_refs("$").is_empty());
    }

    #[test]
    fn first_matching_rule_wins_with_substitution() {
        let rules = NameRules::new(&[
            rule(r"admin/(\w+)@EX\.COM", "${1}-admin"),
            rule(r"([a-z]+)@EX\.COM", "$1"),
            rule(r"(?P<u>[a-z]+)@.*", "other-$u"),
        ])
        .unwrap();
        assert_eq!(rules.map("admin/carol@EX.COM").unwrap().as_deref(), Some("carol-admin"));
        assert_eq!(rules.map("alice@EX.COM").unwrap().as_deref(), Some("alice"));
        assert_eq!(rules.map("bob@ELSEWHERE").unwrap().as_deref(), Some("other-bob"));
        // The pattern covers the whole principal: a prefix or suffix match does not count.
        assert_eq!(rules.map("HTTP/host@EX.COM").unwrap(), None);
        let anchored = NameRules::new(&[rule(r"([a-z]+)@EX\.COM", "$1")]).unwrap();
        assert_eq!(anchored.map("alice@EX.COM.evil.org").unwrap(), None);
        assert_eq!(anchored.map("x/alice@EX.COM").unwrap(), None);
    }

    #[test]
    fn unsafe_mapped_names_are_refused() {
        let rules = NameRules::new(&[rule(r"(.*)@EX\.COM", "$1")]).unwrap();
        assert!(rules.map("-x@EX.COM").is_err());
        assert!(rules.map("a b@EX.COM").is_err());
        assert!(rules.map("svc/host@EX.COM").is_err());
        assert!(rules.map("@EX.COM").is_err());
        assert_eq!(rules.map("al.ice_1@EX.COM").unwrap().as_deref(), Some("al.ice_1"));
    }

    #[test]
    fn bad_rules_are_start_up_errors() {
        assert!(matches!(NameRules::new(&[]), Err(SpnegoError::NoRules)));
        let e = NameRules::new(&[rule("(unclosed", "$1")]).unwrap_err().to_string();
        assert!(e.contains("rules[0]") && e.contains("invalid regular expression"), "{e}");
        let e = NameRules::new(&[rule("ok", "x"), rule("(a)@R", "$2")]).unwrap_err().to_string();
        assert!(e.contains("rules[1]") && e.contains("`2`"), "{e}");
        let e = NameRules::new(&[rule("(a)@R", "$1x")]).unwrap_err().to_string();
        assert!(e.contains("${1}x"), "{e}");
        assert!(NameRules::new(&[rule("(a)@R", "")]).is_err());
    }

    #[test]
    fn negotiate_header_parsing() {
        assert_eq!(negotiate_token(&parts_with(&[])), Ok(None));
        assert_eq!(negotiate_token(&parts_with(&[("authorization", "Bearer abc")])), Ok(None));
        assert_eq!(negotiate_token(&parts_with(&[("authorization", "Basic YTpi")])), Ok(None));
        assert_eq!(negotiate_token(&parts_with(&[("authorization", "Negotiate YWJj")])), Ok(Some(b"abc".to_vec())));
        assert_eq!(negotiate_token(&parts_with(&[("authorization", "negotiate  YWJj ")])), Ok(Some(b"abc".to_vec())));
        assert!(negotiate_token(&parts_with(&[("authorization", "Negotiate")])).is_err());
        assert!(negotiate_token(&parts_with(&[("authorization", "Negotiate !!!")])).is_err());
        assert!(negotiate_token(&parts_with(&[
            ("authorization", "Negotiate YWJj"),
            ("authorization", "Negotiate YWJj")
        ]))
        .is_err());
        let huge = format!("Negotiate {}", "A".repeat(100_000));
        assert!(negotiate_token(&parts_with(&[("authorization", &huge)])).is_err());
    }

    #[test]
    fn environment_must_name_the_keytab() {
        let dir = tempfile::tempdir().unwrap();
        let kt = dir.path().join("http.keytab");
        let other = dir.path().join("other.keytab");
        std::fs::write(&kt, b"x").unwrap();
        std::fs::write(&other, b"x").unwrap();
        let env = |kt: Option<String>| KrbEnv { ktname: kt, ..KrbEnv::default() };
        assert!(env(Some(format!("FILE:{}", kt.display()))).check(&kt).is_ok());
        assert!(env(Some(kt.display().to_string())).check(&kt).is_ok());
        assert!(env(Some(format!("WRFILE:{}/./http.keytab", dir.path().display()))).check(&kt).is_ok());
        let e = env(None).check(&kt).unwrap_err().to_string();
        assert!(e.contains("KRB5_KTNAME=FILE:") && e.contains("not set"), "{e}");
        assert!(matches!(
            env(Some(format!("FILE:{}", other.display()))).check(&kt),
            Err(SpnegoError::KtnameMismatch { .. })
        ));
        assert!(matches!(env(Some("MEMORY:x".into())).check(&kt), Err(SpnegoError::KtnameMismatch { .. })));
        assert!(matches!(env(Some("FILE:/nonexistent/x".into())).check(&kt), Err(SpnegoError::KtnameMismatch { .. })));
        let ok = Some(format!("FILE:{}", kt.display()));
        let no_rcache = KrbEnv { ktname: ok.clone(), rcache_type: Some("none".into()), rcache_name: None };
        assert!(matches!(no_rcache.check(&kt), Err(SpnegoError::ReplayCacheDisabled(_))));
        let no_rcache = KrbEnv { ktname: ok, rcache_type: None, rcache_name: Some("none:".into()) };
        assert!(matches!(no_rcache.check(&kt), Err(SpnegoError::ReplayCacheDisabled(_))));
    }

    #[test]
    fn start_up_errors_are_clear() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.keytab");
        let config = SpnegoConfig {
            keytab: Some(missing.clone()),
            rules: vec![rule("(.*)@R", "$1")],
            ..SpnegoConfig::default()
        };
        let e = SpnegoAuthenticator::new(&config, &KrbEnv::default(), None).unwrap_err().to_string();
        assert!(e.contains("cannot read auth.spnego.keytab") && e.contains("missing.keytab"), "{e}");
        let config = SpnegoConfig { keytab: None, ..config };
        assert!(matches!(SpnegoAuthenticator::new(&config, &KrbEnv::default(), None), Err(SpnegoError::NoKeytab)));
    }
}
