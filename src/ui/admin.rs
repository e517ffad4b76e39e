//! The administrators' pages (the `[admin]` right): the audit trail with filters and the
//! chain's verification, the access policy asked directly ("may bob view session 12, and why
//! not?", answered by the same [`crate::acl::AccessManager`] a request meets), and the figures
//! of `/metrics`.

use super::{error_page, page, Nav};
use crate::acl::{Action, Ownership, ResourceKind};
use crate::api::AppState;
use crate::error::ApiError;
use crate::identity::{AuthMethod, Principal};
use crate::impersonation::Caller;
use askama::Template;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;
use serde_json::Value;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

/// How much of the current audit file's end the trail page reads.
const TAIL_BYTES: u64 = 4 * 1024 * 1024;

/// Records shown at most.
const SHOWN: usize = 200;

/// The rights the policy page asks about, as named in the form.
const RIGHTS: [&str; 6] = ["use the gateway", "create sessions", "create batches", "view", "modify", "administer"];

/// One verification of the whole chain at a time (it reads every file).
static VERIFYING: AtomicBool = AtomicBool::new(false);

/// 403 unless the caller administers the gateway.
fn admin(state: &AppState, caller: &Caller) -> Result<(), ApiError> {
    let decision = state.acl.check(&caller.acting, Action::Admin, None);
    if decision.allowed {
        Ok(())
    } else {
        Err(ApiError::Forbidden(decision.reason))
    }
}

#[derive(Template)]
#[template(path = "ui/admin.html")]
struct AdminPage {
    nav: Nav,
}

pub(super) async fn index(State(state): State<AppState>, caller: Caller) -> Response {
    if let Err(e) = admin(&state, &caller) {
        return error_page(Nav::of(&state, &caller), e);
    }
    page(StatusCode::OK, &AdminPage { nav: Nav::of(&state, &caller) })
}

/// One record of the trail, as text.
pub(super) struct Row {
    pub seq: String,
    pub time: String,
    pub principal: String,
    pub action: String,
    pub resource: String,
    pub decision: String,
    pub status: String,
    pub reason: String,
}

impl Row {
    fn of(record: &Value) -> Self {
        let text = |key: &str| match &record[key] {
            Value::Null => String::new(),
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        Self {
            seq: text("seq"),
            time: text("time"),
            principal: text("principal"),
            action: text("action"),
            resource: text("resource"),
            decision: text("decision"),
            status: text("status"),
            reason: text("reason"),
        }
    }
}

#[derive(Template)]
#[template(path = "ui/audit.html")]
struct AuditPage {
    nav: Nav,
    verdict: Option<String>,
    intact: bool,
    user: String,
    action: String,
    decision: String,
    decisions: Vec<&'static str>,
    scanned: usize,
    rows: Vec<Row>,
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct AuditQuery {
    user: Option<String>,
    action: Option<String>,
    decision: Option<String>,
    verify: Option<String>,
}

/// The records in the last [`TAIL_BYTES`] of `path`, oldest first (the first, cut line is
/// skipped when the read starts inside the file).
pub(super) fn tail_records(path: &Path) -> std::io::Result<Vec<Value>> {
    let mut file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    let start = len.saturating_sub(TAIL_BYTES);
    file.seek(SeekFrom::Start(start))?;
    let mut bytes = Vec::new();
    file.take(TAIL_BYTES).read_to_end(&mut bytes)?;
    let text = String::from_utf8_lossy(&bytes);
    let mut lines = text.lines();
    if start > 0 {
        lines.next();
    }
    Ok(lines.filter_map(|l| serde_json::from_str(l).ok()).collect())
}

pub(super) async fn audit(State(state): State<AppState>, caller: Caller, Query(q): Query<AuditQuery>) -> Response {
    let nav = Nav::of(&state, &caller);
    if let Err(e) = admin(&state, &caller) {
        return error_page(nav, e);
    }
    let path = state.audit.path().to_path_buf();
    let verify = q.verify.as_deref() == Some("1");
    let read = tokio::task::spawn_blocking(move || {
        let records = tail_records(&path);
        let verdict = verify.then(|| verify_chain(&path));
        (records, verdict)
    })
    .await;
    let (records, verdict) = match read {
        Ok((Ok(records), verdict)) => (records, verdict),
        Ok((Err(e), _)) => return error_page(nav, ApiError::Internal(format!("reading the audit trail failed: {e}"))),
        Err(e) => return error_page(nav, ApiError::Internal(format!("reading the audit trail failed: {e}"))),
    };
    let (user, action, decision) =
        (q.user.unwrap_or_default(), q.action.unwrap_or_default(), q.decision.unwrap_or_default());
    let decisions = vec!["allow", "deny", "error", "info"];
    let decision = if decisions.contains(&decision.as_str()) { decision } else { String::new() };
    let rows = records
        .iter()
        .rev()
        .filter(|r| user.is_empty() || r["principal"] == user.as_str())
        .filter(|r| action.is_empty() || r["action"].as_str().is_some_and(|a| a.contains(action.as_str())))
        .filter(|r| decision.is_empty() || r["decision"] == decision.as_str())
        .take(SHOWN)
        .map(Row::of)
        .collect();
    let (verdict, intact) = match verdict {
        Some(Ok(report)) => (Some(report.to_string()), report.is_intact()),
        Some(Err(message)) => (Some(message), false),
        None => (None, false),
    };
    let trail = AuditPage { nav, verdict, intact, user, action, decision, decisions, scanned: records.len(), rows };
    page(StatusCode::OK, &trail)
}

/// Verifies every file of the chain (blocking), one verification at a time.
fn verify_chain(current: &Path) -> Result<crate::audit::VerifyReport, String> {
    if VERIFYING.swap(true, Ordering::SeqCst) {
        return Err("another verification is running; try again when it is done".into());
    }
    let result = crate::audit::chain_files(current)
        .and_then(|files| crate::audit::verify_files(&files))
        .map_err(|e| format!("the chain could not be read: {e}"));
    VERIFYING.store(false, Ordering::SeqCst);
    result
}

#[derive(Template)]
#[template(path = "ui/policy.html")]
struct PolicyPage {
    nav: Nav,
    user: String,
    groups: String,
    right: String,
    rights: Vec<&'static str>,
    resource: String,
    answer: Option<String>,
    allowed: bool,
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct PolicyQuery {
    user: Option<String>,
    groups: Option<String>,
    right: Option<String>,
    resource: Option<String>,
}

pub(super) async fn policy(State(state): State<AppState>, caller: Caller, Query(q): Query<PolicyQuery>) -> Response {
    let nav = Nav::of(&state, &caller);
    if let Err(e) = admin(&state, &caller) {
        return error_page(nav, e);
    }
    let user = q.user.unwrap_or_default().trim().to_string();
    let groups = q.groups.unwrap_or_default();
    let right = q.right.filter(|r| RIGHTS.contains(&r.as_str())).unwrap_or_else(|| RIGHTS[3].to_string());
    let resource = q.resource.unwrap_or_default().trim().to_string();
    let (answer, allowed) = if user.is_empty() {
        (None, false)
    } else {
        let principal = Principal {
            name: user.clone(),
            groups: groups.split(',').map(str::trim).filter(|g| !g.is_empty()).map(str::to_string).collect(),
            method: AuthMethod::Jwt,
        };
        match ask(&state, &principal, &right, &resource) {
            Ok(decision) => {
                let verdict = if decision.allowed { "Allowed" } else { "Denied" };
                (Some(format!("{verdict}: {}", decision.reason)), decision.allowed)
            }
            Err(problem) => (Some(problem), false),
        }
    };
    let rights = RIGHTS.to_vec();
    page(StatusCode::OK, &PolicyPage { nav, user, groups, right, rights, resource, answer, allowed })
}

/// The access manager's decision on `right` for `principal`, on `resource` (`session 12`,
/// `batch 3`) where the right needs one.
fn ask(state: &AppState, principal: &Principal, right: &str, resource: &str) -> Result<crate::acl::Decision, String> {
    let acl = &state.acl;
    let needs_resource = |action: Action| -> Result<crate::acl::Decision, String> {
        let mut words = resource.split_whitespace();
        let (kind, id) = match (words.next(), words.next().and_then(|w| w.parse::<u32>().ok()), words.next()) {
            (Some("session"), Some(id), None) => (ResourceKind::Session, id),
            (Some("batch"), Some(id), None) => (ResourceKind::Batch, id),
            _ => return Err("name the session or batch, e.g. `session 12` or `batch 3`".into()),
        };
        let key = id.to_string();
        let decide = |owner: &str, effective_user: &str| {
            acl.check(principal, action, Some(Ownership { kind, owner, effective_user, id }))
        };
        match kind {
            ResourceKind::Session => {
                let s = state.manager.get(&key).map_err(|_| format!("there is no session {id}"))?;
                Ok(decide(&s.spec().owner, &s.spec().effective_user))
            }
            ResourceKind::Batch => {
                let b = state.batches.get(&key).map_err(|_| format!("there is no batch {id}"))?;
                Ok(decide(&b.spec.owner, &b.spec.effective_user))
            }
        }
    };
    match right {
        "use the gateway" => Ok(acl.check(principal, Action::UseGateway, None)),
        "create sessions" => Ok(acl.check(principal, Action::Create(ResourceKind::Session), None)),
        "create batches" => Ok(acl.check(principal, Action::Create(ResourceKind::Batch), None)),
        "administer" => Ok(acl.check(principal, Action::Admin, None)),
        "modify" => needs_resource(Action::Modify),
        _ => needs_resource(Action::View),
    }
}

#[derive(Template)]
#[template(path = "ui/figures.html")]
struct FiguresPage {
    nav: Nav,
    text: String,
}

pub(super) async fn figures(State(state): State<AppState>, caller: Caller) -> Response {
    let nav = Nav::of(&state, &caller);
    if let Err(e) = admin(&state, &caller) {
        return error_page(nav, e);
    }
    let text = state.metrics.render(&state);
    page(StatusCode::OK, &FiguresPage { nav, text })
}
