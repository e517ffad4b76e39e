//! The Livy REST API: thin handlers that parse, call the engine and shape Livy's JSON.

mod batches;
pub mod dto;
mod extract;
mod files;
mod sessions;
mod sparkui;
mod statements;

pub use extract::{LivyJson, Paging};

use crate::acl::{AccessManager, Action, Ownership};
use crate::config::ValidatedConfig;
use crate::engine::{Session, SessionManager};
use crate::error::ApiError;
use crate::impersonation::Caller;
use axum::extract::State;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use std::sync::Arc;

/// What every handler can reach.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The session engine.
    pub manager: Arc<SessionManager>,
    /// The batches.
    pub batches: Arc<crate::engine::batch::BatchManager>,
    /// The validated configuration.
    pub config: Arc<ValidatedConfig>,
    /// Who may do what.
    pub acl: Arc<AccessManager>,
    /// The audit trail (security events; requests are recorded by the stack).
    pub audit: Arc<crate::audit::AuditLog>,
    /// Request counters for `/metrics` (fed by the stack).
    pub metrics: Arc<crate::metrics::Metrics>,
}

impl AppState {
    /// Whether the caller may `action` this session.
    pub(crate) fn allowed(&self, caller: &Caller, action: Action, session: &Session) -> bool {
        let ownership =
            Ownership { owner: &session.spec.owner, effective_user: &session.spec.effective_user, id: session.id };
        self.acl.check(&caller.acting, action, Some(ownership)).allowed
    }

    /// A request's Spark conf as strings, refused (403, keys named) when it sets keys the
    /// caller may not set.
    pub(crate) fn checked_conf(
        &self,
        caller: &Caller,
        raw: Option<std::collections::BTreeMap<String, serde_json::Value>>,
    ) -> Result<std::collections::BTreeMap<String, String>, ApiError> {
        let conf = dto::conf_to_strings(raw.unwrap_or_default()).map_err(ApiError::BadRequest)?;
        let denied = self.acl.denied_conf_keys(&caller.acting, &conf);
        if denied.is_empty() {
            Ok(conf)
        } else {
            Err(ApiError::Forbidden(format!(
                "Rejected: these Spark configuration keys may not be set by users: {}",
                denied.join(", ")
            )))
        }
    }

    /// The `jars`, `pyFiles`, `files` and `archives` of a request, each entry checked against
    /// `spark.allowed_local_dirs` (400 naming the field and value otherwise).
    pub(crate) fn checked_file_lists(&self, lists: [Option<Vec<String>>; 4]) -> Result<[Vec<String>; 4], ApiError> {
        let allowed = &self.config.config.spark.allowed_local_dirs;
        let [jars, py_files, files, archives] = lists.map(Option::unwrap_or_default);
        for (field, list) in [("jars", &jars), ("pyFiles", &py_files), ("files", &files), ("archives", &archives)] {
            crate::engine::paths::check_all_in(field, list, allowed, self.driver_place())
                .map_err(ApiError::BadRequest)?;
        }
        Ok([jars, py_files, files, archives])
    }

    /// Where drivers run, for the local-path checks.
    pub(crate) fn driver_place(&self) -> crate::engine::paths::DriverPlace {
        crate::engine::paths::DriverPlace::from_deploy_mode(&self.config.config.spark.deploy_mode)
    }

    /// 403 with the reason unless the caller may `action` this session.
    pub(crate) fn authorize(&self, caller: &Caller, action: Action, session: &Session) -> Result<(), ApiError> {
        let ownership =
            Ownership { owner: &session.spec.owner, effective_user: &session.spec.effective_user, id: session.id };
        let decision = self.acl.check(&caller.acting, action, Some(ownership));
        if decision.allowed {
            Ok(())
        } else {
            Err(ApiError::Forbidden(decision.reason))
        }
    }
}

/// Runs `work` in its own task and waits for it: a client that disconnects (which drops the
/// handler's future) cannot abandon a shutdown halfway and leave a session or batch stuck in
/// `shutting_down` with its processes alive.
pub(crate) async fn run_detached(work: impl std::future::Future<Output = ()> + Send + 'static) {
    if let Err(e) = tokio::spawn(work).await {
        tracing::error!(error = %e, "a detached shutdown task failed");
    }
}

/// `GET /metrics`: every user's figures, so only for those with the `[admin]` right.
async fn metrics(State(state): State<AppState>, caller: Caller) -> Result<Response, ApiError> {
    let decision = state.acl.check(&caller.acting, Action::Admin, None);
    if !decision.allowed {
        return Err(ApiError::Forbidden(decision.reason));
    }
    Ok(crate::metrics::exposition(&state))
}

/// Every authenticated route.
pub fn router(upload_limit: usize) -> Router<AppState> {
    Router::new()
        .route("/version", get(sessions::version))
        .route("/metrics", get(metrics))
        .route("/sessions", get(sessions::list).post(sessions::create))
        .route("/sessions/{id}", get(sessions::show).delete(sessions::delete))
        .route("/sessions/{id}/state", get(sessions::state))
        .route("/sessions/{id}/log", get(sessions::log))
        .route("/sessions/{id}/connect", post(sessions::connect))
        .route("/sessions/{id}/stop", post(sessions::stop))
        .route("/sessions/{id}/statements", get(statements::list).post(statements::create))
        .route("/sessions/{id}/statements/{sid}", get(statements::show))
        .route("/sessions/{id}/statements/{sid}/cancel", post(statements::cancel))
        .route("/sessions/{id}/completion", post(statements::complete))
        .route("/sessions/{id}/add-jar", post(files::add_jar))
        .route("/sessions/{id}/add-pyfile", post(files::add_pyfile))
        .route("/sessions/{id}/add-file", post(files::add_file))
        .merge(
            Router::new()
                .route("/sessions/{id}/upload-jar", post(files::upload_jar))
                .route("/sessions/{id}/upload-pyfile", post(files::upload_pyfile))
                .route("/sessions/{id}/upload-file", post(files::upload_file))
                // Uploads have their own, larger limit (server.max_upload_bytes).
                .layer(axum::extract::DefaultBodyLimit::max(upload_limit)),
        )
        .route("/batches", get(batches::list).post(batches::create))
        .route("/batches/{id}", get(batches::show).delete(batches::delete))
        .route("/batches/{id}/state", get(batches::state))
        .route("/batches/{id}/log", get(batches::log))
        // The Spark UI, read-only (GET, and HEAD through `get`), for those who may view.
        .route("/sessions/{id}/sparkui", get(sparkui::session_root))
        .route("/sessions/{id}/sparkui/", get(sparkui::session_page))
        .route("/sessions/{id}/sparkui/{*path}", get(sparkui::session_page))
        .route("/batches/{id}/sparkui", get(sparkui::batch_root))
        .route("/batches/{id}/sparkui/", get(sparkui::batch_page))
        .route("/batches/{id}/sparkui/{*path}", get(sparkui::batch_page))
}
