//! The Spark UI behind the gateway: each application's UI key, the Spark properties that lock
//! its driver's UI to the gateway, and which port really is that UI.
//!
//! A driver's UI would otherwise answer anyone who reaches its port: every page, the REST API,
//! the environment. So every launch gets a UI key of its own (32 bytes, derived from the
//! gateway's key and a nonce of the launch, so that a restarted gateway has it again; see
//! `rpc::SecretKey`), and:
//! - Spark's `JWSFilter` guards every UI handler (static files and `/api` too): a request
//!   without `Authorization: Bearer <JWS signed with that key>` is answered 403;
//! - with a local master the UI binds to loopback (`SPARK_LOCAL_IP`);
//! - its links point under the gateway's proxy path (`spark.ui.proxyBase`), and its kill
//!   handlers are off (`spark.ui.killEnabled`): the view right does not include killing jobs;
//! - the gateway's proxy ([`proxy`]) signs a short-lived token for each request it forwards
//!   for someone who may view the session or batch.
//!
//! The key travels as every Spark property does, in the launch's owner-only properties file
//! (never argv); Spark's default `spark.redaction.regex` (it matches `secret`) hides it on the
//! Environment page and in event logs. User code in the session can read it from its own conf,
//! which gives it nothing it lacks: it already runs inside that driver.
//!
//! Which port is the UI is never the driver's word alone: in local and client mode its output
//! and its `app_info` are the user's. A port counts once it is a listening socket of the
//! application's own processes ([`ports`]); until then the proxy does not connect to it.

pub mod ports;
pub mod proxy;

use crate::config::SparkConfig;
use crate::engine::app_id::AppIdFormat;
use crate::engine::launch::{spark_defaults_value, SparkEnv};
use base64::Engine as _;
use rand::RngCore;
use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

/// Spark's filter that admits only requests carrying a JWS signed with its `secretKey`.
pub const JWS_FILTER: &str = "org.apache.spark.ui.JWSFilter";

/// How long a token the proxy signs stays valid. Each forwarded request gets a fresh one; the
/// gateway and a local driver share one clock, so a minute is ample.
const TOKEN_LIFETIME_SECS: u64 = 60;

/// Ports heard of per application; later ones are ignored (a driver printing thousands of fake
/// UI lines must not grow the gateway's memory).
const MAX_CANDIDATES: usize = 8;

/// Why a token for a Spark UI could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UiError {
    /// Signing failed (the JWT library refused the key or the claims).
    #[error("signing a token for the Spark UI failed: {0}")]
    Signing(String),
}

/// An application's UI key: the HMAC-SHA256 key its driver's `JWSFilter` checks tokens with.
pub struct UiKey([u8; 32]);

impl std::fmt::Debug for UiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UiKey([redacted])")
    }
}

impl UiKey {
    /// 32 fresh bytes from the operating system's CSPRNG.
    fn generate() -> Self {
        let mut key = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut key);
        Self(key)
    }

    /// The key as `JWSFilter`'s `secretKey` parameter wants it: base64url.
    fn spark_param(&self) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(self.0)
    }

    /// A fresh `Authorization` value for one request to the UI: `Bearer <JWS>`, HS256, valid
    /// for [`TOKEN_LIFETIME_SECS`].
    pub fn bearer(&self) -> Result<String, UiError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_err(|e| UiError::Signing(e.to_string()))?
            .as_secs();
        let claims = serde_json::json!({"iat": now, "exp": now + TOKEN_LIFETIME_SECS});
        let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        let token = jsonwebtoken::encode(&header, &claims, &jsonwebtoken::EncodingKey::from_secret(&self.0))
            .map_err(|e| UiError::Signing(e.to_string()))?;
        Ok(format!("Bearer {token}"))
    }
}

/// What checking a candidate port found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    Unchecked,
    /// Not a listening socket of the application's processes: never connected to.
    Refused,
    /// The application's own: the UI.
    Verified,
}

#[derive(Debug, Default)]
struct UiState {
    /// Set at launch: the UI runs on this host (local or client mode) and is enabled.
    proxied: bool,
    /// Ports the UI was said to be on, in the order heard, with what checking found.
    candidates: Vec<(u16, Check)>,
}

/// What the gateway knows about one application's Spark UI.
#[derive(Debug)]
pub struct AppUi {
    key: UiKey,
    /// The proxy path, without a trailing slash: `/sessions/3/sparkui`.
    base: String,
    state: Mutex<UiState>,
}

impl AppUi {
    /// A new application's UI, served under `base` (`/sessions/3/sparkui`), with a fresh key.
    pub fn new(base: impl Into<String>) -> Self {
        Self { key: UiKey::generate(), base: base.into(), state: Mutex::new(UiState::default()) }
    }

    /// An application's UI served under `base` with `key` (derived, so that it is the same
    /// after a restart of the gateway; a fresh one when there is none).
    pub fn with_key(base: impl Into<String>, key: Option<[u8; 32]>) -> Self {
        let key = key.map_or_else(UiKey::generate, UiKey);
        Self { key, base: base.into(), state: Mutex::new(UiState::default()) }
    }

    fn lock(&self) -> MutexGuard<'_, UiState> {
        // Every update is a small self-contained assignment: a poisoned lock's data is fine.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The proxy path, without a trailing slash.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The key the proxy signs with.
    pub fn key(&self) -> &UiKey {
        &self.key
    }

    /// Whether the proxy serves this UI (decided at launch, see [`launch_settings`]).
    pub fn proxied(&self) -> bool {
        self.lock().proxied
    }

    /// The proxied UI's path (`/sessions/3/sparkui/`) once a UI is known that may be the
    /// application's; None if the proxy does not serve it or nothing (believable) is known.
    pub fn path(&self) -> Option<String> {
        let state = self.lock();
        (state.proxied && state.candidates.iter().any(|(_, check)| *check != Check::Refused))
            .then(|| format!("{}/", self.base))
    }

    /// Hears that the UI may listen on `port` (checked before first use, see [`Self::port`]).
    /// Whether it is a new candidate.
    pub fn offer_port(&self, port: u16) -> bool {
        let mut state = self.lock();
        let new =
            port != 0 && state.candidates.len() < MAX_CANDIDATES && !state.candidates.iter().any(|(p, _)| *p == port);
        if new {
            state.candidates.push((port, Check::Unchecked));
        }
        new
    }

    /// Hears a UI address (the driver's `app_info`): only an `http` or `https` URL with an
    /// explicit port counts, and only its port (the host a driver names is never contacted).
    /// Whether it gave a new candidate.
    pub fn offer_url(&self, url: &str) -> bool {
        url_port(url).is_some_and(|port| self.offer_port(port))
    }

    /// Hears a line of the application's output: Spark's "started service 'SparkUI' on port N"
    /// and "SparkUI … started at http://…" name the UI's port. Whether it gave a new candidate.
    pub fn offer_line(&self, line: &str) -> bool {
        port_in_line(line).is_some_and(|port| self.offer_port(port))
    }

    /// Decides at launch whether the proxy serves this UI.
    fn set_proxied(&self, proxied: bool) {
        self.lock().proxied = proxied;
    }

    /// The UI's port, for the application whose processes are process group `pgid` (and its
    /// descendants): the first candidate, in the order heard, that is a listening socket of
    /// theirs. Checked once per candidate and remembered; a refused one is never tried again.
    pub async fn port(&self, pgid: i32) -> Option<u16> {
        loop {
            let next = {
                let state = self.lock();
                if !state.proxied {
                    return None;
                }
                if let Some((port, _)) = state.candidates.iter().find(|(_, check)| *check == Check::Verified) {
                    return Some(*port);
                }
                state.candidates.iter().find(|(_, check)| *check == Check::Unchecked)?.0
            };
            // Reading /proc blocks: keep it off the async workers.
            let owned = tokio::task::spawn_blocking(move || ports::tree_listens_on(pgid, next)).await.unwrap_or(false);
            if !owned {
                tracing::warn!(ui = %self.base, port = next, "a reported Spark UI port is not a listening socket of the application's processes: ignored");
            }
            let mut state = self.lock();
            if let Some(entry) =
                state.candidates.iter_mut().find(|(port, check)| *port == next && *check == Check::Unchecked)
            {
                entry.1 = if owned { Check::Verified } else { Check::Refused };
            }
        }
    }
}

/// The explicit port of an `http` or `https` URL.
fn url_port(url: &str) -> Option<u16> {
    let uri: http::Uri = url.parse().ok()?;
    matches!(uri.scheme_str(), Some("http" | "https")).then_some(())?;
    uri.authority()?.port_u16()
}

/// The UI port in one of the lines Spark writes when its UI starts.
fn port_in_line(line: &str) -> Option<u16> {
    if let Some(rest) = line.split("started service 'SparkUI' on port ").nth(1) {
        return rest.trim().trim_end_matches('.').parse().ok();
    }
    if line.contains("SparkUI") {
        // Older Sparks: "Bound SparkUI to 0.0.0.0, and started at http://host:4040".
        let url = line.split_whitespace().find(|w| w.starts_with("http://") || w.starts_with("https://"))?;
        return url_port(url.trim_end_matches(['.', ',']));
    }
    None
}

/// The value of the `spark.app.id` row of a Spark UI Environment page, if in `format`.
pub fn app_id_in_environment_page(html: &str, format: AppIdFormat) -> Option<String> {
    let rest = html.split("<td>spark.app.id</td>").nth(1)?;
    let value = rest.trim_start().strip_prefix("<td>")?.split('<').next()?.trim();
    format.accepts(value).then(|| value.to_string())
}

/// What a launch adds for its UI.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct UiLaunch {
    /// Spark properties the gateway sets last, so that they win over a request's `conf`.
    pub conf: BTreeMap<String, String>,
    /// Variables for spark-submit's environment.
    pub env: BTreeMap<String, String>,
}

/// Whether a Spark boolean property says `false`.
fn is_false(value: &str) -> bool {
    value.trim().eq_ignore_ascii_case("false")
}

/// The UI settings of one launch, and whether the proxy serves its UI (recorded in `ui`).
///
/// - The operator's `spark.ui.enabled = false` (in `spark.conf` or spark-defaults.conf) is
///   kept even when a request asks for the UI: where the operator does not want a UI, there
///   is none.
/// - `JWSFilter` joins whatever filters the operator configured (a request's are replaced);
///   the UI's kill handlers are off; its links point under the proxy path where it is proxied.
/// - `SPARK_LOCAL_IP=127.0.0.1` only with a local master: it also sets the address Spark
///   advertises to executors, which on a real cluster (client mode) must be reachable from
///   the workers. There the UI listens where Spark puts it and the filter alone guards it.
/// - The proxy serves the UI in local and client mode only. In cluster mode the driver, and
///   with it the UI, runs on a cluster host whose address only the driver itself reports:
///   the gateway does not connect there (no `sparkUiUrl`); the UI still answers only signed
///   requests, and YARN and Kubernetes have their own ways to reach a driver.
pub fn launch_settings(
    config: &SparkConfig,
    env: Option<&SparkEnv>,
    request_conf: &BTreeMap<String, String>,
    ui: &AppUi,
) -> UiLaunch {
    let operator =
        |key: &str| config.conf.get(key).cloned().or_else(|| env.and_then(|env| spark_defaults_value(env, key)));
    let operator_off = operator("spark.ui.enabled").is_some_and(|v| is_false(&v));
    let request_off = request_conf.get("spark.ui.enabled").is_some_and(|v| is_false(v));
    let mut conf = BTreeMap::new();
    if operator_off {
        conf.insert("spark.ui.enabled".to_string(), "false".to_string());
    }
    let mut filters: Vec<String> = operator("spark.ui.filters")
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|f| !f.is_empty() && *f != JWS_FILTER)
        .map(str::to_string)
        .collect();
    filters.push(JWS_FILTER.to_string());
    conf.insert("spark.ui.filters".to_string(), filters.join(","));
    conf.insert(format!("spark.{JWS_FILTER}.param.secretKey"), ui.key.spark_param());
    conf.insert("spark.ui.killEnabled".to_string(), "false".to_string());
    let proxied = !operator_off && !request_off && config.deploy_mode != "cluster";
    if proxied {
        // Only where the gateway serves the UI: elsewhere (a cluster's own UI paths) links
        // under the gateway's path would lead nowhere.
        conf.insert("spark.ui.proxyBase".to_string(), ui.base.clone());
        // The driver runs on this host, next to every other session's and batch's: Spark's
        // default (4040, then 16 more tries) fails the 18th application here. A free port
        // from the system instead; the gateway learns it from the driver's output.
        if operator("spark.ui.port").is_none() && !request_conf.contains_key("spark.ui.port") {
            conf.insert("spark.ui.port".to_string(), "0".to_string());
        }
    }
    let master = config.master.as_str();
    let local_master = master == "local" || master.starts_with("local[") || master.starts_with("local-cluster[");
    let mut vars = BTreeMap::new();
    if local_master {
        vars.insert("SPARK_LOCAL_IP".to_string(), "127.0.0.1".to_string());
    }
    ui.set_proxied(proxied);
    UiLaunch { conf, env: vars }
}

#[cfg(test)]
mod tests;
