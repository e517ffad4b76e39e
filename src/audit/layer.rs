//! The middleware that records one `request` event per HTTP request, after its response, from
//! typed facts only: method, matched path, request id, peer address, status, latency, what the
//! auth layer recorded ([`AuthRecord`], also in the request's [`AuthSlot`]) and what the handler
//! added ([`Annotation`]). It never reads other headers, the query string or a body, so none of
//! them can reach the trail.
//!
//! Place it inside the request-id layer (so `x-request-id` is set) and outside authentication
//! (so 401 and 403 are recorded too).

use super::{AuditEvent, AuditLog};
use crate::audit_slots::{Annotation, AuthRecord, AuthSlot, Decision, MatchedRoute, RouteSlot};
use crate::identity::ConnInfo;
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use std::sync::Arc;
use tokio::time::Instant;

/// Records one `request` event per request. Layer it with
/// `axum::middleware::from_fn_with_state(log, audit_requests)`.
///
/// The action is `"METHOD /path"` with the route's pattern (`/sessions/{id}`) when the
/// [`MatchedPath`] is known — in the request when this runs inside the router, or in the
/// response when [`expose_matched_path`] copied it there — and the raw path otherwise; never
/// the query string.
pub async fn audit_requests(State(log): State<Arc<AuditLog>>, mut request: Request, next: Next) -> Response {
    // tokio's clock, so tests can pause time (clippy.toml bans std's Instant for that reason).
    let started = Instant::now();
    let method = request.method().clone();
    let matched = request.extensions().get::<MatchedPath>().map(|m| m.as_str().to_owned());
    let slot = RouteSlot::attach(&mut request);
    let auth = AuthSlot::attach(&mut request);
    let raw_path = request.uri().path().to_owned();
    let mut event =
        AuditEvent::request(format!("{method} {}", matched.as_deref().unwrap_or(&raw_path)), Decision::Error);
    if let Some(id) = request.headers().get("x-request-id").and_then(|v| v.to_str().ok()) {
        event = event.request_id(id);
    }
    let peer = request.extensions().get::<ConnInfo>().map(|conn| conn.peer);
    if let Some(peer) = peer {
        event = event.remote_addr(peer);
    }
    // If the response never comes (the client went away and the future was dropped, or a
    // handler panicked through this layer), the guard still records the request.
    let mut pending = Pending { log: &log, event: Some(event), started, auth: auth.clone() };

    let mut response = next.run(request).await;

    let Some(mut event) = pending.event.take() else { return response };
    let status = response.status().as_u16();
    event = event.status(status).decision(Decision::for_status(status)).latency_ms(elapsed_ms(started));
    if matched.is_none() {
        if let Some(route) = slot.route(None) {
            event = event.action(format!("{method} {route}"));
        }
    }
    // The response's record, else the slot's: a 408 or a panic's 500 is made outside the auth
    // layer and carries none, though authentication did happen.
    let record = response.extensions().get::<AuthRecord>().or_else(|| auth.get());
    // A failed password login names the user it tried: recorded in full, one by one.
    let anonymous = !matches!(record, Some(AuthRecord::Principal(_) | AuthRecord::LoginFailed { .. }));
    if let Some(record) = record {
        event = authenticated(event, record);
    }
    let annotation = response.extensions_mut().remove::<Annotation>();
    let named_by_handler = annotation.as_ref().is_some_and(|a| a.action.is_some());
    if let Some(annotation) = annotation {
        event = annotate(event, annotation);
    }
    match unauthenticated_refusal(status).filter(|_| anonymous) {
        // Anyone can send these, as fast as they like: counted per address, route and status
        // rather than written one by one, so a flood cannot push the trail's older records
        // out through retirement (audit.max_files).
        Some(class) => {
            // The kind must be one the client cannot vary: a known method and the route, or
            // `unmatched` with the raw path kept as the resource.
            let label = crate::metrics::method_label(&method);
            let event = match matched.clone().or_else(|| slot.route(None)) {
                _ if named_by_handler => event,
                Some(route) => event.action(format!("{label} {route}")),
                None => event.action(format!("{label} (unmatched)")).resource(raw_path.clone()),
            };
            log.record_coalesced(event, peer.map(|p| p.ip()), class);
        }
        // A request that changes something is answered once its record (and every record
        // before it: the launch, the impersonation decision) is on disk; reads are not held.
        None if changes_state(&method) => {
            let durable = log.record_durable(event);
            if !matches!(tokio::time::timeout(DURABLE_WAIT, durable).await, Ok(Ok(true))) {
                // Answered all the same: the loss is counted and recorded in the chain, and
                // a failing disk must not stop every client.
                tracing::warn!("a request's audit record was not confirmed on disk before its answer");
            }
        }
        None => log.record(event),
    }
    response
}

/// How long an answer waits for its audit record to be on disk (an fsync of the group).
const DURABLE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Whether a request can change state (anything but GET, HEAD, OPTIONS).
fn changes_state(method: &axum::http::Method) -> bool {
    use axum::http::Method;
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// The class of a refusal an unauthenticated client can provoke at will, by status; `None` for
/// what is recorded one by one (everything a principal does, and server errors).
fn unauthenticated_refusal(status: u16) -> Option<&'static str> {
    Some(match status {
        400 => "unauthenticated_400",
        401 => "unauthenticated_401",
        403 => "unauthenticated_403",
        404 => "unauthenticated_404",
        405 => "unauthenticated_405",
        408 => "unauthenticated_408",
        413 => "unauthenticated_413",
        414 => "unauthenticated_414",
        429 => "unauthenticated_429",
        431 => "unauthenticated_431",
        // A login the directory could not judge: a flood during an outage is counted.
        503 => "unauthenticated_503",
        _ => return None,
    })
}

/// Writes the route's [`MatchedPath`] into the request's [`RouteSlot`] so that layers outside
/// the router ([`audit_requests`], metrics) can name the route rather than the raw path. Layer
/// it on the router with `Router::layer(axum::middleware::from_fn(expose_matched_path))`.
pub async fn expose_matched_path(request: Request, next: Next) -> Response {
    if let Some(matched) = request.extensions().get::<MatchedPath>() {
        RouteSlot::fill(request.extensions(), &MatchedRoute(matched.as_str().to_owned()));
    }
    next.run(request).await
}

fn authenticated(event: AuditEvent, record: &AuthRecord) -> AuditEvent {
    match record {
        AuthRecord::Principal(principal) => event.principal(principal),
        AuthRecord::Refused(reason) => event.decision(Decision::Deny).reason(reason.as_str()),
        AuthRecord::LoginFailed { user, reason } => {
            event.principal_name(user.as_str()).decision(Decision::Deny).reason(reason.as_str())
        }
    }
}

fn annotate(mut event: AuditEvent, annotation: Annotation) -> AuditEvent {
    let Annotation { action, resource, effective_user, decision, reason } = annotation;
    if let Some(action) = action {
        event = event.action(action);
    }
    if let Some(resource) = resource {
        event = event.resource(resource);
    }
    if let Some(user) = effective_user {
        event = event.effective_user(user);
    }
    if let Some(decision) = decision {
        match decision.parse::<Decision>() {
            Ok(decision) => event = event.decision(decision),
            // A handler bug; the decision derived from the status stays.
            Err(e) => tracing::warn!(error = %e, "ignoring an invalid audit annotation"),
        }
    }
    if let Some(reason) = reason {
        event = event.reason(reason);
    }
    event
}

fn elapsed_ms(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Records the request as cancelled if it is dropped before the response is known.
struct Pending<'a> {
    log: &'a AuditLog,
    event: Option<AuditEvent>,
    started: Instant,
    auth: AuthSlot,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if let Some(mut event) = self.event.take() {
            if let Some(record) = self.auth.get() {
                event = authenticated(event, record);
            }
            let event = event
                .latency_ms(elapsed_ms(self.started))
                .reason("no response: the request was cancelled (client gone) or its handler panicked");
            self.log.record(event);
        }
    }
}
