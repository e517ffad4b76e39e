//! The Livy REST API: thin handlers that parse, call the engine and shape Livy's JSON.

pub mod dto;
mod extract;
mod sessions;
mod statements;

pub use extract::{LivyJson, Paging};

use crate::config::ValidatedConfig;
use crate::engine::SessionManager;
use axum::routing::{get, post};
use axum::Router;
use std::sync::Arc;

/// What every handler can reach.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The session engine.
    pub manager: Arc<SessionManager>,
    /// The validated configuration.
    pub config: Arc<ValidatedConfig>,
}

/// Every authenticated route.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/version", get(sessions::version))
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
}
