//! `GET /sessions/{id}/sparkui/...` and `GET /batches/{id}/sparkui/...`: an application's Spark
//! UI, for those who may view the session or batch; anyone else gets exactly the answer an
//! unknown id gets (404), so the routes do not even tell whether it exists. The forwarding is
//! [`crate::sparkui::proxy`]; authentication, audit and the security headers are the stack's,
//! as for every route.
//!
//! Also the absolute form of the proxied UI's address for `appInfo.sparkUiUrl`: sparkmagic
//! shows it as a link in a notebook, which a path alone would resolve against the notebook's
//! own server.

use super::AppState;
use crate::acl::Action;
use crate::engine::batch::{Batch, BatchSnapshot};
use crate::engine::{Session, SessionSnapshot};
use crate::error::ApiError;
use crate::impersonation::Caller;
use crate::sparkui::proxy::{self, Forward, ProxyError};
use crate::sparkui::AppUi;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, Method, Uri};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;

/// `https://<host>[:port]` as the client addressed the gateway (HTTP/2 `:authority` or the
/// `Host` header), to make the proxied UI's path an absolute URL for that client. None when it
/// sent no usable authority; the path alone is shown then.
///
/// The value is the client's own (it reaches only that client's answer, which is never
/// cached: `no-store`); it is checked to be a plain `host[:port]`, so it cannot turn the link
/// into another scheme or carry user information.
#[derive(Debug, Clone)]
pub(crate) struct PublicBase(Option<String>);

impl FromRequestParts<AppState> for PublicBase {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let authority = parts
            .uri
            .authority()
            .map(|a| a.as_str().to_string())
            .or_else(|| parts.headers.get(header::HOST).and_then(|h| h.to_str().ok()).map(str::to_string));
        let plain = authority.filter(|a| {
            a.len() <= 255
                && !a.contains('@')
                && a.parse::<axum::http::uri::Authority>().is_ok_and(|p| p.as_str() == a && !p.host().is_empty())
        });
        let scheme = if state.config.config.server.dangerous_plain_http { "http" } else { "https" };
        Ok(Self(plain.map(|a| format!("{scheme}://{a}"))))
    }
}

impl PublicBase {
    /// `path` as an absolute URL for this client.
    fn url(&self, path: Option<String>) -> Option<String> {
        let path = path?;
        Some(match &self.0 {
            Some(base) => format!("{base}{path}"),
            None => path,
        })
    }

    /// A session's snapshot with `sparkUiUrl` absolute.
    pub(crate) fn session(&self, session: &Session) -> SessionSnapshot {
        let mut snapshot = session.snapshot();
        snapshot.spark_ui_url = self.url(snapshot.spark_ui_url.take());
        snapshot
    }

    /// A batch's snapshot with `sparkUiUrl` absolute.
    pub(crate) fn batch(&self, batch: &Batch) -> BatchSnapshot {
        let mut snapshot = batch.snapshot();
        snapshot.spark_ui_url = self.url(snapshot.spark_ui_url.take());
        snapshot
    }
}

/// The `{id}` of a UI route (the `{*path}` part is read raw from the URI).
#[derive(Debug, Deserialize)]
pub(super) struct UiRoute {
    id: String,
}

/// `/sessions/{id}/sparkui` → `/sessions/{id}/sparkui/` (the UI's relative links need the slash).
pub(super) async fn session_root(
    State(state): State<AppState>,
    caller: Caller,
    Path(UiRoute { id }): Path<UiRoute>,
) -> Result<Response, ApiError> {
    let session = state.session_for(&caller, &id, Action::View)?;
    Ok(Redirect::temporary(&format!("{}/", session.ui.base())).into_response())
}

/// `/batches/{id}/sparkui` → `/batches/{id}/sparkui/`.
pub(super) async fn batch_root(
    State(state): State<AppState>,
    caller: Caller,
    Path(UiRoute { id }): Path<UiRoute>,
) -> Result<Response, ApiError> {
    let batch = state.batch_for(&caller, &id, Action::View)?;
    Ok(Redirect::temporary(&format!("{}/", batch.ui.base())).into_response())
}

/// `GET|HEAD /sessions/{id}/sparkui/{*path}`.
pub(super) async fn session_page(
    State(state): State<AppState>,
    caller: Caller,
    Path(UiRoute { id }): Path<UiRoute>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let session = state.session_for(&caller, &id, Action::View)?;
    let live = !session.state().is_terminal();
    let pgid = session.process().filter(|p| !p.has_exited()).map(|p| p.pgid);
    let what = format!("session {}", session.id);
    serve(&state, &session.ui, pgid.filter(|_| live), &what, &method, &uri, &headers).await
}

/// `GET|HEAD /batches/{id}/sparkui/{*path}`.
pub(super) async fn batch_page(
    State(state): State<AppState>,
    caller: Caller,
    Path(UiRoute { id }): Path<UiRoute>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let batch = state.batch_for(&caller, &id, Action::View)?;
    let live = !batch.state().is_terminal();
    let pgid = batch.process().filter(|p| !p.has_exited()).map(|p| p.pgid);
    let what = format!("batch {}", batch.id);
    serve(&state, &batch.ui, pgid.filter(|_| live), &what, &method, &uri, &headers).await
}

/// Forwards to the UI of `ui`, whose application's processes are group `pgid` (None: it does
/// not run).
async fn serve(
    state: &AppState,
    ui: &AppUi,
    pgid: Option<i32>,
    what: &str,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let no_ui = || {
        ApiError::NotFound(format!(
            "{what} has no Spark UI the gateway can show: it is not running on this host, its UI is disabled, \
             or Spark has not started it yet"
        ))
    };
    let pgid = pgid.ok_or_else(no_ui)?;
    let port = ui.port(pgid).await.ok_or_else(no_ui)?;
    // `/{sessions|batches}/{id}/sparkui/<rest>`: `{id}` is one segment, so the raw rest is
    // what follows the fourth slash.
    let rest = uri.path().splitn(5, '/').nth(4).unwrap_or_default();
    let request = Forward { method, rest, query: uri.query(), headers, budget: state.config.durations.request_timeout };
    proxy::forward(ui, port, request).await.map(IntoResponse::into_response).map_err(|e| match e {
        ProxyError::BadPath(_) => ApiError::BadRequest(e.to_string()),
        ProxyError::ReadOnly => ApiError::Forbidden(e.to_string()),
        ProxyError::Signing(_) => ApiError::Internal(e.to_string()),
        _ => ApiError::Unavailable(format!("{what}: {e}")),
    })
}
