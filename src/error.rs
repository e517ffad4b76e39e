//! The one place where errors become HTTP responses: every status code the API returns is
//! chosen here, and every body has Livy's `{"msg": ...}` shape.

use crate::audit_slots::{Annotation, Decision};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

/// An error an API handler (or a middleware in front of it) answers with.
///
/// Client errors carry a message that names what was wrong; server errors carry no internals
/// (the cause is logged, and the body gives the request id to quote).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// The request is malformed: bad JSON, a wrong type, a missing or invalid field.
    #[error("{0}")]
    BadRequest(String),
    /// No credentials, or credentials that were not accepted.
    #[error("{msg}")]
    Unauthorized {
        /// What failed, without any secret.
        msg: String,
        /// The `WWW-Authenticate` challenges to send, one per configured scheme.
        challenges: Vec<String>,
    },
    /// Authenticated, but not allowed.
    #[error("{0}")]
    Forbidden(String),
    /// The session, statement or route does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The session or batch exists but the caller may not view it: answered exactly like one
    /// that does not exist (`shown`), while the audit trail records the refusal and its reason.
    #[error("{shown}")]
    Hidden {
        /// The not-found message the client sees.
        shown: String,
        /// Why the caller may not see it (audit trail only).
        reason: String,
    },
    /// The request is valid but the resource's state does not allow it (e.g. a dead session).
    #[error("{0}")]
    Conflict(String),
    /// The body is larger than the configured limit.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// The request target is longer than `server.max_uri_bytes`.
    #[error("{0}")]
    UriTooLong(String),
    /// The header fields are larger than `server.max_header_bytes`.
    #[error("{0}")]
    HeadersTooLarge(String),
    /// A configured limit (sessions, launches) is reached; try again later — in about
    /// `retry_after` seconds, which the answer says in `Retry-After`.
    #[error("{msg}")]
    TooManyRequests {
        /// What limit was reached.
        msg: String,
        /// When trying again makes sense, in seconds.
        retry_after: u64,
    },
    /// The gateway is overloaded or a dependency is not available right now.
    #[error("{0}")]
    Unavailable(String),
    /// The request took longer than the configured timeout.
    #[error("request timed out")]
    Timeout,
    /// Something failed inside the gateway; details are logged, not returned.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    /// The HTTP status this error is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) | Self::Hidden { .. } => StatusCode::NOT_FOUND,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UriTooLong(_) => StatusCode::URI_TOO_LONG,
            Self::HeadersTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Timeout => StatusCode::REQUEST_TIMEOUT,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A 400 naming the problem.
    pub fn bad_request(msg: impl Into<String>) -> Self {
        Self::BadRequest(msg.into())
    }

    /// A 429 naming the limit, to be tried again in about `retry_after` seconds.
    pub fn too_many(msg: impl Into<String>, retry_after: u64) -> Self {
        Self::TooManyRequests { msg: msg.into(), retry_after }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = match &self {
            Self::Internal(cause) => {
                // The cause stays in the log; the client gets a reference it can quote.
                tracing::error!(error = %cause, "internal error");
                json!({"msg": "internal error; see the gateway log (the request id is in the x-request-id header)"})
            }
            other => json!({ "msg": other.to_string() }),
        };
        let mut response = (status, Json(body)).into_response();
        match &self {
            Self::Internal(_) => {}
            // A refusal, though it looks like a 404 to the client.
            Self::Hidden { reason, .. } => {
                response.extensions_mut().insert(Annotation {
                    reason: Some(reason.clone()),
                    decision: Some(Decision::Deny.as_str().to_string()),
                    ..Default::default()
                });
            }
            // The audit record says why (client-facing messages never hold credentials).
            _ => {
                response.extensions_mut().insert(Annotation { reason: Some(self.to_string()), ..Default::default() });
            }
        }
        // Every 429 (and 503) says when to try again, so clients back off instead of hammering.
        let retry_after = match &self {
            Self::TooManyRequests { retry_after, .. } => Some(*retry_after),
            Self::Unavailable(_) => Some(UNAVAILABLE_RETRY_SECS),
            _ => None,
        };
        if let Some(secs) = retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        if let Self::Unauthorized { challenges, .. } = &self {
            for challenge in challenges {
                if let Ok(value) = HeaderValue::from_str(challenge) {
                    response.headers_mut().append(header::WWW_AUTHENTICATE, value);
                }
            }
        }
        response
    }
}

/// `Retry-After` of a 503: the store, a driver or the gateway itself is busy for a moment.
const UNAVAILABLE_RETRY_SECS: u64 = 5;

impl From<crate::engine::EngineError> for ApiError {
    fn from(err: crate::engine::EngineError) -> Self {
        use crate::engine::EngineError as E;
        match err {
            E::SessionNotFound(_) | E::BatchNotFound(_) | E::StatementNotFound { .. } | E::JobNotFound { .. } => {
                Self::NotFound(err.to_string())
            }
            E::DuplicateName(_) | E::InvalidRequest(_) => Self::BadRequest(err.to_string()),
            E::QuotaZero { .. } => Self::Forbidden(err.to_string()),
            // A launch takes seconds; a live session or batch, or an hour's name conflicts,
            // longer; a statement queue drains as statements run.
            E::TooManyLaunches { .. } => Self::too_many(err.to_string(), 5),
            E::UserQuota { what, .. } if what.contains("starting") => Self::too_many(err.to_string(), 5),
            E::UserQuota { what, .. } if what.contains("names") => Self::too_many(err.to_string(), 300),
            E::TooManyLive { .. } | E::UserQuota { .. } => Self::too_many(err.to_string(), 30),
            E::StatementsQueued { .. } | E::StatementsTooLarge { .. } => Self::too_many(err.to_string(), 2),
            E::NotAccepting { .. } | E::IllegalTransition { .. } => Self::Conflict(err.to_string()),
            E::DriverUnavailable(_) | E::StoreUnavailable(_) => Self::Unavailable(err.to_string()),
            E::DriverTimeout(_) => Self::Unavailable(err.to_string()),
            E::Launch(_) | E::Io(_) => Self::Internal(err.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn body_of(err: ApiError) -> (StatusCode, serde_json::Value) {
        let response = err.into_response();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn client_errors_name_the_problem() {
        let (status, body) = body_of(ApiError::bad_request("field `code` is required")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body, json!({"msg": "field `code` is required"}));
        let (status, _) = body_of(ApiError::too_many("x", 3)).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        let (status, _) = body_of(ApiError::PayloadTooLarge("x".into())).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    }

    #[tokio::test]
    async fn every_429_and_503_says_when_to_try_again() {
        use crate::engine::EngineError as E;
        let retry = |err: ApiError| {
            let response = err.into_response();
            let value = response.headers().get(header::RETRY_AFTER).map(|v| v.to_str().unwrap().to_string());
            (response.status(), value)
        };
        let cases = [
            (E::TooManyLaunches { kind: "sessions", limit: 4 }, "5"),
            (E::TooManyLive { kind: "sessions", limit: 4 }, "30"),
            (E::UserQuota { user: "bob".into(), limit: 2, what: "sessions starting" }, "5"),
            (E::UserQuota { user: "bob".into(), limit: 2, what: "live batches" }, "30"),
            (
                E::UserQuota { user: "bob".into(), limit: 2, what: "names refused as duplicates within the last hour" },
                "300",
            ),
            (E::StatementsQueued { id: 1, limit: 8 }, "2"),
        ];
        for (err, secs) in cases {
            assert_eq!(retry(err.into()), (StatusCode::TOO_MANY_REQUESTS, Some(secs.to_string())));
        }
        assert_eq!(retry(ApiError::Unavailable("store".into())), (StatusCode::SERVICE_UNAVAILABLE, Some("5".into())));
        assert_eq!(retry(ApiError::bad_request("x")).1, None, "only where trying again helps");
        let never = E::QuotaZero { user: "carol".into(), what: "sessions starting" };
        assert_eq!(retry(never.into()), (StatusCode::FORBIDDEN, None), "a quota of 0: waiting never helps");
    }

    #[tokio::test]
    async fn internal_errors_hide_the_cause() {
        let (status, body) = body_of(ApiError::Internal("secret path /etc/x".into())).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!body["msg"].as_str().unwrap().contains("/etc/x"));
    }

    #[tokio::test]
    async fn unauthorized_carries_every_challenge() {
        let response = ApiError::Unauthorized {
            msg: "no credentials".into(),
            challenges: vec!["Negotiate".into(), "Bearer realm=\"sparkgate\"".into()],
        }
        .into_response();
        let values: Vec<_> = response.headers().get_all(header::WWW_AUTHENTICATE).iter().collect();
        assert_eq!(values.len(), 2);
    }
}
