//! `/sessions/{id}/statements` and completion handlers.

use super::dto::{self, CompletionRequest, CreateStatementRequest};
use super::{AppState, LivyJson, Paging, Wait};
use crate::acl::Action;
use crate::error::ApiError;
use crate::impersonation::Caller;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

fn statement_id(raw: &str) -> Result<u32, ApiError> {
    raw.parse().map_err(|_| ApiError::bad_request("statement id must be a non-negative integer"))
}

pub(super) async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    paging: Paging,
) -> Result<Response, ApiError> {
    let session = state.session_for(&caller, &id, Action::View)?;
    session.heartbeat();
    // Cheap copies (code and outputs are shared), serialized one by one into the response.
    let mut statements = session.statements();
    if paging.descending {
        statements.reverse();
    }
    let total = statements.len();
    let range = dto::window(total, paging.from.unwrap_or(0), paging.size.unwrap_or(None));
    let page: Vec<_> = statements.drain(range).collect();
    let head = format!("{{\"total_statements\":{total},\"statements\":[");
    Ok(dto::streamed_json(head, page, "]}", crate::engine::Statement::json_pieces))
}

pub(super) async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    LivyJson(req): LivyJson<CreateStatementRequest>,
) -> Result<Response, ApiError> {
    let session = state.session_for(&caller, &id, Action::Modify)?;
    session.heartbeat();
    let code = req.code.ok_or_else(|| ApiError::bad_request("field `code` is required"))?;
    let kind = session.spec().kind.resolve_statement(req.kind.as_deref()).map_err(ApiError::BadRequest)?;
    let statement = session.submit(code, kind)?;
    // A 201 means the statement is on disk: written before the answer (in a task of its own, so
    // a client that goes away does not leave it half-written).
    let (manager, stored) = (state.manager.clone(), session.clone());
    super::detached(async move { manager.flush(&stored).await }).await?;
    let location = format!("/sessions/{}/statements/{}", session.id, statement.id);
    Ok((StatusCode::CREATED, [(header::LOCATION, location)], Json(statement)).into_response())
}

/// `GET /sessions/{id}/statements/{sid}`; with `?wait=`, held until the statement finishes or
/// the wait (at most `sessions.max_statement_wait`, and below the request timeout) ends.
pub(super) async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, sid)): Path<(String, String)>,
    Wait(wait): Wait,
) -> Result<Json<crate::engine::Statement>, ApiError> {
    let session = state.session_for(&caller, &id, Action::View)?;
    session.heartbeat();
    let sid = statement_id(&sid)?;
    let Some(wait) = wait else { return Ok(Json(session.statement(sid)?)) };
    let durations = &state.config.durations;
    let most = durations.max_statement_wait.min(durations.request_timeout.saturating_sub(Duration::from_secs(1)));
    Ok(Json(session.wait_statement(sid, wait.min(most)).await?))
}

/// `GET /sessions/{id}/statements/{sid}/events`: server-sent events — `progress` (id, state,
/// progress) whenever they change, then `statement` (the whole statement, as `GET` shows it)
/// when it ends, and the stream closes. A stream also closes after
/// `sessions.max_statement_wait` with a `statement` event of how it is then (an `EventSource`
/// reconnects). Each open stream holds one of the caller's long-reader slots.
pub(super) async fn events(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, sid)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    use axum::response::sse::{Event, KeepAlive, Sse};
    let session = state.session_for(&caller, &id, Action::View)?;
    session.heartbeat();
    let sid = statement_id(&sid)?;
    session.statement(sid)?;
    let slot = state.log_streams.enter(&caller.real.name).ok_or_else(|| {
        ApiError::too_many(
            format!(
                "Rejected: too many event streams and batch logs are being read at once ({} per user, {} in all); try \
                 again when one is done",
                super::streams::MAX_PER_USER,
                super::streams::MAX_TOTAL
            ),
            5,
        )
    })?;
    let durations = &state.config.durations;
    let deadline = tokio::time::Instant::now() + durations.max_statement_wait;
    type Seen = Option<(crate::engine::StatementState, f64)>;
    let start: Option<(Arc<crate::engine::Session>, Seen, super::streams::StreamSlot)> = Some((session, None, slot));
    let stream = futures_util::stream::unfold(start, move |open| async move {
        let (session, seen, slot) = open?;
        let (event, next) = match session.next_statement_change(sid, seen, deadline).await {
            Ok(Some(st)) if st.state.is_final() => (statement_event(&st), None),
            Ok(Some(st)) => {
                let progress = json!({"id": st.id, "state": st.state, "progress": st.progress});
                (
                    Event::default().event("progress").data(progress.to_string()),
                    Some((session, Some((st.state, st.progress)), slot)),
                )
            }
            // The wait is over: how it is now, and the client reconnects.
            Ok(None) => match session.statement(sid) {
                Ok(st) => (statement_event(&st), None),
                Err(_) => return None,
            },
            Err(_) => return None,
        };
        Some((Ok::<_, std::convert::Infallible>(event), next))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()).into_response())
}

fn statement_event(statement: &crate::engine::Statement) -> axum::response::sse::Event {
    axum::response::sse::Event::default().event("statement").data(serde_json::to_string(statement).unwrap_or_default())
}

pub(super) async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, sid)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let session = state.session_for(&caller, &id, Action::Modify)?;
    session.heartbeat();
    session.cancel(statement_id(&sid)?)?;
    Ok(Json(json!({"msg": "canceled"})))
}

pub(super) async fn complete(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    LivyJson(req): LivyJson<CompletionRequest>,
) -> Result<Json<Value>, ApiError> {
    let session = state.session_for(&caller, &id, Action::Modify)?;
    session.heartbeat();
    let code = req.code.ok_or_else(|| ApiError::bad_request("field `code` is required"))?;
    let kind = session.spec().kind.resolve_statement(req.kind.as_deref()).map_err(ApiError::BadRequest)?;
    let length = code.chars().count();
    let cursor = req.cursor.unwrap_or(length);
    if cursor > length {
        return Err(ApiError::bad_request("field `cursor` is past the end of `code`"));
    }
    let timeout = state.config.durations.completion_timeout;
    let candidates = session.complete(kind, code, cursor, timeout).await?;
    Ok(Json(json!({"candidates": candidates})))
}
