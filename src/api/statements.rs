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
    let kind = session.spec.kind.resolve_statement(req.kind.as_deref()).map_err(ApiError::BadRequest)?;
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
    let kind = session.spec.kind.resolve_statement(req.kind.as_deref()).map_err(ApiError::BadRequest)?;
    let length = code.chars().count();
    let cursor = req.cursor.unwrap_or(length);
    if cursor > length {
        return Err(ApiError::bad_request("field `cursor` is past the end of `code`"));
    }
    let timeout = state.config.durations.completion_timeout;
    let candidates = session.complete(kind, code, cursor, timeout).await?;
    Ok(Json(json!({"candidates": candidates})))
}
