//! Uploads and added files for interactive sessions: `upload-jar` (multipart field `jar`),
//! `upload-pyfile` / `upload-file` (field `file`), and `add-jar` / `add-pyfile` / `add-file`
//! with `{"uri": ...}`. Uploads are stored owner-only in the session's directory (removed with
//! the session); the driver adds them so later statements can use them.

use super::{AppState, LivyJson};
use crate::acl::Action;
use crate::engine::EngineError;
use crate::error::ApiError;
use crate::impersonation::Caller;
use axum::extract::{Multipart, Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use std::io::Write;

/// `add-*` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AddFileRequest {
    uri: Option<String>,
}

/// A safe file name from what the client sent: the last path component, restricted characters.
fn safe_name(raw: Option<&str>, fallback: &str) -> String {
    let base = raw.unwrap_or("").rsplit(['/', '\\']).next().unwrap_or("");
    let cleaned: String =
        base.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '_' }).collect();
    let trimmed = cleaned.trim_start_matches('.');
    if trimmed.is_empty() {
        fallback.to_string()
    } else {
        trimmed.chars().take(200).collect()
    }
}

async fn upload(
    state: &AppState,
    caller: &Caller,
    id: &str,
    mut multipart: Multipart,
    field_name: &str,
    what: &str,
) -> Result<StatusCode, ApiError> {
    let session = state.session_for(caller, id, Action::Modify)?;
    session.heartbeat();
    let limit = state.config.config.server.max_upload_bytes;
    let too_large =
        || ApiError::PayloadTooLarge(format!("upload is larger than server.max_upload_bytes ({limit} bytes)"));
    let dir = session.dir.join("uploads");
    crate::fs::create_private_dir(&dir).map_err(|e| ApiError::Internal(e.to_string()))?;
    // One upload at a time per session: the budget below counts what is already stored.
    let _one_at_a_time = session.uploads.lock().await;
    // What this session's earlier uploads already take, against sessions.max_uploaded_bytes.
    let total_limit = state.config.config.sessions.max_uploaded_bytes;
    let stored: u64 = std::fs::read_dir(&dir)
        .map(|entries| entries.flatten().filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum())
        .unwrap_or(0);
    let over_total = || {
        ApiError::PayloadTooLarge(format!(
            "this session's uploads would exceed sessions.max_uploaded_bytes ({total_limit} bytes; \
             {stored} already stored)"
        ))
    };
    while let Some(mut field) = multipart.next_field().await.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            too_large()
        } else {
            ApiError::bad_request(format!("malformed multipart body: {e}"))
        }
    })? {
        if field.name() != Some(field_name) {
            continue;
        }
        let fallback = if what == "jar" { "upload.jar" } else { "upload" };
        let base = safe_name(field.file_name(), fallback);
        // Never overwrite an earlier upload (its classes or module may already be loaded).
        let path = (0..)
            .map(|n| if n == 0 { dir.join(&base) } else { dir.join(format!("{n}-{base}")) })
            .find(|p| !p.exists())
            .unwrap_or_else(|| dir.join(&base));
        let mut file = {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .map_err(|e| ApiError::Internal(format!("storing an upload: {e}")))?
        };
        let mut written = 0usize;
        loop {
            let chunk = field.chunk().await.map_err(|e| {
                if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    too_large()
                } else {
                    ApiError::bad_request(format!("malformed multipart body: {e}"))
                }
            });
            let chunk = match chunk {
                Ok(Some(c)) => c,
                Ok(None) => break,
                Err(e) => {
                    let _ = std::fs::remove_file(&path);
                    return Err(e);
                }
            };
            written += chunk.len();
            if written > limit {
                let _ = std::fs::remove_file(&path);
                return Err(too_large());
            }
            if stored.saturating_add(written as u64) > total_limit {
                let _ = std::fs::remove_file(&path);
                return Err(over_total());
            }
            file.write_all(&chunk).map_err(|e| ApiError::Internal(format!("storing an upload: {e}")))?;
        }
        file.sync_all().map_err(|e| ApiError::Internal(format!("storing an upload: {e}")))?;
        let uri = path.canonicalize().unwrap_or_else(|_| path.clone()).display().to_string();
        if let Err(e) = session.add_file(what, uri, state.config.durations.completion_timeout).await {
            // Refused for certain: not in use, so it must not count against the budget. (After
            // a timeout or a dropped connection the driver may still add it: it stays.)
            if matches!(e, EngineError::NotAccepting { .. } | EngineError::InvalidRequest(_)) {
                let _ = std::fs::remove_file(&path);
            }
            return Err(e.into());
        }
        return Ok(StatusCode::OK);
    }
    Err(ApiError::bad_request(format!("multipart field `{field_name}` is required")))
}

pub(super) async fn upload_jar(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    multipart: Multipart,
) -> Result<StatusCode, ApiError> {
    upload(&state, &caller, &id, multipart, "jar", "jar").await
}

pub(super) async fn upload_pyfile(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    multipart: Multipart,
) -> Result<StatusCode, ApiError> {
    upload(&state, &caller, &id, multipart, "file", "pyfile").await
}

pub(super) async fn upload_file(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    multipart: Multipart,
) -> Result<StatusCode, ApiError> {
    upload(&state, &caller, &id, multipart, "file", "file").await
}

async fn add(
    state: &AppState,
    caller: &Caller,
    id: &str,
    req: AddFileRequest,
    what: &str,
) -> Result<StatusCode, ApiError> {
    let session = state.session_for(caller, id, Action::Modify)?;
    session.heartbeat();
    let uri =
        req.uri.filter(|u| !u.trim().is_empty()).ok_or_else(|| ApiError::bad_request("field `uri` is required"))?;
    state.path_guard().check("uri", &uri).map_err(ApiError::BadRequest)?;
    session.add_file(what, uri, state.config.durations.completion_timeout).await?;
    Ok(StatusCode::OK)
}

pub(super) async fn add_jar(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    LivyJson(req): LivyJson<AddFileRequest>,
) -> Result<StatusCode, ApiError> {
    add(&state, &caller, &id, req, "jar").await
}

pub(super) async fn add_pyfile(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    LivyJson(req): LivyJson<AddFileRequest>,
) -> Result<StatusCode, ApiError> {
    add(&state, &caller, &id, req, "pyfile").await
}

pub(super) async fn add_file(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    LivyJson(req): LivyJson<AddFileRequest>,
) -> Result<StatusCode, ApiError> {
    add(&state, &caller, &id, req, "file").await
}

#[cfg(test)]
mod tests {
    use super::safe_name;

    #[test]
    fn upload_names_cannot_escape_the_directory() {
        assert_eq!(safe_name(Some("../../etc/passwd"), "x"), "passwd");
        assert_eq!(safe_name(Some("..\\\\win.ini"), "x"), "win.ini");
        assert_eq!(safe_name(Some(".bashrc"), "x"), "bashrc");
        assert_eq!(safe_name(Some("my lib (1).py"), "x"), "my_lib__1_.py");
        assert_eq!(safe_name(None, "upload.jar"), "upload.jar");
        assert_eq!(safe_name(Some(".."), "upload"), "upload");
    }
}
