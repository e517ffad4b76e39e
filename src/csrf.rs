//! CSRF protection: unsafe methods must carry `X-Requested-By` when the request could come
//! from a browser (mode `auto`: it carries our auth cookie, an `Origin` or `Sec-Fetch-*`
//! header), always (`strict`), or never (`off`). Programmatic clients using Bearer or
//! Negotiate without cookies keep working unchanged in `auto`.

use crate::error::ApiError;
use axum::extract::{Request, State};
use axum::http::{header, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// The configured mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CsrfMode {
    /// Browser-like requests only.
    Auto,
    /// Every unsafe request.
    Strict,
    /// Never.
    Off,
}

impl CsrfMode {
    /// From `csrf.mode` (validated at start-up).
    pub fn parse(mode: &str) -> Self {
        match mode {
            "strict" => Self::Strict,
            "off" => Self::Off,
            _ => Self::Auto,
        }
    }
}

/// The name of the cookie that authenticates browsers (set after a SPNEGO handshake).
pub const AUTH_COOKIE: &str = "sparkgate_auth";

fn browser_like(request: &Request) -> bool {
    let h = request.headers();
    let has_auth_cookie = h
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(';').any(|c| c.trim_start().starts_with(&format!("{AUTH_COOKIE}="))));
    has_auth_cookie
        || h.contains_key(header::ORIGIN)
        || h.contains_key("sec-fetch-site")
        || h.contains_key("sec-fetch-mode")
        || h.contains_key("sec-fetch-dest")
}

/// Whether the request must carry `X-Requested-By`.
pub fn required(mode: CsrfMode, request: &Request) -> bool {
    let unsafe_method = !matches!(*request.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    unsafe_method
        && match mode {
            CsrfMode::Off => false,
            CsrfMode::Strict => true,
            CsrfMode::Auto => browser_like(request),
        }
}

/// The middleware.
pub async fn protect(State(mode): State<CsrfMode>, request: Request, next: Next) -> Response {
    if required(mode, &request) && !request.headers().contains_key("x-requested-by") {
        return ApiError::bad_request("Missing Required Header for CSRF protection: send X-Requested-By")
            .into_response();
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;

    fn req(method: &str, headers: &[(&str, &str)]) -> Request {
        let mut b = axum::http::Request::builder().method(method).uri("/sessions");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(Body::empty()).unwrap()
    }

    #[test]
    fn auto_mode_targets_browsers_only() {
        let m = CsrfMode::Auto;
        assert!(!required(m, &req("POST", &[("authorization", "Bearer x")])), "pylivy-style client");
        assert!(required(m, &req("POST", &[("cookie", "a=b; sparkgate_auth=xyz")])));
        assert!(required(m, &req("DELETE", &[("origin", "https://evil.example")])));
        assert!(required(m, &req("POST", &[("sec-fetch-site", "cross-site")])));
        assert!(!required(m, &req("GET", &[("origin", "https://evil.example")])), "safe methods");
        assert!(!required(m, &req("POST", &[("cookie", "other=1")])));
    }

    #[test]
    fn strict_and_off() {
        assert!(required(CsrfMode::Strict, &req("POST", &[])));
        assert!(!required(CsrfMode::Strict, &req("GET", &[])));
        assert!(!required(CsrfMode::Off, &req("POST", &[("origin", "https://x")])));
    }
}
