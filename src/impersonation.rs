//! Impersonation: resolves who a request acts as. `doAs` (query, any endpoint) wins over a
//! create request's `proxyUser`; either is allowed only when the target is the caller or a
//! policy rule lets the caller act as the target from its address (Hadoop's proxyuser model).
//! Identity headers a client sends are never consulted.

use crate::acl::AccessManager;
use crate::audit::{AuditEvent, AuditLog};
use crate::audit_slots::{Annotation, Decision};
use crate::error::ApiError;
use crate::identity::{ConnInfo, Principal};
use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::net::IpAddr;
use std::sync::Arc;

/// The identity a request acts with.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Who authenticated.
    pub real: Principal,
    /// Who the request acts as: the `doAs` target, or `real`. ACL checks use this one.
    pub acting: Principal,
    /// The client's address.
    pub peer: Option<IpAddr>,
}

impl Caller {
    /// Resolves the effective user of a new session from `proxyUser` (the request acts as
    /// `acting` already, so `doAs` has been applied and wins).
    pub fn effective_user_for(
        &self,
        acl: &AccessManager,
        audit: &AuditLog,
        proxy_user: Option<&str>,
    ) -> Result<String, ApiError> {
        if self.acting.name != self.real.name {
            // doAs given: it decides; a different proxyUser in the body is a conflict.
            if proxy_user.is_some_and(|p| p != self.acting.name) {
                return Err(ApiError::bad_request("doAs and field `proxyUser` name different users"));
            }
            return Ok(self.acting.name.clone());
        }
        match proxy_user {
            None => Ok(self.real.name.clone()),
            Some(target) if !crate::identity::valid_user_name(target) => Err(ApiError::bad_request(format!(
                "field `proxyUser` is not a user name ({})",
                crate::identity::USER_NAME_RULE
            ))),
            Some(target) => {
                let decision = acl.check_impersonation(&self.real, target, self.peer);
                audit.record(impersonation_event(&self.real, target, self.peer, &decision.reason, decision.allowed));
                if decision.allowed {
                    tracing::info!(caller = %self.real.name, target, reason = %decision.reason, "impersonation granted");
                    Ok(target.to_string())
                } else {
                    tracing::warn!(caller = %self.real.name, target, reason = %decision.reason, "impersonation denied");
                    Err(ApiError::Forbidden(decision.reason))
                }
            }
        }
    }
}

/// Reads `doAs` from a query string, percent-decoded as a servlet container (Livy's) decodes it.
pub fn do_as(query: Option<&str>) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes())
        .find_map(|(k, v)| (k == "doAs").then(|| v.into_owned()))
        .filter(|v| !v.is_empty())
}

fn impersonation_event(
    real: &Principal,
    target: &str,
    peer: Option<IpAddr>,
    reason: &str,
    allowed: bool,
) -> AuditEvent {
    let (action, decision) =
        if allowed { ("impersonation_granted", Decision::Allow) } else { ("impersonation_denied", Decision::Deny) };
    let mut event = AuditEvent::security(action, decision).principal(real).effective_user(target).reason(reason);
    if let Some(ip) = peer {
        event = event.remote_addr(std::net::SocketAddr::new(ip, 0));
    }
    event
}

/// What the impersonation middleware needs.
#[derive(Debug, Clone)]
pub struct ImpersonationState {
    /// The policy.
    pub acl: Arc<AccessManager>,
    /// Where grants and denials are recorded.
    pub audit: Arc<AuditLog>,
}

/// The middleware: checks `doAs` and inserts the `Caller`.
pub async fn impersonate(State(st): State<ImpersonationState>, request: Request, next: Next) -> Response {
    let acl = &st.acl;
    let (mut parts, body) = request.into_parts();
    let Some(real) = parts.extensions.get::<Principal>().cloned() else {
        return ApiError::Internal("impersonation runs before authentication".into()).into_response();
    };
    let peer = parts.extensions.get::<ConnInfo>().map(|c| c.peer.ip());
    let acting = match do_as(parts.uri.query()) {
        None => real.clone(),
        Some(target) if target == real.name => real.clone(),
        // Never handed on, nor echoed: a name that cannot be a user's is refused as such.
        Some(target) if !crate::identity::valid_user_name(&target) => {
            return ApiError::bad_request(format!("`doAs` is not a user name ({})", crate::identity::USER_NAME_RULE))
                .into_response();
        }
        Some(target) => {
            let decision = acl.check_impersonation(&real, &target, peer);
            st.audit.record(impersonation_event(&real, &target, peer, &decision.reason, decision.allowed));
            if !decision.allowed {
                tracing::warn!(caller = %real.name, %target, reason = %decision.reason, "impersonation denied");
                return ApiError::Forbidden(decision.reason).into_response();
            }
            tracing::info!(caller = %real.name, %target, "impersonation granted (doAs)");
            // The target's groups come from the policy only: the caller's token speaks for the
            // caller, not for the target.
            Principal { name: target, groups: Vec::new(), method: real.method }
        }
    };
    let effective = acting.name.clone();
    let resource = parts.uri.path().to_string();
    parts.extensions.insert(Caller { real, acting, peer });
    let mut response = next.run(Request::from_parts(parts, body)).await;
    // The audit record names who the request acted as and the concrete resource.
    let annotation = response.extensions_mut().get_mut::<Annotation>();
    match annotation {
        Some(a) => {
            a.effective_user.get_or_insert(effective);
            a.resource.get_or_insert(resource);
        }
        None => {
            response.extensions_mut().insert(Annotation {
                effective_user: Some(effective),
                resource: Some(resource),
                ..Default::default()
            });
        }
    }
    response
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Self>()
            .cloned()
            .ok_or_else(|| ApiError::Internal("route is missing the impersonation layer".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn do_as_is_read_from_the_query() {
        assert_eq!(do_as(Some("from=0&doAs=alice")), Some("alice".into()));
        assert_eq!(do_as(Some("doAs=")), None);
        assert_eq!(do_as(Some("doas=alice")), None);
        assert_eq!(do_as(Some("doAs=bob%40EXAMPLE.COM&x=1")), Some("bob@EXAMPLE.COM".into()));
        assert_eq!(do_as(Some("doAs=b%00")), Some("b\0".into()));
        assert_eq!(do_as(None), None);
    }
}
