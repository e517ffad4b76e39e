//! THE middleware stack, outer → inner, one *why* per layer. Reading this file tells the whole
//! path of a request.

use crate::api::{self, AppState};
use crate::auth::{self, AuthChain};
use crate::config::ValidatedConfig;
use crate::csrf::{self, CsrfMode};
use crate::error::ApiError;
use crate::http::limits::{self, HeadLimits};
use crate::http::middleware::gate::gate;
use crate::metrics::{self, Metrics};
use crate::{audit, impersonation, ui};
use axum::error_handling::HandleErrorLayer;
use axum::extract::DefaultBodyLimit;
use axum::http::header::{AUTHORIZATION, COOKIE, PROXY_AUTHORIZATION, SET_COOKIE};
use axum::http::{header, HeaderName, HeaderValue, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{middleware, BoxError, Router};
use std::any::Any;
use std::sync::Arc;
use tower::util::MapRequestLayer;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::map_response_body::MapResponseBodyLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::sensitive_headers::{SetSensitiveRequestHeadersLayer, SetSensitiveResponseHeadersLayer};
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::trace::TraceLayer;

/// Builds the whole service: routes, authentication and every cross-cutting layer.
pub fn build(state: AppState, auth: AuthChain) -> Router {
    let config = state.config.clone();
    let acl = state.acl.clone();
    let audit_log = state.audit.clone();
    let metrics = state.metrics.clone();
    let csrf_mode = CsrfMode::parse(&config.config.csrf.mode);
    let login = ui::LoginState { ldap: auth.ldap().cloned() };
    // route_layer: the last one added runs first. These apply to known routes only, so an
    // unknown path stays a 404 instead of becoming a 401.
    let protected = api::router(config.config.server.max_upload_bytes)
        .merge(ui::routes())
        // 4. May this caller (as impersonated) use the gateway at all? Finer checks need the
        //    session and happen in the handlers.
        .route_layer(middleware::from_fn_with_state(acl.clone(), gate))
        // 3. doAs: act as another user only where a proxy-user rule allows it.
        .route_layer(middleware::from_fn_with_state(
            impersonation::ImpersonationState { acl, audit: audit_log.clone() },
            impersonation::impersonate,
        ))
        // 2. Browser-borne requests must prove they are not cross-site forgeries.
        .route_layer(middleware::from_fn_with_state(csrf_mode, csrf::protect))
        // 1. Authenticate once: the Principal every later step relies on.
        .route_layer(middleware::from_fn_with_state(auth, auth::authenticate))
        // A browser not logged in is sent from a page of the UI to its login form.
        .layer(middleware::from_fn(ui::login_redirect))
        // Lets the audit layer (outside the router) record `/sessions/{id}`, not raw paths.
        .layer(middleware::from_fn(audit::expose_matched_path))
        .with_state(state);

    // The login form and the UI's assets need no login.
    let public = ui::public_routes(login).layer(middleware::from_fn(audit::expose_matched_path));
    with_middleware(Router::new().merge(protected).merge(public), &config, Some(audit_log), Some(metrics))
}

/// Wraps any router in the cross-cutting layers (tests use it with their own routes).
pub fn with_middleware(
    router: Router,
    config: &ValidatedConfig,
    audit_log: Option<Arc<audit::AuditLog>>,
    metrics: Option<Arc<Metrics>>,
) -> Router {
    let routes = router.fallback(not_found).method_not_allowed_fallback(method_not_allowed);
    // Router::layer wraps each route separately; wrapping one fallback service instead makes
    // the limits below global (one concurrency budget for the whole gateway, not per route).
    Router::new().fallback_service(routes).layer(
        ServiceBuilder::new()
            // Mark credentials sensitive first, so no later layer (trace) can print them.
            .layer(SetSensitiveRequestHeadersLayer::new([AUTHORIZATION, PROXY_AUTHORIZATION, COOKIE]))
            // A client's x-request-id is not trusted (it could reuse another request's id in the
            // audit trail): it moves aside to x-client-request-id, for logs only...
            .layer(MapRequestLayer::new(set_aside_client_request_id::<axum::body::Body>))
            // ...so every request gets the gateway's own id before its span exists, and logs,
            // errors and the audit trail quote that one.
            .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
            // One span per request: method, path, request ids — never other headers or bodies.
            .layer(TraceLayer::new_for_http().make_span_with(|req: &Request<_>| {
                let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("-");
                let (id, client_id) = (header("x-request-id"), header("x-client-request-id"));
                tracing::info_span!(
                    "request",
                    method = %req.method(),
                    path = %req.uri().path(),
                    request_id = %id,
                    client_request_id = %client_id
                )
            }))
            // The client sees the id too (quote it in a bug report).
            .layer(PropagateRequestIdLayer::x_request_id())
            // Cookies we set are secrets as well.
            .layer(SetSensitiveResponseHeadersLayer::new([SET_COOKIE]))
            // Security headers on every response, errors included.
            .layer(SetResponseHeaderLayer::if_not_present(
                header::STRICT_TRANSPORT_SECURITY,
                HeaderValue::from_static("max-age=31536000; includeSubDomains"),
            ))
            .layer(SetResponseHeaderLayer::overriding(
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ))
            .layer(SetResponseHeaderLayer::overriding(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")))
            .layer(SetResponseHeaderLayer::if_not_present(
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"),
            ))
            .layer(SetResponseHeaderLayer::overriding(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer")))
            .layer(SetResponseHeaderLayer::if_not_present(header::CACHE_CONTROL, HeaderValue::from_static("no-store")))
            // One audit record per request, outside authentication so 401s and 403s are
            // recorded too, and outside the panic handler so a 500 is recorded as well.
            .option_layer(audit_log.map(|log| middleware::from_fn_with_state(log, audit::audit_requests)))
            // Request counts and latencies for /metrics, with the final status (errors too).
            .option_layer(metrics.map(|m| middleware::from_fn_with_state(m, metrics::record_requests)))
            // (The audit and metrics middleware want axum's body type from the layers below.)
            .layer(MapResponseBodyLayer::new(axum::body::Body::new))
            // Request heads over server.max_uri_bytes / max_header_bytes are refused here (414,
            // 431), inside the audit layer, so that they are recorded like any other request.
            .layer(middleware::from_fn_with_state(head_limits(config), limits::check_head))
            // A panic in a handler is a JSON 500 for that request, never a dropped connection.
            .layer(CatchPanicLayer::custom(panic_response))
            // Turns the errors of the next three layers into JSON responses.
            .layer(HandleErrorLayer::new(overload_response))
            // A request that takes too long ends with 408 instead of holding resources.
            .timeout(config.durations.request_timeout)
            // Beyond the concurrency limit, shed load with 503 rather than queueing forever.
            .load_shed()
            .concurrency_limit(config.config.server.max_concurrent_requests)
            // Bodies over the limit are refused (413) before they are buffered.
            .layer(DefaultBodyLimit::max(config.config.server.max_body_bytes)),
    )
}

/// The request-head limits of the configuration.
pub fn head_limits(config: &ValidatedConfig) -> HeadLimits {
    HeadLimits {
        max_header_bytes: config.config.server.max_header_bytes,
        max_uri_bytes: config.config.server.max_uri_bytes,
    }
}

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Where a client's own `x-request-id` is kept for logs.
const CLIENT_REQUEST_ID: HeaderName = HeaderName::from_static("x-client-request-id");

/// The longest client request id kept; longer ones are clipped.
const MAX_CLIENT_REQUEST_ID: usize = 128;

/// Moves a client's `x-request-id` to `x-client-request-id`, clipped to
/// [`MAX_CLIENT_REQUEST_ID`] characters and dropped unless it is all visible ASCII, so the id
/// set next is the gateway's own. A client's `x-client-request-id` is dropped: only this
/// function writes it.
fn set_aside_client_request_id<B>(mut request: Request<B>) -> Request<B> {
    let headers = request.headers_mut();
    headers.remove(&CLIENT_REQUEST_ID);
    let client_id = headers.remove(&X_REQUEST_ID).and_then(|value| {
        let bytes = value.as_bytes();
        if bytes.is_empty() || !bytes.iter().all(u8::is_ascii_graphic) {
            return None;
        }
        HeaderValue::from_bytes(&bytes[..bytes.len().min(MAX_CLIENT_REQUEST_ID)]).ok()
    });
    if let Some(id) = client_id {
        headers.insert(CLIENT_REQUEST_ID, id);
    }
    request
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such endpoint".into())
}

async fn method_not_allowed() -> Response {
    (StatusCode::METHOD_NOT_ALLOWED, axum::Json(serde_json::json!({"msg": "method not allowed on this endpoint"})))
        .into_response()
}

fn panic_response(_panic: Box<dyn Any + Send + 'static>) -> Response {
    ApiError::Internal("a request handler panicked".into()).into_response()
}

async fn overload_response(err: BoxError) -> ApiError {
    if err.is::<tower::timeout::error::Elapsed>() {
        ApiError::Timeout
    } else if err.is::<tower::load_shed::error::Overloaded>() {
        ApiError::Unavailable("the gateway is overloaded; try again shortly".into())
    } else {
        ApiError::Internal(format!("middleware error: {err}"))
    }
}

#[cfg(test)]
mod tests;
