//! `/batches`: Livy's batch API (spark-submit over REST).

use super::dto::{self, CreateBatchRequest};
use super::sparkui::PublicBase;
use super::{AppState, LivyJson, Paging};
use crate::acl::{Action, ResourceKind};
use crate::engine::batch::{render_log_json, Batch, BatchSpec};
use crate::error::ApiError;
use crate::impersonation::Caller;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

const INFO_LOG_LINES: usize = 10;

/// Livy's Batch for a caller who may view the batch (nobody else gets one).
fn info(base: &PublicBase, batch: &Batch) -> Value {
    dto::batch_json(&base.batch(batch), batch.log.tail(INFO_LOG_LINES))
}

pub(super) async fn list(
    State(state): State<AppState>,
    caller: Caller,
    base: PublicBase,
    paging: Paging,
) -> Json<Value> {
    let batches: Vec<_> =
        state.batches.list().into_iter().filter(|b| state.allowed(&caller, Action::View, b.as_ref())).collect();
    Json(dto::list_page(&batches, &paging, |b| info(&base, b)))
}

pub(super) async fn create(
    State(state): State<AppState>,
    caller: Caller,
    base: PublicBase,
    LivyJson(mut req): LivyJson<CreateBatchRequest>,
) -> Result<Response, ApiError> {
    state.authorize_create(&caller, ResourceKind::Batch)?;
    let file = req
        .file
        .take()
        .filter(|f| !f.trim().is_empty())
        .ok_or_else(|| ApiError::bad_request("field `file` is required"))?;
    let (submit, effective_user) = state.checked_submit(&caller, req.take_submit(), &[("file", &file)])?;
    let spec = BatchSpec {
        owner: caller.real.name.clone(),
        effective_user: effective_user.clone(),
        file,
        class_name: req.class_name.filter(|c| !c.trim().is_empty()),
        args: req.args.unwrap_or_default(),
        submit,
    };
    let (batches, quota) = (state.batches.clone(), state.acl.quota(&effective_user));
    let batch = super::detached(async move { batches.create(spec, quota).await }).await?;
    let body = info(&base, &batch);
    Ok((StatusCode::CREATED, [(header::LOCATION, format!("/batches/{}", batch.id))], Json(body)).into_response())
}

pub(super) async fn show(
    State(state): State<AppState>,
    caller: Caller,
    base: PublicBase,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let batch = state.batch_for(&caller, &id, Action::View)?;
    Ok(Json(info(&base, &batch)))
}

pub(super) async fn state(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let batch = state.batch_for(&caller, &id, Action::View)?;
    Ok(Json(json!({"id": batch.id, "state": batch.state().as_str()})))
}

/// `GET /batches/{id}/log`: a page of the whole output (the log file, not just the in-memory
/// tail), with Livy's `from`/`size` (see [`dto::log_page`]). `size=-1` answers every line, as
/// Livy does — streamed: a blocking reader sends chunks of about 64 KiB through a channel of a
/// few chunks as the client reads them, so the gateway never holds more than that, however
/// long the log and however many clients read it.
pub(super) async fn log(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    paging: Paging,
) -> Result<Response, ApiError> {
    let batch = state.batch_for(&caller, &id, Action::View)?;
    // Held until the whole answer is sent (it moves into the reading thread).
    let slot = state.log_streams.enter(&caller.real.name).ok_or_else(|| {
        ApiError::too_many(
            format!(
                "Rejected: too many batch logs are being read at once ({} per user, {} in all); try again when one is \
                 done",
                super::streams::MAX_PER_USER,
                super::streams::MAX_TOTAL
            ),
            5,
        )
    })?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
    // File reads block: keep them off the async workers. A client that stops reading holds a
    // blocking thread only until server.request_timeout passes without it taking a chunk.
    let (runtime, patience) = (tokio::runtime::Handle::current(), state.config.durations.request_timeout);
    tokio::task::spawn_blocking(move || {
        let _slot = slot;
        let mut send =
            |chunk| runtime.block_on(tokio::time::timeout(patience, tx.send(chunk))).is_ok_and(|r| r.is_ok());
        render_log_json(&batch, &|total| dto::log_range(total, &paging), &mut send)
    });
    let chunks = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (Ok::<_, std::convert::Infallible>(axum::body::Bytes::from(chunk)), rx))
    });
    Ok(([(header::CONTENT_TYPE, "application/json")], axum::body::Body::from_stream(chunks)).into_response())
}

pub(super) async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let batch = state.batch_for(&caller, &id, Action::Modify)?;
    let (batches, by) = (state.batches.clone(), caller.real.name.clone());
    super::run_detached(async move { batches.delete(&batch, &by).await }).await;
    Ok(Json(json!({"msg": "deleted"})))
}
