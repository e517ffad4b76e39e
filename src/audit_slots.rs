//! What the layers and handlers of one request tell the audit layer: the [`Decision`] vocabulary,
//! a handler's [`Annotation`], the auth layer's [`AuthRecord`], and the [`RequestSlot`]s that
//! carry facts outward even when no response comes back. Authentication, access control and
//! error mapping write these without importing the audit writer; this module imports none of
//! them.

use crate::identity::Principal;
use axum::extract::Request;
use serde::Serialize;
use std::sync::{Arc, OnceLock};

/// What the gateway decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Decision {
    /// Allowed and served.
    Allow,
    /// Refused: not authenticated, or not authorised.
    Deny,
    /// Failed for a reason other than a refusal.
    Error,
    /// Nothing was decided; the event is a fact worth keeping.
    Info,
}

impl Decision {
    /// The name written to the trail.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
            Self::Error => "error",
            Self::Info => "info",
        }
    }

    /// The default for a response status: below 400 allowed, 401 and 403 denied, any other
    /// error status an error.
    pub fn for_status(status: u16) -> Self {
        match status {
            0..=399 => Self::Allow,
            401 | 403 => Self::Deny,
            _ => Self::Error,
        }
    }
}

/// What a handler tells the audit middleware about its request: insert it into the response
/// extensions. Every field is optional; `None` keeps what the middleware derived itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Annotation {
    /// Replaces `"METHOD /path"` as the action.
    pub action: Option<String>,
    /// What was acted on, e.g. `session:3`.
    pub resource: Option<String>,
    /// The user the request acted as.
    pub effective_user: Option<String>,
    /// `allow`, `deny`, `error` or `info`; replaces the decision derived from the status.
    pub decision: Option<String>,
    /// Why (e.g. the access rule that decided). Never a credential.
    pub reason: Option<String>,
}

/// Recorded in the response extensions so the audit layer (outside authentication) can tell
/// who was authenticated, or why not.
#[derive(Debug, Clone)]
pub enum AuthRecord {
    /// Authenticated.
    Principal(Principal),
    /// Refused, with the reason.
    Refused(String),
    /// A password login as `user` failed: recorded in full under that name (never coalesced
    /// like other unauthenticated refusals; the login throttle bounds how many there are).
    LoginFailed {
        /// The user name tried.
        user: String,
        /// Why, without any secret.
        reason: String,
    },
}

/// A value that a layer inside the router writes for layers outside it (audit, metrics): a
/// slot in the request rather than a response extension, so the value is known even when no
/// response comes back from the router (the request timed out, a handler panicked, or the
/// client went away). The first value written wins.
#[derive(Debug)]
pub struct RequestSlot<T>(Arc<OnceLock<T>>);

impl<T> Clone for RequestSlot<T> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<T> Default for RequestSlot<T> {
    fn default() -> Self {
        Self(Arc::new(OnceLock::new()))
    }
}

impl<T: Clone + Send + Sync + 'static> RequestSlot<T> {
    /// The request's slot, added if no outer layer added one yet.
    pub fn attach(request: &mut Request) -> Self {
        if let Some(slot) = request.extensions().get::<Self>() {
            return slot.clone();
        }
        let slot = Self::default();
        request.extensions_mut().insert(slot.clone());
        slot
    }

    /// Writes `value` into the request's slot, when a layer outside attached one.
    pub fn fill(extensions: &axum::http::Extensions, value: &T) {
        if let Some(slot) = extensions.get::<Self>() {
            let _ = slot.0.set(value.clone());
        }
    }

    /// What was written, if anything.
    pub fn get(&self) -> Option<&T> {
        self.0.get()
    }
}

/// The pattern of the route a request matched (`/sessions/{id}`).
#[derive(Debug, Clone)]
pub struct MatchedRoute(pub String);

/// Where the router writes the route a request matched
/// ([`expose_matched_path`](crate::audit::expose_matched_path)).
pub type RouteSlot = RequestSlot<MatchedRoute>;

impl RouteSlot {
    /// The route pattern, if the request matched a route: from the request when the caller
    /// runs inside the router, else from the slot.
    pub fn route(&self, request_matched: Option<&str>) -> Option<String> {
        request_matched.map(str::to_owned).or_else(|| self.get().map(|r| r.0.clone()))
    }
}

/// Where the auth layer writes what it decided ([`AuthRecord`]): the principal, or the refusal.
pub type AuthSlot = RequestSlot<AuthRecord>;
