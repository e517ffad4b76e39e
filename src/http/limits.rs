//! The request-head limits (`server.max_header_bytes`, `server.max_uri_bytes`), enforced here,
//! inside the audit layer, rather than by hyper or h2 outside it: a refusal made here is a
//! normal response that the audit layer records with its request id, for HTTP/1 and h2 alike.
//! The listener sets hyper's and h2's own ceilings above these limits ([`hyper_ceilings`]), so
//! they answer only what is far over them; those refusals are audited by the listener
//! (`crate::server`).
//!
//! Header fields are counted as HTTP/2 counts a header list (RFC 9113 §6.5.2: name + value +
//! 32 bytes each), so one limit means the same on both protocols.

use crate::audit_slots::Annotation;
use crate::error::ApiError;
use axum::extract::{Request, State};
use axum::http::Uri;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// Per-field overhead in an HTTP/2 header list (RFC 9113 §6.5.2).
const FIELD_OVERHEAD: usize = 32;

/// The configured limits.
#[derive(Debug, Clone, Copy)]
pub struct HeadLimits {
    /// Largest header list (name + value + 32 per field).
    pub max_header_bytes: usize,
    /// Longest request target.
    pub max_uri_bytes: usize,
}

/// The ceilings the listener gives hyper: `(HTTP/1 read buffer, HTTP/2 header list)`. Both
/// leave room above the limits so that a head somewhat over them still reaches
/// [`check_head`] and gets its request record; the HTTP/1 buffer never drops below hyper's
/// default (about 400 KiB), which only bounds what one connection may make the gateway buffer.
pub fn hyper_ceilings(limits: HeadLimits) -> (usize, u32) {
    const HYPER_DEFAULT_MAX_BUF: usize = 8192 + 4096 * 100;
    let head = limits.max_header_bytes.saturating_add(limits.max_uri_bytes);
    let h1 = HYPER_DEFAULT_MAX_BUF.max(head.saturating_add(16 * 1024));
    // h2 keeps this much of a header list per stream before it answers 431 itself, so it is
    // only a little above the limit: that is memory an anonymous client can make us hold.
    let h2 = u32::try_from(head.saturating_add(4 * 1024)).unwrap_or(u32::MAX);
    (h1, h2)
}

/// Refuses a request whose target or header list is over the limits: 414 or 431, with a
/// reason for the audit record and an action that does not repeat the oversized target.
pub async fn check_head(State(limits): State<HeadLimits>, request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let target = target_len(request.uri());
    if target > limits.max_uri_bytes {
        return refused(
            ApiError::UriTooLong(format!(
                "the request target is {target} bytes; server.max_uri_bytes allows {}",
                limits.max_uri_bytes
            )),
            &method,
        );
    }
    let header_bytes: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + FIELD_OVERHEAD)
        .fold(0, usize::saturating_add);
    if header_bytes > limits.max_header_bytes {
        return refused(
            ApiError::HeadersTooLarge(format!(
                "the request's header fields are {header_bytes} bytes; server.max_header_bytes allows {}",
                limits.max_header_bytes
            )),
            &method,
        );
    }
    next.run(request).await
}

/// Length of the request target as the client sent it (origin or absolute form).
fn target_len(uri: &Uri) -> usize {
    let path = uri.path_and_query().map_or(0, |pq| pq.as_str().len());
    let authority = uri.authority().map_or(0, |a| a.as_str().len());
    let scheme = uri.scheme_str().map_or(0, |s| s.len() + 3); // "://"
    path + authority + scheme
}

fn refused(error: ApiError, method: &axum::http::Method) -> Response {
    let mut response = error.into_response();
    // The audit action would otherwise be the raw path: for a 414, the oversized target.
    if let Some(annotation) = response.extensions_mut().get_mut::<Annotation>() {
        annotation.action = Some(format!("{method} (request head over the limits)"));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::StatusCode;
    use axum::routing::get;
    use axum::Router;
    use tower::ServiceExt;

    fn app() -> Router {
        Router::new().route("/x", get(|| async { "ok" })).layer(axum::middleware::from_fn_with_state(
            HeadLimits { max_header_bytes: 4096, max_uri_bytes: 1024 },
            check_head,
        ))
    }

    async fn status(uri: &str, header: usize) -> (StatusCode, Option<Annotation>) {
        let mut request = axum::http::Request::get(uri);
        if header > 0 {
            request = request.header("x-big", "a".repeat(header));
        }
        let response = app().oneshot(request.body(Body::empty()).unwrap()).await.unwrap();
        (response.status(), response.extensions().get::<Annotation>().cloned())
    }

    #[tokio::test]
    async fn heads_within_the_limits_pass() {
        assert_eq!(status("/x", 0).await.0, StatusCode::OK);
        // A long query and a large header, each just within its limit.
        assert_eq!(status(&format!("/x?q={}", "a".repeat(1000)), 0).await.0, StatusCode::OK);
        assert_eq!(status("/x", 4096 - 5 - 32).await.0, StatusCode::OK);
    }

    #[tokio::test]
    async fn a_long_target_is_414_and_large_headers_431_without_echoing_them() {
        let (code, annotation) = status(&format!("/x?q={}", "a".repeat(1100)), 0).await;
        assert_eq!(code, StatusCode::URI_TOO_LONG);
        let annotation = annotation.unwrap();
        assert_eq!(annotation.action.as_deref(), Some("GET (request head over the limits)"));
        assert!(annotation.reason.as_deref().unwrap().contains("server.max_uri_bytes allows 1024"), "{annotation:?}");
        assert!(!annotation.reason.unwrap().contains("aaaa"));
        let (code, annotation) = status("/x", 4096).await;
        assert_eq!(code, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        assert!(annotation.unwrap().reason.unwrap().contains("server.max_header_bytes allows 4096"));
    }

    #[test]
    fn hyper_ceilings_leave_room_above_the_limits() {
        let (h1, h2) = hyper_ceilings(HeadLimits { max_header_bytes: 65536, max_uri_bytes: 8192 });
        assert_eq!(h1, 8192 + 4096 * 100);
        assert_eq!(h2, 65536 + 8192 + 4096);
        let (h1, _) = hyper_ceilings(HeadLimits { max_header_bytes: 1 << 20, max_uri_bytes: 8192 });
        assert_eq!(h1, (1 << 20) + 8192 + 16384);
    }
}
