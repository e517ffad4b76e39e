//! Forwards a GET or HEAD for an application's Spark UI to its driver on this host, signed
//! with the application's UI key, and relays the answer within bounds.
//!
//! What crosses, and why:
//! - the path only if it is made of the characters Spark UI paths use (no `%`, no `;`, no
//!   `.`/`..` segments), so that what the gateway checked is what Jetty routes; a `kill`
//!   segment is refused (the view right does not include killing jobs; Spark's kill handlers
//!   are also switched off at launch);
//! - from the client, only content-negotiation and cache-validation headers: never its
//!   `Authorization` or `Cookie` (the gateway's credentials are not the UI's business);
//!   `Authorization` is the gateway's own fresh token;
//! - from the UI, only content and cache headers, and `Location` moved under the proxy path;
//! - at most [`MAX_BODY_BYTES`], within the request's time budget, streamed.
//!
//! Every answer carries its own Content-Security-Policy ([`CSP`]). Spark UI pages need inline
//! scripts, so `default-src 'none'` would break them; instead the page is sandboxed without
//! `allow-same-origin`: its scripts run in an opaque origin, so they cannot read the gateway's
//! pages or make credentialed requests to its API on a viewer's behalf, even if the session's
//! owner smuggled markup into the UI (job descriptions, SQL text and names are theirs). The
//! trade-off: the UI's own script requests (the executors and stage pages read
//! `/api/v1` with XMLHttpRequest) are cross-origin from the sandbox and carry no cookies, so
//! those tables stay empty for browsers authenticated by the gateway's cookie; the pages
//! themselves, their links and `/api/v1` fetched directly work.

use super::{app_id_in_environment_page, AppUi, UiError};
use crate::engine::app_id::AppIdFormat;
use axum::body::Body;
use bytes::Bytes;
use futures_util::StreamExt;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::time::Duration;

/// The Content-Security-Policy of every proxied answer (see the module documentation).
pub const CSP: &str = "sandbox allow-scripts allow-forms; default-src 'none'; script-src 'self' 'unsafe-inline'; \
                       style-src 'self' 'unsafe-inline'; img-src 'self' data:; font-src 'self'; connect-src 'self'; \
                       form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

/// The largest answer relayed (a stage page of a huge job is a few MB; event logs more).
pub const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

/// A driver on this host that does not accept a connection this fast is not answering.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The time for the UI to send its response headers (a busy driver's UI can be slow).
const HEADERS_TIMEOUT: Duration = Duration::from_secs(30);

/// Client headers forwarded to the UI: content negotiation and cache validation only.
const REQUEST_HEADERS: [HeaderName; 5] = [
    header::ACCEPT,
    header::ACCEPT_ENCODING,
    header::ACCEPT_LANGUAGE,
    header::IF_MODIFIED_SINCE,
    header::IF_NONE_MATCH,
];

/// UI headers relayed to the client (`Location` separately, rewritten).
const RESPONSE_HEADERS: [HeaderName; 8] = [
    header::CONTENT_TYPE,
    header::CONTENT_LENGTH,
    header::CONTENT_ENCODING,
    header::CONTENT_DISPOSITION,
    header::CACHE_CONTROL,
    header::ETAG,
    header::LAST_MODIFIED,
    header::VARY,
];

/// Why a request for the Spark UI was not forwarded, or its answer not relayed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyError {
    /// The path is not one the Spark UI serves (see the module documentation).
    #[error("the Spark UI path is not acceptable: {0}")]
    BadPath(&'static str),
    /// A path of Spark's kill handlers.
    #[error(
        "the Spark UI is read-only through the gateway: cancel a statement with \
         POST /sessions/{{id}}/statements/{{statementId}}/cancel, or delete the session or batch"
    )]
    ReadOnly,
    /// The UI did not answer (in time).
    #[error("the Spark UI did not answer: {0}")]
    Unreachable(&'static str),
    /// The UI refused the gateway's signed request (it was not started with this key, or the
    /// application set its own UI access control).
    #[error("the Spark UI refused the gateway's signed request (HTTP {0})")]
    Refused(u16),
    /// The answer declares a size over [`MAX_BODY_BYTES`].
    #[error("the Spark UI's answer is larger than the gateway relays ({MAX_BODY_BYTES} bytes)")]
    TooLarge,
    /// No token could be made.
    #[error(transparent)]
    Signing(#[from] UiError),
}

/// One request to forward.
#[derive(Debug)]
pub struct Forward<'a> {
    /// GET or HEAD (the router routes nothing else here).
    pub method: &'a Method,
    /// The raw path below the proxy base, without its leading `/` (`jobs/job/`).
    pub rest: &'a str,
    /// The raw query, if any.
    pub query: Option<&'a str>,
    /// The client's headers (only [`REQUEST_HEADERS`] are forwarded).
    pub headers: &'a HeaderMap,
    /// Time for the whole exchange, the body included.
    pub budget: Duration,
}

/// A client for one exchange with a UI on loopback. No connection pool: a loopback connect
/// costs microseconds, and a pooled connection would belong to whichever runtime opened it.
fn client() -> Client<HttpConnector, Empty<Bytes>> {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new()).pool_max_idle_per_host(0).build(connector)
}

/// The path to ask the UI for: `/` + `rest`, if `rest` is made only of the characters Spark UI
/// paths use and has no `.` or `..` segment; a `kill` segment is [`ProxyError::ReadOnly`].
pub fn upstream_path(rest: &str) -> Result<String, ProxyError> {
    let allowed = |b: u8| b.is_ascii_alphanumeric() || b"-._~/!$&'()*+,=:@".contains(&b);
    if !rest.bytes().all(allowed) {
        return Err(ProxyError::BadPath("it may hold only letters, digits and -._~/!$&'()*+,=:@ (no %, no ;)"));
    }
    for segment in rest.split('/') {
        if segment == "." || segment == ".." {
            return Err(ProxyError::BadPath("it must not have . or .. segments"));
        }
        if segment.eq_ignore_ascii_case("kill") {
            return Err(ProxyError::ReadOnly);
        }
    }
    Ok(format!("/{rest}"))
}

/// A `Location` from the UI, as the client must see it: the UI's own absolute URLs and paths
/// moved under `base`; relative references kept (they resolve under the proxy path as they
/// did under the UI's root); anything pointing elsewhere dropped (None).
fn rewrite_location(value: &HeaderValue, port: u16, base: &str) -> Option<HeaderValue> {
    let text = value.to_str().ok()?;
    // Browsers read `\` as `/` and drop tabs, line breaks and surrounding spaces in URLs, so
    // `\\evil.example/x` or `\t//evil.example` would lead off-site: never relayed.
    if text.chars().any(|c| c == '\\' || c.is_whitespace() || c.is_control()) {
        return None;
    }
    let head = text.split(['/', '?', '#']).next().unwrap_or_default();
    let path = if text.starts_with("//") || head.contains(':') {
        // An absolute URL (or a scheme-relative one): only the UI's own address is followed.
        let uri: Uri = text.parse().ok()?;
        let authority = uri.authority()?;
        let ours = authority.port_u16() == Some(port) && matches!(authority.host(), "127.0.0.1" | "localhost");
        if !ours || uri.scheme_str() != Some("http") {
            return None;
        }
        uri.path_and_query().map_or("/", |pq| pq.as_str()).to_string()
    } else if text.starts_with('/') {
        text.to_string()
    } else {
        return HeaderValue::from_str(text).ok();
    };
    let under_base = path.strip_prefix(base).is_some_and(|rest| rest.is_empty() || rest.starts_with(['/', '?']));
    HeaderValue::from_str(&if under_base { path } else { format!("{base}{path}") }).ok()
}

/// Forwards `request` to the UI of `ui` on `127.0.0.1:port` (a port [`AppUi::port`] vouched
/// for) and relays its answer.
pub async fn forward(ui: &AppUi, port: u16, request: Forward<'_>) -> Result<Response<Body>, ProxyError> {
    let path = upstream_path(request.rest)?;
    let target = match request.query {
        Some(query) => format!("http://127.0.0.1:{port}{path}?{query}"),
        None => format!("http://127.0.0.1:{port}{path}"),
    };
    let uri: Uri = target.parse().map_err(|_| ProxyError::BadPath("it is not a valid URI path and query"))?;
    let mut upstream = Request::builder().method(request.method.clone()).uri(uri);
    for name in &REQUEST_HEADERS {
        for value in request.headers.get_all(name) {
            upstream = upstream.header(name, value.clone());
        }
    }
    let mut authorization =
        HeaderValue::from_str(&ui.key().bearer()?).map_err(|e| ProxyError::Signing(UiError::Signing(e.to_string())))?;
    authorization.set_sensitive(true);
    let upstream = upstream
        .header(header::AUTHORIZATION, authorization)
        .body(Empty::new())
        .map_err(|_| ProxyError::BadPath("it is not a valid URI path and query"))?;
    let deadline = tokio::time::Instant::now() + request.budget;
    let answer = tokio::time::timeout(HEADERS_TIMEOUT.min(request.budget), client().request(upstream))
        .await
        .map_err(|_| ProxyError::Unreachable("it sent no answer in time"))?
        .map_err(|e| {
            tracing::warn!(ui = %ui.base(), port, error = %e, "the Spark UI could not be reached");
            ProxyError::Unreachable("the connection to it failed")
        })?;
    let (parts, body) = answer.into_parts();
    if matches!(parts.status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
        return Err(ProxyError::Refused(parts.status.as_u16()));
    }
    let declared = parts.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return Err(ProxyError::TooLarge);
    }
    let mut response = Response::new(bounded_body(body, deadline));
    *response.status_mut() = parts.status;
    let headers = response.headers_mut();
    for name in &RESPONSE_HEADERS {
        for value in parts.headers.get_all(name) {
            headers.append(name, value.clone());
        }
    }
    if let Some(location) = parts.headers.get(header::LOCATION).and_then(|v| rewrite_location(v, port, ui.base())) {
        headers.insert(header::LOCATION, location);
    }
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    Ok(response)
}

/// The UI's body, streamed, ending in an error (which aborts the response) past
/// [`MAX_BODY_BYTES`] or `deadline`.
fn bounded_body(body: hyper::body::Incoming, deadline: tokio::time::Instant) -> Body {
    let data = Limited::new(body, MAX_BODY_BYTES).into_data_stream();
    let stream = futures_util::stream::unfold(Some(data), move |state| async move {
        let mut data = state?;
        match tokio::time::timeout_at(deadline, data.next()).await {
            Ok(Some(Ok(bytes))) => Some((Ok(bytes), Some(data))),
            Ok(Some(Err(e))) => Some((Err(e), None)),
            Ok(None) => None,
            Err(_) => Some((Err(axum::BoxError::from("the Spark UI did not finish its answer in time")), None)),
        }
    });
    Body::from_stream(stream)
}

/// Asks the UI for one page: its text if the answer was 200 within a few seconds.
async fn get_page(ui: &AppUi, port: u16, path: &str) -> Option<String> {
    let mut authorization = HeaderValue::from_str(&ui.key().bearer().ok()?).ok()?;
    authorization.set_sensitive(true);
    let request = Request::get(format!("http://127.0.0.1:{port}{path}"))
        .header(header::ACCEPT, "text/html")
        .header(header::AUTHORIZATION, authorization)
        .body(Empty::new())
        .ok()?;
    let limit = Duration::from_secs(3);
    let answer = tokio::time::timeout(limit, client().request(request)).await.ok()?.ok()?;
    if answer.status() != StatusCode::OK {
        return None;
    }
    let body =
        tokio::time::timeout(limit, Limited::new(answer.into_body(), 4 * 1024 * 1024).collect()).await.ok()?.ok()?;
    Some(String::from_utf8_lossy(&body.to_bytes()).into_owned())
}

/// The application id off the Environment page of the UI of the application whose processes
/// are group `pgid` (local mode prints none), if in `format`. It reads the page, not the REST
/// API: the API's first call costs the driver JVM about 1.5 s of CPU (web-service start-up)
/// taken from the user's job, the page about a tenth of that. A few tries while the UI comes up.
pub async fn fetch_app_id(ui: &AppUi, pgid: i32, format: AppIdFormat) -> Option<String> {
    for _ in 0..20 {
        if let Some(port) = ui.port(pgid).await {
            let page = get_page(ui, port, "/environment/").await;
            if let Some(id) = page.and_then(|page| app_id_in_environment_page(&page, format)) {
                return Some(id);
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_paths_reach_the_ui() {
        assert_eq!(upstream_path("").unwrap(), "/");
        assert_eq!(upstream_path("jobs/job/").unwrap(), "/jobs/job/");
        assert_eq!(
            upstream_path("api/v1/applications/local-1/stages/0/0").unwrap(),
            "/api/v1/applications/local-1/stages/0/0"
        );
        assert_eq!(upstream_path("static/vis-timeline-graph2d.min.js").unwrap(), "/static/vis-timeline-graph2d.min.js");
        for bad in
            ["../version", "static/../../x", "./jobs", "jobs/%2e%2e/x", "jobs;x=1/", "a\\b", "a b", "jobs/\u{e9}"]
        {
            assert!(matches!(upstream_path(bad), Err(ProxyError::BadPath(_))), "{bad}");
        }
        for kill in ["jobs/job/kill/", "stages/stage/kill", "jobs/job/KILL/", "kill"] {
            assert!(matches!(upstream_path(kill), Err(ProxyError::ReadOnly)), "{kill}");
        }
        assert!(upstream_path("jobs/killer/").is_ok(), "only a whole segment");
    }

    #[test]
    fn redirects_stay_under_the_proxy() {
        let base = "/sessions/3/sparkui";
        let rewrite = |location: &str| {
            rewrite_location(&HeaderValue::from_str(location).unwrap(), 4040, base)
                .map(|v| v.to_str().unwrap().to_string())
        };
        assert_eq!(rewrite("http://127.0.0.1:4040/jobs/").as_deref(), Some("/sessions/3/sparkui/jobs/"));
        assert_eq!(rewrite("http://localhost:4040/jobs/?id=1").as_deref(), Some("/sessions/3/sparkui/jobs/?id=1"));
        assert_eq!(rewrite("http://127.0.0.1:4040").as_deref(), Some("/sessions/3/sparkui/"));
        assert_eq!(rewrite("/jobs/").as_deref(), Some("/sessions/3/sparkui/jobs/"));
        assert_eq!(rewrite("/sessions/3/sparkui/jobs/").as_deref(), Some("/sessions/3/sparkui/jobs/"), "already there");
        assert_eq!(rewrite("/sessions/3/sparkuiX").as_deref(), Some("/sessions/3/sparkui/sessions/3/sparkuiX"));
        assert_eq!(rewrite("jobs/").as_deref(), Some("jobs/"), "relative: resolves under the proxy");
        for elsewhere in [
            "http://127.0.0.1:4041/jobs/",
            "http://evil.example.com:4040/",
            "https://127.0.0.1:4040/",
            "//evil.example.com/x",
            "javascript:alert(1)",
            // What browsers turn into `//evil.example/...`.
            "\\\\evil.example/x",
            "/\\evil.example/x",
            "\t//evil.example/",
            " //evil.example/",
        ] {
            let moved = rewrite(elsewhere);
            assert!(moved.as_deref().is_none_or(|m| m.starts_with("/sessions/3/sparkui/")), "{elsewhere}: {moved:?}");
        }
    }
}
