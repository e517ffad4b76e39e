//! Livy's programmatic API: `/sessions/{id}/submit-job`, `run-job`, `jobs/{jobId}` and its
//! cancel. A job is opaque bytes (a cloudpickled Python callable, or a Kryo-serialized JVM
//! `Job`) that the gateway checks only for being base64 and hands to the session's driver,
//! which runs it in the session's queue with its statements; the result comes back as bytes.

use super::dto::SerializedJob;
use super::{AppState, LivyJson, Wait};
use crate::acl::Action;
use crate::audit_slots::Annotation;
use crate::engine::job::{self, JobStatus};
use crate::engine::CodeKind;
use crate::error::ApiError;
use crate::impersonation::Caller;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use serde_json::{json, Value};
use std::time::Duration;

fn job_id(raw: &str) -> Result<u32, ApiError> {
    raw.parse().map_err(|_| ApiError::bad_request("job id must be a non-negative integer"))
}

/// `POST /sessions/{id}/submit-job`, and `run-job` the same way: queues the job, answers 201
/// with its status. Livy's client polls a `run-job` job as well, and it runs in the session's
/// queue too: a driver runs one thing at a time, and order is what a client of both
/// statements and jobs can rely on.
pub(super) async fn submit(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    LivyJson(req): LivyJson<SerializedJob>,
) -> Result<Response, ApiError> {
    queue(state, caller, id, req).await
}

async fn queue(state: AppState, caller: Caller, id: String, req: SerializedJob) -> Result<Response, ApiError> {
    let session = state.session_for(&caller, &id, Action::Modify)?;
    session.heartbeat();
    let job_type = req.job_type.ok_or_else(|| ApiError::bad_request("field `jobType` is required"))?;
    let kind = CodeKind::job(&job_type, session.spec().kind).map_err(ApiError::BadRequest)?;
    if kind == CodeKind::SparkJob && state.config.config.spark.job_api_jar.is_none() {
        return Err(ApiError::bad_request(
            "field `jobType`: this gateway runs no spark jobs (its spark.job_api_jar is not set); pyspark jobs run",
        ));
    }
    let bytes = match req.job.as_deref() {
        None | Some("") => {
            return Err(ApiError::bad_request("field `job` is required (the serialized job, in base64)"))
        }
        Some(text) => BASE64.decode(text).map_err(|_| ApiError::bad_request("field `job` is not valid base64"))?,
    };
    let code = req.job.unwrap_or_default();
    let job = session.submit(code, kind)?;
    // A 201 means the job is on disk, as for statements.
    let (manager, stored) = (state.manager.clone(), session.clone());
    super::detached(async move { manager.flush(&stored).await }).await?;
    let location = format!("/sessions/{}/jobs/{}", session.id, job.id);
    // Livy answers `SENT` here, whatever the driver does next; its clients then poll.
    let status = JobStatus { state: "SENT", ..JobStatus::of(&job) };
    let mut response = (StatusCode::CREATED, [(header::LOCATION, location)], Json(&status)).into_response();
    // The audit record names the job, its type and size; never its bytes.
    response.extensions_mut().insert(Annotation {
        resource: Some(format!("session:{}/job:{}", session.id, job.id)),
        reason: Some(format!("{} job of {} bytes queued", job::job_type(kind), bytes.len())),
        ..Annotation::default()
    });
    Ok(response)
}

/// Base64 as Livy's clients write it (Jackson's `byte[]`, Python's `b64encode`); the padding
/// may be left out.
const BASE64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

/// `GET /sessions/{id}/jobs/{jobId}`; with `?wait=` (an extension, as for statements), held
/// until the job finishes or the wait ends.
pub(super) async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, jid)): Path<(String, String)>,
    Wait(wait): Wait,
) -> Result<Response, ApiError> {
    let session = state.session_for(&caller, &id, Action::View)?;
    session.heartbeat();
    let jid = job_id(&jid)?;
    let job = match wait {
        None => session.job(jid)?,
        Some(wait) => {
            let durations = &state.config.durations;
            let most =
                durations.max_statement_wait.min(durations.request_timeout.saturating_sub(Duration::from_secs(1)));
            session.wait_job(jid, wait.min(most)).await?
        }
    };
    let status = JobStatus::of(&job);
    let mut response = Json(&status).into_response();
    response.extensions_mut().insert(Annotation {
        resource: Some(format!("session:{}/job:{}", session.id, job.id)),
        reason: Some(format!("{} job {}", job::job_type(job.kind), status.state)),
        ..Annotation::default()
    });
    Ok(response)
}

/// `POST /sessions/{id}/jobs/{jobId}/cancel`: a queued job is cancelled at once, a running one
/// as a statement is (its Spark job group, then an interrupt).
pub(super) async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, jid)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let session = state.session_for(&caller, &id, Action::Modify)?;
    session.heartbeat();
    let jid = job_id(&jid)?;
    session.cancel_job(jid)?;
    let mut response = Json::<Value>(json!({"msg": "canceled"})).into_response();
    response
        .extensions_mut()
        .insert(Annotation { resource: Some(format!("session:{}/job:{jid}", session.id)), ..Annotation::default() });
    Ok(response)
}
