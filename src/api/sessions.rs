//! `/sessions` and `/version` handlers.

use super::dto::{self, CreateSessionRequest};
use super::sparkui::PublicBase;
use super::{AppState, LivyJson, Paging};
use crate::acl::{Action, ResourceKind};
use crate::engine::{SessionKind, SessionSpec, SessionState};
use crate::error::ApiError;
use crate::impersonation::Caller;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

/// Lines of log shown inside SessionInfo (as Livy).
const INFO_LOG_LINES: usize = 10;

/// SessionInfo for a caller who may view the session (nobody else gets one).
fn info(base: &PublicBase, session: &crate::engine::Session) -> Value {
    dto::session_json(&base.session(session), session.log.tail(INFO_LOG_LINES))
}

pub(super) async fn version(State(state): State<AppState>) -> Json<Value> {
    Json(json!({
        // Livy clients parse a Livy-style version; ours says which Livy API it speaks.
        "version": format!("0.9.0+sparkgate.{}", env!("CARGO_PKG_VERSION")),
        "user": "sparkgate",
        "revision": option_env!("SPARKGATE_GIT_REVISION").unwrap_or("unknown"),
        "branch": "main",
        "date": option_env!("SPARKGATE_BUILD_DATE").unwrap_or("unknown"),
        "url": "https://github.com/sparkgate/sparkgate",
        "sparkgate": env!("CARGO_PKG_VERSION"),
        "sparkVersion": state.manager.spark().map(|s| s.version.clone()),
        "dangerous": state.config.dangerous_options(),
    }))
}

pub(super) async fn list(
    State(state): State<AppState>,
    caller: Caller,
    base: PublicBase,
    paging: Paging,
) -> Json<Value> {
    // Only what the caller may view is listed (Livy lists everything to everyone).
    let sessions: Vec<_> =
        state.manager.list().into_iter().filter(|s| state.allowed(&caller, Action::View, s.as_ref())).collect();
    Json(dto::list_page(&sessions, &paging, |s| info(&base, s)))
}

pub(super) async fn create(
    State(state): State<AppState>,
    caller: Caller,
    base: PublicBase,
    LivyJson(mut req): LivyJson<CreateSessionRequest>,
) -> Result<Response, ApiError> {
    state.authorize_create(&caller, ResourceKind::Session)?;
    let kind = match req.kind.as_deref() {
        None => SessionKind::Shared,
        Some(k) => SessionKind::parse(k).ok_or_else(|| {
            ApiError::bad_request("field `kind`: unknown session kind; use one of spark, pyspark, sparkr, sql, shared")
        })?,
    };
    let (submit, effective_user) = state.checked_submit(&caller, req.take_submit(), &[])?;
    let spec = SessionSpec {
        owner: caller.real.name.clone(),
        effective_user: effective_user.clone(),
        kind,
        submit,
        heartbeat_timeout_secs: req.heartbeat_timeout_in_second.unwrap_or(0),
        ttl: req.ttl,
        idle_timeout: req.idle_timeout,
    };
    let (manager, quota) = (state.manager.clone(), state.acl.quota(&effective_user));
    let warm =
        crate::engine::warm::size_for(&state.config.config.sessions.warm, &caller.real.name, &caller.real.groups);
    let session = super::detached(async move { manager.create(spec, quota, warm).await }).await?;
    let body = info(&base, &session);
    let location = format!("/sessions/{}", session.id);
    Ok((StatusCode::CREATED, [(header::LOCATION, location)], Json(body)).into_response())
}

pub(super) async fn show(
    State(state): State<AppState>,
    caller: Caller,
    base: PublicBase,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let session = state.session_for(&caller, &id, Action::View)?;
    session.heartbeat();
    Ok(Json(info(&base, &session)))
}

pub(super) async fn state(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    // Livy's heartbeat side effect; only those who may view a session reach it, so nobody else
    // can keep someone's abandoned session alive.
    let session = state.session_for(&caller, &id, Action::View)?;
    session.heartbeat();
    Ok(Json(json!({"id": session.id, "state": session.state().as_str()})))
}

pub(super) async fn log(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    paging: Paging,
) -> Result<Json<Value>, ApiError> {
    let session = state.session_for(&caller, &id, Action::View)?;
    session.heartbeat();
    // Only the page asked for is copied out of the session's log.
    let (from, total, lines) = session.log.window(|total| dto::log_range(total, &paging));
    Ok(Json(dto::log_json(session.id, from, total, &lines)))
}

pub(super) async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let session = state.session_for(&caller, &id, Action::Modify)?;
    let (manager, by) = (state.manager.clone(), caller.real.name.clone());
    super::run_detached(async move { manager.delete(&session, &by).await }).await;
    Ok(Json(json!({"msg": "deleted"})))
}

pub(super) async fn stop(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let session = state.session_for(&caller, &id, Action::Modify)?;
    let (manager, reason) = (state.manager.clone(), format!("stopped by {}", caller.real.name));
    super::run_detached(async move { manager.stop(&session, SessionState::Killed, &reason).await }).await;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn connect(
    State(state): State<AppState>,
    caller: Caller,
    base: PublicBase,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let session = state.session_for(&caller, &id, Action::Modify)?;
    session.heartbeat();
    session.record_activity();
    Ok(Json(info(&base, &session)))
}
