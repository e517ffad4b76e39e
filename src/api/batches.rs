//! `/batches`: Livy's batch API (spark-submit over REST).

use super::dto::{self, CreateBatchRequest};
use super::sparkui::PublicBase;
use super::{AppState, LivyJson, Paging};
use crate::acl::{Action, Ownership};
use crate::engine::batch::{Batch, BatchSpec};
use crate::engine::paths;
use crate::error::ApiError;
use crate::impersonation::Caller;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

const INFO_LOG_LINES: usize = 10;

fn decide(state: &AppState, caller: &Caller, action: Action, batch: &Batch) -> crate::acl::Decision {
    let ownership = Ownership { owner: &batch.spec.owner, effective_user: &batch.spec.effective_user, id: batch.id };
    state.acl.check(&caller.acting, action, Some(ownership))
}

fn authorize(state: &AppState, caller: &Caller, action: Action, batch: &Batch) -> Result<(), ApiError> {
    let d = decide(state, caller, action, batch);
    if d.allowed {
        Ok(())
    } else {
        Err(ApiError::Forbidden(d.reason.replace("session", "batch")))
    }
}

fn info_for(state: &AppState, caller: &Caller, base: &PublicBase, batch: &Batch) -> Value {
    let viewer = decide(state, caller, Action::View, batch).allowed;
    dto::batch_json(&base.batch(batch), if viewer { batch.log.tail(INFO_LOG_LINES) } else { Vec::new() }, viewer)
}

pub(super) async fn list(
    State(state): State<AppState>,
    caller: Caller,
    base: PublicBase,
    paging: Paging,
) -> Json<Value> {
    let batches: Vec<_> =
        state.batches.list().into_iter().filter(|b| decide(&state, &caller, Action::View, b).allowed).collect();
    Json(dto::list_page(&batches, &paging, |b| dto::batch_json(&base.batch(b), b.log.tail(INFO_LOG_LINES), true)))
}

pub(super) async fn create(
    State(state): State<AppState>,
    caller: Caller,
    base: PublicBase,
    LivyJson(req): LivyJson<CreateBatchRequest>,
) -> Result<Response, ApiError> {
    let decision = state.acl.check(&caller.acting, Action::Create, None);
    if !decision.allowed {
        return Err(ApiError::Forbidden(decision.reason.replace("sessions", "batches")));
    }
    let file =
        req.file.filter(|f| !f.trim().is_empty()).ok_or_else(|| ApiError::bad_request("field `file` is required"))?;
    let conf = state.checked_conf(&caller, req.conf)?;
    paths::check_in("file", &file, &state.config.config.spark.allowed_local_dirs, state.driver_place())
        .map_err(ApiError::BadRequest)?;
    let [jars, py_files, files, archives] =
        state.checked_file_lists([req.jars, req.py_files, req.files, req.archives])?;
    let effective_user = caller.effective_user_for(&state.acl, &state.audit, req.proxy_user.as_deref())?;
    let spec = BatchSpec {
        owner: caller.real.name.clone(),
        proxy_user: super::sessions::launch_as(&effective_user),
        effective_user: effective_user.clone(),
        name: req.name,
        file,
        class_name: req.class_name.filter(|c| !c.trim().is_empty()),
        args: req.args.unwrap_or_default(),
        jars,
        py_files,
        files,
        archives,
        driver_memory: req.driver_memory,
        driver_cores: req.driver_cores,
        executor_memory: req.executor_memory,
        executor_cores: req.executor_cores,
        num_executors: req.num_executors,
        queue: req.queue,
        conf,
    };
    let batch = state.batches.create(spec, state.acl.quota(&effective_user))?;
    let body = dto::batch_json(&base.batch(&batch), batch.log.tail(INFO_LOG_LINES), true);
    Ok((StatusCode::CREATED, [(header::LOCATION, format!("/batches/{}", batch.id))], Json(body)).into_response())
}

pub(super) async fn show(
    State(state): State<AppState>,
    caller: Caller,
    base: PublicBase,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let batch = state.batches.get(&id)?;
    Ok(Json(info_for(&state, &caller, &base, &batch)))
}

pub(super) async fn state(State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let batch = state.batches.get(&id)?;
    Ok(Json(json!({"id": batch.id, "state": batch.state().as_str()})))
}

/// `GET /batches/{id}/log`: a page of the whole output (the log file, not just the in-memory
/// tail), with Livy's `from`/`size` (see [`dto::log_page`]). The file is streamed: one pass
/// counts the lines and a second collects the page, so only the lines answered are held in
/// memory. `size=-1` is not capped: it answers every line, as Livy does.
pub(super) async fn log(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    paging: Paging,
) -> Result<Json<Value>, ApiError> {
    let batch = state.batches.get(&id)?;
    authorize(&state, &caller, Action::View, &batch)?;
    let batch_id = batch.id;
    // File reads block: keep them off the async workers.
    let page = tokio::task::spawn_blocking(move || batch.log_window(|total| dto::log_range(total, &paging)))
        .await
        .map_err(|e| ApiError::Internal(format!("reading a batch log: {e}")))?;
    Ok(Json(dto::log_json(batch_id, page.from, page.total, &page.lines)))
}

pub(super) async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let batch = state.batches.get(&id)?;
    authorize(&state, &caller, Action::Modify, &batch)?;
    let (batches, by) = (state.batches.clone(), caller.real.name.clone());
    super::run_detached(async move { batches.delete(&batch, &by).await }).await;
    Ok(Json(json!({"msg": "deleted"})))
}
