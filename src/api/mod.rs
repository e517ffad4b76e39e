//! The Livy REST API: thin handlers that parse, call the engine and shape Livy's JSON.

mod batches;
pub mod dto;
mod extract;
mod files;
mod jobs;
mod sessions;
mod sparkui;
mod statements;
pub mod streams;

pub use extract::{LivyJson, Paging, Wait};

use crate::acl::{AccessManager, Action, Ownership, ResourceKind};
use crate::config::ValidatedConfig;
use crate::engine::batch::Batch;
use crate::engine::{EngineError, Session, SessionManager};
use crate::error::ApiError;
use crate::impersonation::Caller;
use axum::extract::State;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use std::sync::Arc;

/// The conf key Livy's Python `HttpClient` sends with the gateway's URL (see `checked_conf`).
const LIVY_CLIENT_URI: &str = "livy.uri";

/// What every handler can reach: one shared [`Handles`], so the clone every request makes
/// of it (axum hands each handler and layer its own) is a single reference count.
#[derive(Debug, Clone)]
pub struct AppState(Arc<Handles>);

impl AppState {
    /// The state over `handles`.
    pub fn new(handles: Handles) -> Self {
        Self(Arc::new(handles))
    }
}

impl std::ops::Deref for AppState {
    type Target = Handles;

    fn deref(&self) -> &Handles {
        &self.0
    }
}

/// The engine, configuration, access control, audit trail and metrics of a gateway.
#[derive(Debug)]
pub struct Handles {
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
    /// Streamed batch logs being read (see [`streams`]).
    pub log_streams: Arc<streams::LogStreams>,
}

/// A session or a batch: what the access checks need to know about it.
pub(crate) trait Owned {
    /// Its kind, owner, effective user and id.
    fn ownership(&self) -> Ownership<'_>;
}

impl Owned for Session {
    fn ownership(&self) -> Ownership<'_> {
        Ownership {
            kind: ResourceKind::Session,
            owner: &self.spec().owner,
            effective_user: &self.spec().effective_user,
            id: self.id,
        }
    }
}

impl Owned for Batch {
    fn ownership(&self) -> Ownership<'_> {
        Ownership {
            kind: ResourceKind::Batch,
            owner: &self.spec.owner,
            effective_user: &self.spec.effective_user,
            id: self.id,
        }
    }
}

impl AppState {
    /// Whether the caller may `action` this session or batch.
    pub(crate) fn allowed(&self, caller: &Caller, action: Action, resource: &impl Owned) -> bool {
        self.acl.check(&caller.acting, action, Some(resource.ownership())).allowed
    }

    /// The session `key` (id or name) names, for a caller who may `action` it.
    ///
    /// A caller who may not view it gets exactly the 404 of a session that does not exist, on
    /// every per-session route: neither its id, nor its name, nor its owner or state is
    /// disclosed to someone who may not see it (`GET /sessions` does not list it either). A
    /// caller who may view but not modify it gets a 403 with the reason.
    pub(crate) fn session_for(&self, caller: &Caller, key: &str, action: Action) -> Result<Arc<Session>, ApiError> {
        self.visible(caller, key, self.manager.get(key), action)
    }

    /// [`AppState::session_for`] for batches.
    pub(crate) fn batch_for(&self, caller: &Caller, key: &str, action: Action) -> Result<Arc<Batch>, ApiError> {
        self.visible(caller, key, self.batches.get(key), action)
    }

    fn visible<T: Owned>(
        &self,
        caller: &Caller,
        key: &str,
        found: Result<Arc<T>, EngineError>,
        action: Action,
    ) -> Result<Arc<T>, ApiError> {
        let resource = found?;
        let ownership = resource.ownership();
        let view = self.acl.check(&caller.acting, Action::View, Some(ownership));
        if !view.allowed {
            // The same answer as for an unknown id; the audit trail keeps the real reason.
            let not_found = match ownership.kind {
                ResourceKind::Session => EngineError::SessionNotFound(key.to_string()),
                ResourceKind::Batch => EngineError::BatchNotFound(key.to_string()),
            };
            return Err(ApiError::Hidden { shown: not_found.to_string(), reason: view.reason });
        }
        if action != Action::View {
            let decision = self.acl.check(&caller.acting, action, Some(ownership));
            if !decision.allowed {
                return Err(ApiError::Forbidden(decision.reason));
            }
        }
        Ok(resource)
    }

    /// 403 with the reason unless the caller may create sessions or batches.
    pub(crate) fn authorize_create(&self, caller: &Caller, kind: ResourceKind) -> Result<(), ApiError> {
        let decision = self.acl.check(&caller.acting, Action::Create(kind), None);
        if decision.allowed {
            Ok(())
        } else {
            Err(ApiError::Forbidden(decision.reason))
        }
    }

    /// A request's Spark conf as strings, refused (403, keys named) when it sets keys the
    /// caller may not set: keys outside the allow-list or on the deny list (see
    /// [`crate::acl::conf`]), and keys the operator set in `spark.conf` without listing them in
    /// `spark.overridable_conf`. `resources` are the keys the request's resource fields
    /// (`driverMemory`, ...) set; they are held to the operator's values too. Superusers are
    /// exempt.
    pub(crate) fn checked_conf(
        &self,
        caller: &Caller,
        raw: Option<std::collections::BTreeMap<String, serde_json::Value>>,
        resources: &[&str],
    ) -> Result<std::collections::BTreeMap<String, String>, ApiError> {
        use crate::acl::conf::Refusal;
        let mut raw = raw.unwrap_or_default();
        // Livy's Python HttpClient puts the URL it was given into every session it creates
        // (`livy.uri`): its own address book, meaningless to a driver this gateway launches.
        // Dropped, so that client works unchanged (it is never passed to spark-submit).
        raw.remove(LIVY_CLIENT_URI);
        let conf = dto::conf_to_strings(raw).map_err(ApiError::BadRequest)?;
        let refused = self.acl.refused_conf_keys(&caller.acting, conf.keys().map(String::as_str));
        // Keys are the request's field names, named so the user can fix them; a long one is cut
        // (a value pasted into a key by mistake is not repeated whole).
        let listed = |why: Refusal| {
            let keys = refused.iter().filter(|(_, w)| *w == why).map(|(k, _)| crate::engine::launch::clip_text(k, 128));
            keys.collect::<Vec<_>>().join(", ")
        };
        let mut problems = Vec::new();
        let (denied, unlisted) = (listed(Refusal::Denied), listed(Refusal::NotAllowed));
        if !denied.is_empty() {
            problems.push(format!("these Spark configuration keys may not be set by users: {denied}"));
        }
        if !unlisted.is_empty() {
            problems.push(format!(
                "these Spark configuration keys are not on the list users may set: {unlisted} (an operator can allow \
                 keys in the policy's [conf] allow)"
            ));
        }
        if !self.acl.is_superuser(&caller.acting) {
            let spark = &self.config.config.spark;
            let fixed: Vec<&str> = conf
                .keys()
                .map(String::as_str)
                .chain(resources.iter().copied())
                .filter(|k| spark.conf.contains_key(*k) && !spark.overridable_conf.iter().any(|o| o == k))
                .collect();
            if !fixed.is_empty() {
                problems.push(format!(
                    "these Spark configuration keys are fixed by the operator: {} (spark.overridable_conf lists the \
                     ones users may change)",
                    fixed.join(", ")
                ));
            }
        }
        if problems.is_empty() {
            Ok(conf)
        } else {
            Err(ApiError::Forbidden(format!("Rejected: {}", problems.join("; "))))
        }
    }

    /// The `jars`, `pyFiles`, `files` and `archives` of a request, each entry checked by the
    /// path guard (400 naming the field and entry otherwise).
    pub(crate) fn checked_file_lists(&self, lists: [Option<Vec<String>>; 4]) -> Result<[Vec<String>; 4], ApiError> {
        let guard = self.path_guard();
        let [jars, py_files, files, archives] = lists.map(Option::unwrap_or_default);
        for (field, list) in [("jars", &jars), ("pyFiles", &py_files), ("files", &files), ("archives", &archives)] {
            guard.check_all(field, list).map_err(ApiError::BadRequest)?;
        }
        Ok([jars, py_files, files, archives])
    }

    /// The shared submit fields of a create request, checked: conf against the policy (and
    /// the operator's fixed keys), then the request's own `paths` (`(field, path)`: a batch's
    /// `file`) and the file lists against the path guard, blank values refused, and
    /// `proxyUser` (or `doAs`) resolved into the effective user the request acts as. Returns
    /// the spec and that user.
    pub(crate) fn checked_submit(
        &self,
        caller: &Caller,
        fields: dto::SubmitFields,
        paths: &[(&str, &str)],
    ) -> Result<(crate::engine::SubmitSpec, String), ApiError> {
        let resources = fields.resource_keys();
        let conf = self.checked_conf(caller, fields.conf, &resources)?;
        for (field, path) in paths {
            self.path_guard().check(field, path).map_err(ApiError::BadRequest)?;
        }
        let [jars, py_files, files, archives] =
            self.checked_file_lists([fields.jars, fields.py_files, fields.files, fields.archives])?;
        let proxy_user = non_empty("proxyUser", fields.proxy_user)?;
        let effective_user = caller.effective_user_for(&self.acl, &self.audit, proxy_user.as_deref())?;
        let spec = crate::engine::SubmitSpec {
            name: fields.name,
            proxy_user: launch_as(&effective_user),
            jars,
            py_files,
            files,
            archives,
            driver_memory: non_empty("driverMemory", fields.driver_memory)?,
            driver_cores: fields.driver_cores,
            executor_memory: non_empty("executorMemory", fields.executor_memory)?,
            executor_cores: fields.executor_cores,
            num_executors: fields.num_executors,
            queue: non_empty("queue", fields.queue)?,
            conf,
        };
        Ok((spec, effective_user))
    }

    /// What decides whether a file a request names may be used.
    pub(crate) fn path_guard(&self) -> crate::engine::paths::Guard<'_> {
        crate::engine::paths::Guard::new(&self.config.config.spark)
    }
}

/// `v`, refused when given but blank.
fn non_empty(field: &str, v: Option<String>) -> Result<Option<String>, ApiError> {
    match v {
        Some(s) if s.trim().is_empty() => Err(ApiError::bad_request(format!("field `{field}` must not be empty"))),
        other => Ok(other),
    }
}

/// The Spark application runs as the effective user (`--proxy-user`), unless that is the
/// account the gateway itself runs under.
fn launch_as(effective_user: &str) -> Option<String> {
    (crate::acl::gateway_account().as_deref() != Some(effective_user)).then(|| effective_user.to_string())
}

/// Runs `work` in its own task and waits for it: a client that disconnects (which drops the
/// handler's future) cannot abandon a shutdown halfway and leave a session or batch stuck in
/// `shutting_down` with its processes alive.
pub(crate) async fn run_detached(work: impl std::future::Future<Output = ()> + Send + 'static) {
    if let Err(e) = tokio::spawn(work).await {
        tracing::error!(error = %e, "a detached shutdown task failed");
    }
}

/// Runs `work` in its own task and waits for its result: a create whose client goes away
/// midway still ends whole — its record stored and its entry registered and launched, or
/// neither — never a half-made entry that counts against the caps with nothing behind it.
pub(crate) async fn detached<T: Send + 'static>(
    work: impl std::future::Future<Output = Result<T, EngineError>> + Send + 'static,
) -> Result<T, ApiError> {
    match tokio::spawn(work).await {
        Ok(result) => result.map_err(ApiError::from),
        Err(e) => Err(ApiError::Internal(format!("a create task failed: {e}"))),
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
        // Livy's Python HttpClient creates its session with `POST /sessions/` (Livy's servlet
        // takes both spellings of the collections).
        .route("/sessions/", get(sessions::list).post(sessions::create))
        .route("/sessions/{id}", get(sessions::show).delete(sessions::delete))
        .route("/sessions/{id}/state", get(sessions::state))
        .route("/sessions/{id}/log", get(sessions::log))
        .route("/sessions/{id}/connect", post(sessions::connect))
        .route("/sessions/{id}/stop", post(sessions::stop))
        .route("/sessions/{id}/statements", get(statements::list).post(statements::create))
        .route("/sessions/{id}/statements/{sid}", get(statements::show))
        .route("/sessions/{id}/statements/{sid}/events", get(statements::events))
        .route("/sessions/{id}/statements/{sid}/cancel", post(statements::cancel))
        .route("/sessions/{id}/completion", post(statements::complete))
        .route("/sessions/{id}/submit-job", post(jobs::submit))
        .route("/sessions/{id}/run-job", post(jobs::submit))
        .route("/sessions/{id}/jobs/{jid}", get(jobs::show))
        .route("/sessions/{id}/jobs/{jid}/cancel", post(jobs::cancel))
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
        .route("/batches/", get(batches::list).post(batches::create))
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

#[cfg(test)]
pub(crate) mod tests;
