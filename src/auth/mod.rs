//! Authentication: the `Authenticator` trait, the configured chain, and the layer that puts an
//! immutable `Principal` into every authenticated request. Nothing below this layer reads
//! credentials again, and no header a client sends can claim an identity.

pub mod cookie;
pub mod jwt;
pub mod ldap;
pub mod mtls;
pub mod spnego;

use crate::audit_slots::{AuthRecord, AuthSlot};
use crate::config::ValidatedConfig;
use crate::error::ApiError;
use crate::identity::{AuthMethod, ConnInfo, Principal};
use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// An outcome that needs a round trip to someone else (the LDAP directory) first.
pub struct Pending(Pin<Box<dyn Future<Output = AuthOutcome> + Send>>);

impl Pending {
    /// The outcome `future` will give.
    pub fn new(future: impl Future<Output = AuthOutcome> + Send + 'static) -> Self {
        Self(Box::pin(future))
    }
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pending")
    }
}

/// What one authenticator says about a request.
#[derive(Debug)]
pub enum AuthOutcome {
    /// The request carries no credentials for this scheme; try the next one.
    NotApplicable,
    /// Credentials for this scheme were presented and are valid.
    Authenticated {
        /// Who it is.
        principal: Principal,
        /// Headers to add to the response (SPNEGO's mutual-authentication token, a cookie).
        response_headers: Vec<(HeaderName, HeaderValue)>,
    },
    /// Credentials for this scheme were presented and are not valid (the reason holds no
    /// secret). The request is refused; later schemes are not tried.
    Rejected(String),
    /// The scheme needs another round trip: answer 401 with exactly this challenge.
    Continue(String),
    /// Decided once the future is done (it never gives `Pending` again).
    Pending(Pending),
    /// A password login as `user` failed: refused like `Rejected` (the same answer whether or
    /// not the user exists), and recorded in the audit trail under the name tried.
    LoginFailed {
        /// The user name presented (valid by [`crate::identity::valid_user_name`]).
        user: String,
        /// Why, without any secret.
        reason: String,
    },
    /// The scheme cannot decide now, and this is the answer: too many failed logins (429), the
    /// directory is down (503).
    Failed(ApiError),
}

impl AuthOutcome {
    /// Success without extra response headers.
    pub fn authenticated(principal: Principal) -> Self {
        Self::Authenticated { principal, response_headers: Vec::new() }
    }
}

/// One authentication scheme.
pub trait Authenticator: Send + Sync + std::fmt::Debug {
    /// The challenge for `WWW-Authenticate` when no scheme succeeds, if this scheme has one.
    fn challenge(&self) -> Option<String>;
    /// Looks at the request's headers and connection.
    fn authenticate(&self, parts: &Parts, conn: Option<&ConnInfo>) -> AuthOutcome;
}

/// `auth.dangerous_allow_anonymous`: every loopback request is `anonymous`; anything else is
/// refused (defence in depth: the configuration also refuses a non-loopback bind).
#[derive(Debug)]
pub struct DangerousAnonymous;

impl Authenticator for DangerousAnonymous {
    fn challenge(&self) -> Option<String> {
        None
    }

    fn authenticate(&self, parts: &Parts, conn: Option<&ConnInfo>) -> AuthOutcome {
        // A web page whose DNS name is rebound to 127.0.0.1 would reach us from loopback, but
        // its requests name that page's host: only loopback names are served anonymously.
        let host = parts
            .uri
            .authority()
            .map(|a| a.host().to_string())
            .or_else(|| parts.headers.get(axum::http::header::HOST).and_then(|h| h.to_str().ok()).map(host_of));
        if !host.as_deref().is_some_and(is_loopback_host) {
            return AuthOutcome::Rejected(format!(
                "anonymous access needs a loopback host name (localhost, 127.0.0.1 or [::1]), not {}",
                host.map_or_else(|| "none".to_string(), |h| format!("`{}`", h.escape_debug()))
            ));
        }
        match conn {
            Some(c) if c.peer.ip().is_loopback() => AuthOutcome::authenticated(Principal {
                name: "anonymous".into(),
                groups: Vec::new(),
                method: AuthMethod::DangerousAnonymous,
            }),
            Some(_) => AuthOutcome::Rejected("anonymous access is only allowed from loopback".into()),
            None => AuthOutcome::Rejected("no connection information".into()),
        }
    }
}

/// The host part of a `Host` header value (`localhost:8998`, `[::1]:8998` → `localhost`, `[::1]`).
fn host_of(value: &str) -> String {
    match value.rsplit_once(':') {
        Some((host, port)) if !port.is_empty() && port.chars().all(|c| c.is_ascii_digit()) && !host.is_empty() => {
            host.to_string()
        }
        _ => value.to_string(),
    }
}

fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Why the chain refused a request: the answer, and what the audit trail records.
#[derive(Debug)]
pub struct Refusal {
    /// The answer.
    pub error: ApiError,
    /// The record for the audit layer.
    pub record: AuthRecord,
}

impl From<ApiError> for Refusal {
    fn from(error: ApiError) -> Self {
        let record = AuthRecord::Refused(error.to_string());
        Self { error, record }
    }
}

/// The configured authenticators, tried in order.
#[derive(Debug, Clone, Default)]
pub struct AuthChain {
    authenticators: Arc<Vec<Box<dyn Authenticator>>>,
    /// The LDAP login, also used by the web UI's login form.
    ldap: Option<ldap::LdapAuthenticator>,
}

impl AuthChain {
    /// A chain of the given authenticators.
    pub fn new(authenticators: Vec<Box<dyn Authenticator>>) -> Self {
        Self { authenticators: Arc::new(authenticators), ldap: None }
    }

    /// The LDAP login of the chain, when `ldap` is in `auth.methods`.
    pub fn ldap(&self) -> Option<&ldap::LdapAuthenticator> {
        self.ldap.as_ref()
    }

    /// Whether any authenticator is configured.
    pub fn is_empty(&self) -> bool {
        self.authenticators.is_empty()
    }

    /// Runs the chain: the first success wins. Credentials that are presented and wrong end
    /// it at once (a bad token is never rescued by a weaker scheme); no credentials at all is
    /// a 401 carrying every configured challenge.
    pub async fn authenticate(&self, parts: &Parts) -> Result<(Principal, Vec<(HeaderName, HeaderValue)>), Refusal> {
        let conn = parts.extensions.get::<ConnInfo>();
        // A page's script (fetch) gets no Basic challenge: the browser would answer it with
        // its own password dialog instead of letting the script send the user to the login form.
        let script = parts
            .headers
            .get("sec-fetch-mode")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|mode| matches!(mode, "cors" | "same-origin" | "no-cors"));
        let challenges = || {
            let all = self.authenticators.iter().filter_map(|a| a.challenge());
            all.filter(|c| !(script && c.starts_with("Basic "))).collect::<Vec<_>>()
        };
        // Two sets of credentials: which one a proxy in front judged or logged is unknowable.
        if parts.headers.get_all(axum::http::header::AUTHORIZATION).iter().nth(1).is_some() {
            return Err(ApiError::bad_request("more than one Authorization header").into());
        }
        for authenticator in self.authenticators.iter() {
            let mut outcome = authenticator.authenticate(parts, conn);
            if let AuthOutcome::Pending(pending) = outcome {
                outcome = pending.0.await;
            }
            match outcome {
                AuthOutcome::Authenticated { principal, response_headers } => return Ok((principal, response_headers)),
                AuthOutcome::Rejected(reason) => {
                    return Err(ApiError::Unauthorized { msg: reason, challenges: challenges() }.into());
                }
                AuthOutcome::LoginFailed { user, reason } => {
                    let error = ApiError::Unauthorized { msg: reason.clone(), challenges: challenges() };
                    return Err(Refusal { error, record: AuthRecord::LoginFailed { user, reason } });
                }
                AuthOutcome::Continue(challenge) => {
                    return Err(ApiError::Unauthorized {
                        msg: "authentication continues".into(),
                        challenges: vec![challenge],
                    }
                    .into());
                }
                AuthOutcome::Failed(error) => return Err(error.into()),
                AuthOutcome::NotApplicable | AuthOutcome::Pending(_) => {}
            }
        }
        Err(ApiError::Unauthorized { msg: "authentication required".into(), challenges: challenges() }.into())
    }
}

/// Why the authenticators could not be built at start-up.
#[derive(Debug, thiserror::Error)]
#[error("authentication setup: {0}")]
pub struct AuthSetupError(pub String);

/// The signed cookie shared by the methods that issue one (SPNEGO, LDAP): one key per process,
/// one lifetime per method, and one cookie authenticator, placed before the first of them.
#[derive(Default)]
struct Cookies {
    key: Option<cookie::CookieSigner>,
}

impl Cookies {
    /// The signer for a method whose cookies live `ttl` (None: it issues none); the first one
    /// also puts the cookie authenticator into `list`.
    fn issuer(
        &mut self,
        ttl: Option<std::time::Duration>,
        list: &mut Vec<Box<dyn Authenticator>>,
    ) -> Result<Option<Arc<cookie::CookieSigner>>, AuthSetupError> {
        let Some(ttl) = ttl else { return Ok(None) };
        let signer = match &self.key {
            Some(key) => Arc::new(key.with_ttl(ttl)),
            None => {
                let key = cookie::CookieSigner::generate(ttl).map_err(|e| AuthSetupError(e.to_string()))?;
                let signer = Arc::new(key.with_ttl(ttl));
                self.key = Some(key);
                list.push(Box::new(cookie::CookieAuthenticator::new(signer.clone())));
                signer
            }
        };
        Ok(Some(signer))
    }
}

/// Builds the configured chain, in `auth.methods` order; the dangerous anonymous mode, when on,
/// comes last so that presented credentials are still checked.
pub fn build_chain(config: &ValidatedConfig) -> Result<AuthChain, AuthSetupError> {
    let mut list: Vec<Box<dyn Authenticator>> = Vec::new();
    let mut cookies = Cookies::default();
    let mut password_login = None;
    for method in &config.config.auth.methods {
        match method.as_str() {
            "jwt" => list.push(Box::new(jwt::JwtAuthenticator::from_config(config)?)),
            "client_cert" => {
                list.push(Box::new(mtls::ClientCertAuthenticator::from_config(&config.config.auth.client_cert)?));
            }
            // The signed cookie (when auth.spnego.cookie_ttl is not "0"), then the SPNEGO acceptor.
            "spnego" => {
                let signer = cookies.issuer(config.durations.spnego_cookie_ttl, &mut list)?;
                list.push(Box::new(spnego::authenticator(config, signer)?));
            }
            // The signed cookie (when auth.ldap.cookie_ttl is not "0"), then HTTP Basic.
            "ldap" => {
                let signer = cookies.issuer(config.durations.ldap_cookie_ttl, &mut list)?;
                let login = ldap::LdapAuthenticator::from_config(config, signer)?;
                password_login = Some(login.clone());
                list.push(Box::new(login));
            }
            other => return Err(AuthSetupError(format!("authentication method `{other}` is not available"))),
        }
    }
    if config.config.auth.dangerous_allow_anonymous {
        list.push(Box::new(DangerousAnonymous));
    }
    Ok(AuthChain { ldap: password_login, ..AuthChain::new(list) })
}

/// The middleware: authenticates once and inserts the `Principal`.
pub async fn authenticate(State(chain): State<AuthChain>, request: Request, next: Next) -> Response {
    let (mut parts, body) = request.into_parts();
    // The record goes into the audit layer's slot in the request as well as into the
    // response: a timeout, a panic or a client gone leaves no response of ours to carry it.
    match chain.authenticate(&parts).await {
        Ok((principal, headers)) => {
            let record = AuthRecord::Principal(principal.clone());
            AuthSlot::fill(&parts.extensions, &record);
            parts.extensions.insert(principal);
            let mut response = next.run(Request::from_parts(parts, body)).await;
            for (name, value) in headers {
                response.headers_mut().append(name, value);
            }
            response.extensions_mut().insert(record);
            response
        }
        Err(Refusal { error, record }) => {
            AuthSlot::fill(&parts.extensions, &record);
            let mut response = error.into_response();
            response.extensions_mut().insert(record);
            response
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        // Missing means the router was wired without the auth layer: a server bug, not a 401.
        parts
            .extensions
            .get::<Self>()
            .cloned()
            .ok_or_else(|| ApiError::Internal("route is missing the authentication layer".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Request as HttpRequest;

    /// The chain's answer; these authenticators never wait.
    fn auth(chain: &AuthChain, parts: &Parts) -> Result<(Principal, Vec<(HeaderName, HeaderValue)>), ApiError> {
        use futures_util::FutureExt;
        chain.authenticate(parts).now_or_never().expect("no authenticator here waits").map_err(|r| r.error)
    }

    fn parts_from(peer: &str) -> Parts {
        let (mut parts, _) = HttpRequest::new(()).into_parts();
        parts.extensions.insert(ConnInfo::new(peer.parse().unwrap(), None));
        parts.headers.insert(axum::http::header::HOST, "127.0.0.1:8998".parse().unwrap());
        parts
    }

    #[test]
    fn anonymous_needs_a_loopback_host_name_against_dns_rebinding() {
        let chain = AuthChain::new(vec![Box::new(DangerousAnonymous)]);
        for host in ["localhost:8998", "LOCALHOST", "127.0.0.1", "[::1]:8998", "127.1.2.3:1"] {
            let mut parts = parts_from("127.0.0.1:5000");
            parts.headers.insert(axum::http::header::HOST, host.parse().unwrap());
            assert!(auth(&chain, &parts).is_ok(), "{host}");
        }
        for host in ["evil.example:8998", "127.0.0.1.evil.example", "localhost.evil.example"] {
            let mut parts = parts_from("127.0.0.1:5000");
            parts.headers.insert(axum::http::header::HOST, host.parse().unwrap());
            assert!(matches!(auth(&chain, &parts), Err(ApiError::Unauthorized { .. })), "{host}");
        }
        let mut parts = parts_from("127.0.0.1:5000");
        parts.headers.remove(axum::http::header::HOST);
        assert!(auth(&chain, &parts).is_err(), "no host at all");
        // HTTP/2: the authority in the URI.
        let (mut parts, _) = HttpRequest::get("https://localhost:8998/sessions").body(()).unwrap().into_parts();
        parts.extensions.insert(ConnInfo::new("127.0.0.1:5000".parse().unwrap(), None));
        assert!(auth(&chain, &parts).is_ok());
    }

    #[test]
    fn anonymous_allows_loopback_only() {
        let chain = AuthChain::new(vec![Box::new(DangerousAnonymous)]);
        let (p, _) = auth(&chain, &parts_from("127.0.0.1:5000")).unwrap();
        assert_eq!(p.name, "anonymous");
        assert!(matches!(auth(&chain, &parts_from("10.1.2.3:5000")), Err(ApiError::Unauthorized { .. })));
    }

    #[test]
    fn empty_chain_refuses_everyone() {
        let chain = AuthChain::default();
        assert!(matches!(auth(&chain, &parts_from("127.0.0.1:1")), Err(ApiError::Unauthorized { .. })));
    }

    #[test]
    fn identity_headers_are_not_trusted() {
        let chain = AuthChain::new(vec![Box::new(DangerousAnonymous)]);
        let mut parts = parts_from("127.0.0.1:5000");
        parts.headers.insert("x-remote-user", "root".parse().unwrap());
        parts.headers.insert("remote-user", "root".parse().unwrap());
        assert_eq!(auth(&chain, &parts).unwrap().0.name, "anonymous");
    }
}
