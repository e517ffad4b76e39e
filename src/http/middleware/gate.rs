//! The access gate: after impersonation, may this caller use the gateway at all? The decision
//! is the policy's ([`AccessManager`]); this file only turns it into a response. Finer checks
//! need the session or batch and happen in the handlers.

use crate::acl::{AccessManager, Action};
use crate::error::ApiError;
use crate::impersonation::Caller;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

/// The middleware after impersonation: may this caller use the gateway at all?
pub(crate) async fn gate(State(acl): State<Arc<AccessManager>>, request: Request, next: Next) -> Response {
    let Some(caller) = request.extensions().get::<Caller>() else {
        return ApiError::Internal("the ACL gate runs before impersonation".into()).into_response();
    };
    let decision = acl.check(&caller.acting, Action::UseGateway, None);
    if !decision.allowed {
        return ApiError::Forbidden(decision.reason).into_response();
    }
    next.run(request).await
}
