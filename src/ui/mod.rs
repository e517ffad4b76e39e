//! The web UI at `/ui`: server-rendered HTML (askama templates, compile-time checked, every
//! value escaped), one stylesheet and one small script embedded in the binary, nothing from
//! elsewhere. Pages sit behind the same authentication, ACL and audit as the API and show a
//! user only what the API would; the few actions (run, cancel, delete) go through the REST API
//! with the CSRF header, from `ui.js`.
//!
//! Browser security: a strict Content-Security-Policy (`'self'` scripts and styles only, no
//! inline ones, `data:` images for `%matplot` output), framing denied, the login cookie
//! `Secure; HttpOnly; SameSite=Strict` (never readable by script, never in a URL), and the
//! login and logout forms refused when posted from another origin.

mod admin;
mod view;

use self::view::{BatchRow, OutputView, SessionRow, StatementView};
use crate::acl::Action;
use crate::api::AppState;
use crate::audit_slots::AuthRecord;
use crate::auth::cookie::COOKIE_NAME;
use crate::auth::ldap::LdapAuthenticator;
use crate::auth::AuthOutcome;
use crate::config::Secret;
use crate::engine::{CodeKind, SessionState};
use crate::error::ApiError;
use crate::identity::ConnInfo;
use crate::impersonation::Caller;
use crate::net::AddrKey;
use askama::Template;
use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, HOST, LOCATION, ORIGIN, SET_COOKIE};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use serde::Deserialize;

/// The pages' policy: nothing inline, nothing from elsewhere.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Sessions per page of the list.
const PAGE: usize = 50;

/// The kinds a statement can be run in, in the run form's order.
const CODE_KINDS: [CodeKind; 4] = [CodeKind::PySpark, CodeKind::Scala, CodeKind::Sql, CodeKind::SparkR];

/// Log lines on a session page, and per page of a batch's log.
const LOG_LINES: usize = 200;

/// The pages that need a logged-in user; the stack puts them behind authentication.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/ui", get(|| async { see_other("/ui/sessions") }))
        .route("/ui/", get(|| async { see_other("/ui/sessions") }))
        .route("/ui/sessions", get(sessions))
        .route("/ui/sessions/{id}", get(session))
        .route("/ui/batches", get(batches))
        .route("/ui/batches/{id}", get(batch))
        .route("/ui/admin", get(admin::index))
        .route("/ui/admin/audit", get(admin::audit))
        .route("/ui/admin/policy", get(admin::policy))
        .route("/ui/admin/figures", get(admin::figures))
        .route("/ui/{*rest}", get(unknown_page))
}

async fn unknown_page(State(state): State<AppState>, caller: Caller) -> Response {
    error_page(Nav::of(&state, &caller), ApiError::NotFound("no such page".into()))
}

/// What the login page needs.
#[derive(Debug, Clone)]
pub struct LoginState {
    /// The LDAP login, when `ldap` is in `auth.methods`.
    pub ldap: Option<LdapAuthenticator>,
}

/// The pages anyone may reach: the login form, logout and the assets.
pub fn public_routes(state: LoginState) -> Router {
    Router::new()
        .route("/ui/login", get(login_form).post(login))
        .route("/ui/logout", post(logout))
        .route("/ui/static/{file}", get(asset))
        .with_state(state)
}

/// A page, with the UI's headers.
fn page(status: StatusCode, template: &impl Template) -> Response {
    match template.render() {
        Ok(html) => {
            let mut response = (status, html).into_response();
            let headers = response.headers_mut();
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
            headers.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
            response
        }
        Err(e) => ApiError::Internal(format!("rendering a page failed: {e}")).into_response(),
    }
}

fn see_other(location: &str) -> Response {
    let mut response = StatusCode::SEE_OTHER.into_response();
    if let Ok(value) = HeaderValue::from_str(location) {
        response.headers_mut().insert(LOCATION, value);
    }
    response
}

/// The layer around [`routes`]: a browser that is not logged in is sent to the login form
/// instead of getting the API's 401 (the refusal is audited all the same: the response keeps
/// its extensions).
pub async fn login_redirect(request: Request, next: Next) -> Response {
    let ui = request.uri().path().starts_with("/ui");
    let page_get = ui && request.method() == Method::GET;
    let target = request.uri().path_and_query().map(|p| p.as_str().to_string()).unwrap_or_default();
    let response = next.run(request).await;
    if !page_get || response.status() != StatusCode::UNAUTHORIZED {
        // Any other refusal of a page (403 by the gate, a bad query string...) is a page too.
        return if ui { as_page(response).await } else { response };
    }
    let (mut parts, _) = response.into_parts();
    parts.status = StatusCode::SEE_OTHER;
    // A link too long to come back to leads to the sessions instead.
    let target = if target.len() > 2048 { "/ui/sessions".to_string() } else { target };
    let location = format!("/ui/login?next={}", form_urlencoded::byte_serialize(target.as_bytes()).collect::<String>());
    parts.headers.remove(axum::http::header::WWW_AUTHENTICATE);
    parts.headers.remove(CONTENT_TYPE);
    if let Ok(value) = HeaderValue::from_str(&location) {
        parts.headers.insert(LOCATION, value);
    }
    Response::from_parts(parts, axum::body::Body::empty())
}

/// An error answer that is not a page (the API's JSON, an extractor's plain text) as an error
/// page with the same status and message, keeping its headers and extensions (the audit
/// layer's facts).
async fn as_page(response: Response) -> Response {
    let html =
        response.headers().get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|t| t.starts_with("text/html"));
    if response.status().as_u16() < 400 || html {
        return response;
    }
    let (parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, 64 * 1024).await.unwrap_or_default();
    let message = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| v["msg"].as_str().map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(&bytes).chars().take(500).collect());
    let user = match parts.extensions.get::<AuthRecord>() {
        Some(AuthRecord::Principal(p)) => p.name.clone(),
        _ => String::new(),
    };
    let title = parts.status.canonical_reason().unwrap_or("Error");
    let rendered = page(parts.status, &ErrorPage { nav: Nav { user, admin: false }, title, message: &message });
    let (rendered, body) = rendered.into_parts();
    let mut parts = parts;
    for name in [CONTENT_TYPE, CONTENT_SECURITY_POLICY] {
        if let Some(value) = rendered.headers.get(&name) {
            parts.headers.insert(name, value.clone());
        }
    }
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    Response::from_parts(parts, body)
}

/// What the header of every page shows: who is logged in, and whether they administer.
#[derive(Debug, Default)]
struct Nav {
    user: String,
    admin: bool,
}

impl Nav {
    fn of(state: &AppState, caller: &Caller) -> Self {
        Self { user: caller.real.name.clone(), admin: state.acl.check(&caller.acting, Action::Admin, None).allowed }
    }
}

#[derive(Template)]
#[template(path = "ui/login.html")]
struct LoginPage<'a> {
    nav: Nav,
    message: &'a str,
    password_login: bool,
    next: &'a str,
    user_tried: &'a str,
}

#[derive(Debug, Default, Deserialize)]
struct NextQuery {
    next: Option<String>,
}

/// Where to go after logging in: a page of the UI, never another site.
fn safe_next(next: Option<&str>) -> &str {
    match next {
        Some(n) if n.starts_with("/ui/") && !n.starts_with("/ui//") && !n.contains(['\\', '\r', '\n']) => n,
        _ => "/ui/sessions",
    }
}

async fn login_form(State(state): State<LoginState>, Query(query): Query<NextQuery>) -> Response {
    let next = safe_next(query.next.as_deref());
    let login =
        LoginPage { nav: Nav::default(), message: "", password_login: state.ldap.is_some(), next, user_tried: "" };
    page(StatusCode::OK, &login)
}

#[derive(Deserialize)]
struct LoginForm {
    user: String,
    password: Secret<String>,
    next: Option<String>,
}

/// Whether a form post comes from the UI's own pages (login CSRF: another site must not log a
/// browser in as someone else, or out). Browsers send `Sec-Fetch-Site` or `Origin` on posts.
/// The host is the `Host` header (HTTP/1.1) or the request's authority (HTTP/2).
fn same_origin(headers: &HeaderMap, uri: &Uri) -> bool {
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        return matches!(site, "same-origin" | "none");
    }
    let host = headers.get(HOST).and_then(|v| v.to_str().ok()).or_else(|| uri.authority().map(|a| a.as_str()));
    match (headers.get(ORIGIN).and_then(|v| v.to_str().ok()), host) {
        (Some(origin), Some(host)) => origin == format!("https://{host}"),
        (Some(_), None) => false,
        (None, _) => true,
    }
}

async fn login(State(state): State<LoginState>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    if !same_origin(&parts.headers, &parts.uri) {
        let refused = ApiError::Forbidden("a login must be posted from this gateway's own login page".into());
        return error_page(Nav::default(), refused);
    }
    let Ok(Form(form)) = Form::<LoginForm>::from_request(Request::from_parts(parts.clone(), body), &()).await else {
        return error_page(
            Nav::default(),
            ApiError::bad_request("the login form needs the fields `user` and `password`"),
        );
    };
    let next = safe_next(form.next.as_deref()).to_string();
    let render = |status: StatusCode, message: &str, user_tried: &str| {
        let login =
            LoginPage { nav: Nav::default(), message, password_login: state.ldap.is_some(), next: &next, user_tried };
        page(status, &login)
    };
    let Some(ldap) = &state.ldap else {
        return render(StatusCode::NOT_FOUND, "Password login is not configured on this gateway.", "");
    };
    let peer = parts.extensions.get::<ConnInfo>().map(|c| AddrKey::of(c.peer.ip()));
    // The same outcomes as HTTP Basic, recorded by the audit layer the same way.
    let (mut response, record) = match ldap.login(form.user.clone(), form.password, peer).await {
        AuthOutcome::Authenticated { principal, response_headers } => {
            let mut response = see_other(&next);
            for (name, value) in response_headers {
                response.headers_mut().append(name, value);
            }
            (response, AuthRecord::Principal(principal))
        }
        AuthOutcome::LoginFailed { user, reason } => (
            render(StatusCode::UNAUTHORIZED, "Wrong user name or password.", &user),
            AuthRecord::LoginFailed { user, reason },
        ),
        AuthOutcome::Failed(ApiError::TooManyRequests { msg, retry_after }) => {
            let mut response = render(StatusCode::TOO_MANY_REQUESTS, "Too many failed logins; try again later.", "");
            if let Ok(value) = HeaderValue::from_str(&retry_after.to_string()) {
                response.headers_mut().insert(axum::http::header::RETRY_AFTER, value);
            }
            (response, AuthRecord::Refused(msg))
        }
        AuthOutcome::Failed(error) => {
            let message = error.to_string();
            (render(error.status(), &message, ""), AuthRecord::Refused(message.clone()))
        }
        AuthOutcome::Rejected(reason) => {
            (render(StatusCode::UNAUTHORIZED, "Wrong user name or password.", ""), AuthRecord::Refused(reason))
        }
        AuthOutcome::NotApplicable | AuthOutcome::Continue(_) | AuthOutcome::Pending(_) => {
            let error = ApiError::Internal("the LDAP login gave no answer".into());
            (error.into_response(), AuthRecord::Refused("no answer".into()))
        }
    };
    response.extensions_mut().insert(record);
    response
}

async fn logout(headers: HeaderMap, uri: Uri) -> Response {
    if !same_origin(&headers, &uri) {
        return error_page(
            Nav::default(),
            ApiError::Forbidden("a logout must be posted from this gateway's own pages".into()),
        );
    }
    let mut response = see_other("/ui/login");
    let expired = format!("{COOKIE_NAME}=; Path=/; HttpOnly; Secure; SameSite=Strict; Max-Age=0");
    if let Ok(value) = HeaderValue::from_str(&expired) {
        response.headers_mut().insert(SET_COOKIE, value);
    }
    response
}

async fn asset(Path(file): Path<String>) -> Response {
    let (body, content_type) = match file.as_str() {
        "ui.css" => (include_str!("assets/ui.css"), "text/css; charset=utf-8"),
        "ui.js" => (include_str!("assets/ui.js"), "text/javascript; charset=utf-8"),
        _ => return ApiError::NotFound("no such file".into()).into_response(),
    };
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("private, max-age=300"));
    response
}

#[derive(Template)]
#[template(path = "ui/sessions.html")]
struct SessionsPage {
    nav: Nav,
    path: &'static str,
    states: Vec<&'static str>,
    list: Listing<SessionRow>,
}

#[derive(Debug, Default, Deserialize)]
struct ListQuery {
    state: Option<String>,
    owner: Option<String>,
    from: Option<usize>,
}

/// One page of a list: filtered by state and owner, only what the caller may view, newest
/// first, with links to the pages around it.
struct Listing<R> {
    state: String,
    owner: String,
    rows: Vec<R>,
    total: usize,
    from: usize,
    prev: Option<String>,
    next: Option<String>,
}

/// What a list filters and sorts on.
trait Listed: crate::api::Owned {
    fn id(&self) -> u32;
    fn current_state(&self) -> SessionState;
}

impl Listed for crate::engine::Session {
    fn id(&self) -> u32 {
        self.id
    }
    fn current_state(&self) -> SessionState {
        self.state()
    }
}

impl Listed for crate::engine::batch::Batch {
    fn id(&self) -> u32 {
        self.id
    }
    fn current_state(&self) -> SessionState {
        self.state()
    }
}

fn listing<T: Listed, R>(
    state: &AppState,
    caller: &Caller,
    query: ListQuery,
    path: &str,
    all: Vec<std::sync::Arc<T>>,
    row: impl Fn(&T) -> R,
) -> Listing<R> {
    let wanted = query.state.filter(|s| SessionState::ALL.iter().any(|k| k.as_str() == s)).unwrap_or_default();
    let owner = query.owner.unwrap_or_default();
    let mut visible: Vec<_> = all
        .into_iter()
        .filter(|x| state.allowed(caller, Action::View, x.as_ref()))
        .filter(|x| wanted.is_empty() || x.current_state().as_str() == wanted)
        .filter(|x| owner.is_empty() || x.ownership().owner == owner)
        .collect();
    // Newest first: what a user just started is at the top.
    visible.sort_by_key(|x| std::cmp::Reverse(x.id()));
    let total = visible.len();
    let from = query.from.unwrap_or(0).min(total);
    let rows = visible[from..(from + PAGE).min(total)].iter().map(|x| row(x)).collect();
    let link = |from: usize| list_link(path, &wanted, &owner, from);
    let prev = (from > 0).then(|| link(from.saturating_sub(PAGE)));
    let next = (from + PAGE < total).then(|| link(from + PAGE));
    Listing { state: wanted, owner, rows, total, from, prev, next }
}

async fn sessions(State(state): State<AppState>, caller: Caller, Query(query): Query<ListQuery>) -> Response {
    let list = listing(&state, &caller, query, "/ui/sessions", state.manager.list(), SessionRow::of);
    let states = SessionState::ALL.iter().map(|s| s.as_str()).collect();
    page(StatusCode::OK, &SessionsPage { nav: Nav::of(&state, &caller), path: "/ui/sessions", states, list })
}

#[derive(Template)]
#[template(path = "ui/session.html")]
struct SessionPage {
    nav: Nav,
    s: SessionRow,
    may_modify: bool,
    code_kinds: Vec<&'static str>,
    default_kind: &'static str,
    statements: Vec<StatementView>,
    log: Vec<String>,
}

#[derive(Template)]
#[template(path = "ui/error.html")]
struct ErrorPage<'a> {
    nav: Nav,
    title: &'a str,
    message: &'a str,
}

/// An error as a page, with the status and message the API would give (an internal error's
/// cause stays in the log), and what the API's answer tells the audit layer (a hidden
/// session's real reason).
fn error_page(nav: Nav, error: ApiError) -> Response {
    let status = error.status();
    let title = status.canonical_reason().unwrap_or("Error");
    let message = match &error {
        ApiError::Internal(_) => "internal error; see the gateway log".to_string(),
        other => other.to_string(),
    };
    let mut api = error.into_response();
    let mut response = page(status, &ErrorPage { nav, title, message: &message });
    *response.extensions_mut() = std::mem::take(api.extensions_mut());
    response
}

async fn session(State(state): State<AppState>, caller: Caller, Path(id): Path<String>) -> Response {
    match session_page(&state, &caller, &id) {
        Ok(response) => response,
        Err(error) => error_page(Nav::of(&state, &caller), error),
    }
}

fn session_page(state: &AppState, caller: &Caller, id: &str) -> Result<Response, ApiError> {
    // The API's rule: a session the caller may not view is a 404 like a missing one.
    let session = state.session_for(caller, id, Action::View)?;
    let kind = session.spec().kind;
    let detail = SessionPage {
        nav: Nav::of(state, caller),
        s: SessionRow::of(&session),
        may_modify: state.allowed(caller, Action::Modify, session.as_ref()),
        code_kinds: CODE_KINDS.iter().map(|k| k.as_str()).collect(),
        default_kind: kind.resolve_statement(None).unwrap_or(CodeKind::PySpark).as_str(),
        statements: session.statements().iter().map(StatementView::of).collect(),
        log: session.log.tail(LOG_LINES).iter().map(|l| view::shown(l)).collect(),
    };
    Ok(page(StatusCode::OK, &detail))
}

#[cfg(test)]
mod tests;

#[derive(Template)]
#[template(path = "ui/batches.html")]
struct BatchesPage {
    nav: Nav,
    path: &'static str,
    states: Vec<&'static str>,
    list: Listing<BatchRow>,
}

async fn batches(State(state): State<AppState>, caller: Caller, Query(query): Query<ListQuery>) -> Response {
    let list = listing(&state, &caller, query, "/ui/batches", state.batches.list(), BatchRow::of);
    let states = SessionState::ALL.iter().map(|s| s.as_str()).collect();
    page(StatusCode::OK, &BatchesPage { nav: Nav::of(&state, &caller), path: "/ui/batches", states, list })
}

/// A list page's link with its filters.
fn list_link(path: &str, state: &str, owner: &str, from: usize) -> String {
    let mut q = form_urlencoded::Serializer::new(String::new());
    if !state.is_empty() {
        q.append_pair("state", state);
    }
    if !owner.is_empty() {
        q.append_pair("owner", owner);
    }
    q.append_pair("from", &from.to_string());
    format!("{path}?{}", q.finish())
}

#[derive(Template)]
#[template(path = "ui/batch.html")]
struct BatchPage {
    nav: Nav,
    b: BatchRow,
    command: String,
    may_modify: bool,
    /// Still starting or running (the button kills it; afterwards it deletes the record).
    active: bool,
    lines: Vec<String>,
    from: usize,
    total: usize,
    /// Whether the page shows the end of the log (the script then follows it).
    tail: bool,
    prev: Option<String>,
    next: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct LogQuery {
    from: Option<usize>,
}

async fn batch(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(query): Query<LogQuery>,
) -> Response {
    let batch = match state.batch_for(&caller, &id, Action::View) {
        Ok(batch) => batch,
        Err(error) => return error_page(Nav::of(&state, &caller), error),
    };
    // The log's lines `from..from + LOG_LINES`, the last ones by default; read off the async
    // workers (the whole file is counted).
    let reader = batch.clone();
    let window = tokio::task::spawn_blocking(move || {
        reader.log_window(|total| {
            let from = query.from.unwrap_or(total.saturating_sub(LOG_LINES)).min(total);
            from..(from + LOG_LINES).min(total)
        })
    })
    .await;
    let window = match window {
        Ok(window) => window,
        Err(e) => {
            return error_page(Nav::of(&state, &caller), ApiError::Internal(format!("reading a batch log failed: {e}")))
        }
    };
    let spark = &state.config.config.spark;
    let end = window.from + window.lines.len();
    let link = |from: usize| format!("/ui/batches/{}?from={from}", batch.id);
    let detail = BatchPage {
        nav: Nav::of(&state, &caller),
        b: BatchRow::of(&batch),
        command: view::submit_command(&batch.spec, &spark.master, &spark.deploy_mode),
        may_modify: state.allowed(&caller, Action::Modify, batch.as_ref()),
        active: !batch.state().is_terminal(),
        prev: (window.from > 0).then(|| link(window.from.saturating_sub(LOG_LINES))),
        next: (end < window.total).then(|| link(end)),
        tail: end >= window.total,
        from: window.from,
        total: window.total,
        lines: window.lines.iter().map(|l| view::shown(l)).collect(),
    };
    page(StatusCode::OK, &detail)
}
