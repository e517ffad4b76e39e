use super::writer::render;
use super::*;
use crate::audit_slots::{Annotation, AuthRecord, AuthSlot};
use crate::identity::{AuthMethod, ConnInfo, Principal};
use axum::body::Body;
use axum::extract::Path as UrlPath;
use axum::http::{Request, StatusCode};
use axum::middleware::{from_fn, from_fn_with_state, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tempfile::TempDir;
use tower::ServiceExt;

// ---------------------------------------------------------------------------------------------
// helpers

fn audit_path(dir: &TempDir) -> PathBuf {
    dir.path().join("audit").join("audit.log")
}

/// Alternates allow and deny so that tamper tests have a "deny" to turn into "allow".
fn event(i: u64) -> AuditEvent {
    let decision = if i % 2 == 0 { Decision::Allow } else { Decision::Deny };
    AuditEvent::security("impersonation_granted", decision)
        .principal_name("alice")
        .effective_user("bob")
        .resource(format!("session:{i}"))
}

fn write_events(log: &AuditLog, range: std::ops::Range<u64>) {
    for i in range {
        log.record(event(i));
    }
    log.flush().unwrap();
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path).unwrap().lines().map(str::to_string).collect()
}

fn write_lines(path: &Path, lines: &[String]) {
    let mut text = lines.join("\n");
    text.push('\n');
    std::fs::write(path, text).unwrap();
}

fn json(line: &str) -> serde_json::Value {
    serde_json::from_str(line).unwrap()
}

/// One file of ten records (seq 0..=9).
fn ten_records() -> (TempDir, PathBuf) {
    let dir = TempDir::new().unwrap();
    let path = audit_path(&dir);
    let log = AuditLog::open(&path, 1 << 20).unwrap();
    write_events(&log, 0..10);
    drop(log);
    (dir, path)
}

/// Ten records in one file, edited by `tamper`, then verified.
fn tampered(tamper: impl FnOnce(&mut Vec<String>)) -> (PathBuf, VerifyReport) {
    let (_dir, path) = ten_records();
    let mut all = lines(&path);
    tamper(&mut all);
    write_lines(&path, &all);
    let report = verify_files(std::slice::from_ref(&path)).unwrap();
    (path, report)
}

fn problem(report: &VerifyReport) -> &Problem {
    report.problem.as_ref().unwrap_or_else(|| panic!("expected a problem, got: {report}"))
}

/// Thirty records over several rotated files.
fn rotated_chain() -> (TempDir, PathBuf, Vec<PathBuf>) {
    let dir = TempDir::new().unwrap();
    let path = audit_path(&dir);
    let log = AuditLog::open(&path, 700).unwrap();
    write_events(&log, 0..30);
    drop(log);
    let files = chain_files(&path).unwrap();
    (dir, path, files)
}

// ---------------------------------------------------------------------------------------------
// the event type and the line format

#[test]
fn decisions_follow_the_status_and_parse_only_known_names() {
    assert_eq!(Decision::for_status(200), Decision::Allow);
    assert_eq!(Decision::for_status(302), Decision::Allow);
    assert_eq!(Decision::for_status(401), Decision::Deny);
    assert_eq!(Decision::for_status(403), Decision::Deny);
    assert_eq!(Decision::for_status(404), Decision::Error);
    assert_eq!(Decision::for_status(500), Decision::Error);
    assert_eq!("deny".parse::<Decision>(), Ok(Decision::Deny));
    assert!("DENY".parse::<Decision>().is_err());
    assert!("".parse::<Decision>().is_err());
}

#[test]
fn long_fields_are_clipped_on_a_character_boundary() {
    let event = AuditEvent::request("é".repeat(5000), Decision::Allow).reason("x".repeat(10));
    let action = event.action.clone();
    assert!(action.len() <= MAX_FIELD_BYTES, "{}", action.len());
    assert!(action.ends_with('…'));
    assert_eq!(event.reason.as_deref(), Some("xxxxxxxxxx"));
}

#[test]
fn line_format_is_seq_time_prev_fields_hash_and_hash_covers_the_text_before_it() {
    let dir = TempDir::new().unwrap();
    let path = audit_path(&dir);
    let log = AuditLog::open(&path, 1 << 20).unwrap();
    let principal = Principal { name: "alice".into(), groups: vec![], method: AuthMethod::Jwt };
    log.record(
        AuditEvent::request("POST /sessions", Decision::Allow)
            .request_id("req-1")
            .remote_addr("10.0.0.1:4242".parse().unwrap())
            .principal(&principal)
            .effective_user("bob")
            .resource("session:3")
            .reason("rule 2")
            .status(201)
            .latency_ms(12),
    );
    log.record(AuditEvent::security("policy_reloaded", Decision::Info));
    log.flush().unwrap();
    let all = lines(&path);
    assert_eq!(all.len(), 2);

    let first = json(&all[0]);
    let keys: Vec<&str> = first.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "seq",
            "time",
            "prev",
            "kind",
            "request_id",
            "remote_addr",
            "principal",
            "auth_method",
            "effective_user",
            "action",
            "resource",
            "decision",
            "reason",
            "status",
            "latency_ms",
            "hash"
        ]
    );
    assert_eq!(first["seq"], 0);
    assert_eq!(first["prev"], GENESIS_PREV);
    assert_eq!(first["kind"], "request");
    assert_eq!(first["auth_method"], "jwt");
    assert_eq!(first["decision"], "allow");
    assert_eq!(first["status"], 201);
    let time = first["time"].as_str().unwrap();
    assert_eq!(time.len(), "2025-01-31T12:00:00.123Z".len(), "{time}");
    assert!(time.ends_with('Z') && &time[10..11] == "T" && &time[19..20] == ".", "{time}");

    // The definition: sha256 of the line's text up to (excluding) `,"hash":`.
    let (body, _) = all[0].split_once(",\"hash\":").unwrap();
    assert_eq!(first["hash"], sha256_hex(body));

    // Absent optional fields are omitted; the chain links.
    let second = json(&all[1]);
    assert_eq!(second["seq"], 1);
    assert_eq!(second["prev"], first["hash"]);
    assert_eq!(second["kind"], "security");
    assert_eq!(second["decision"], "info");
    assert!(second.get("principal").is_none() && second.get("status").is_none());
}

#[test]
fn directory_is_0700_and_files_are_0600_even_after_rotation() {
    let (dir, path, files) = rotated_chain();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(path.parent().unwrap()), 0o700);
    assert!(files.len() > 1);
    for file in &files {
        assert_eq!(mode(file), 0o600, "{}", file.display());
    }
    drop(dir);
}

// ---------------------------------------------------------------------------------------------
// rotation and resume

#[test]
fn a_chain_across_several_rotations_verifies() {
    let (_dir, path, files) = rotated_chain();
    assert!(files.len() >= 4, "{files:?}");
    assert_eq!(files.last(), Some(&path));
    for (index, file) in files.iter().enumerate() {
        assert!(std::fs::metadata(file).unwrap().len() <= 700, "{}", file.display());
        let first_seq = json(&lines(file)[0])["seq"].as_u64().unwrap();
        if index + 1 < files.len() {
            // Rotated files are named after their first record, zero padded to sort as text.
            let name = file.file_name().unwrap().to_str().unwrap();
            assert_eq!(name, format!("audit.log.{first_seq:020}"));
        }
    }
    let report = verify_files(&files).unwrap();
    assert!(report.is_intact(), "{report}");
    assert_eq!((report.records, report.first_seq, report.last_seq), (30, Some(0), Some(29)));
    assert!(!report.starts_mid_chain);
    assert!(report.to_string().starts_with("OK: audit chain intact: 30 record(s), seq 0 to 29"), "{report}");
}

#[test]
fn reopening_continues_the_chain() {
    let dir = TempDir::new().unwrap();
    let path = audit_path(&dir);
    let log = AuditLog::open(&path, 1 << 20).unwrap();
    write_events(&log, 0..3);
    drop(log);
    let log = AuditLog::open(&path, 1 << 20).unwrap();
    write_events(&log, 3..5);
    drop(log);

    let all = lines(&path);
    assert_eq!(all.len(), 5);
    assert_eq!(json(&all[3])["seq"], 3);
    assert_eq!(json(&all[3])["prev"], json(&all[2])["hash"]);
    let report = verify_files(&[path]).unwrap();
    assert!(report.is_intact() && report.records == 5, "{report}");
}

#[test]
fn reopening_after_rotations_continues_the_chain_and_the_file_naming() {
    let dir = TempDir::new().unwrap();
    let path = audit_path(&dir);
    for round in 0..3 {
        let log = AuditLog::open(&path, 700).unwrap();
        write_events(&log, round * 10..round * 10 + 10);
    }
    let files = chain_files(&path).unwrap();
    let report = verify_files(&files).unwrap();
    assert!(report.is_intact() && report.records == 30, "{report}");
}

#[test]
fn an_empty_current_file_continues_from_the_newest_rotated_file() {
    // The state right after a rotation, before the next record: audit.log is new and empty.
    let (_dir, path) = ten_records();
    let rotated = path.with_file_name(format!("audit.log.{:020}", 0));
    std::fs::rename(&path, &rotated).unwrap();
    std::fs::write(&path, "").unwrap();

    let log = AuditLog::open(&path, 1 << 20).unwrap();
    write_events(&log, 10..12);
    drop(log);
    assert_eq!(json(&lines(&path)[0])["seq"], 10);
    let files = chain_files(&path).unwrap();
    assert_eq!(files, [rotated, path]);
    let report = verify_files(&files).unwrap();
    assert!(report.is_intact() && report.records == 12, "{report}");
}

#[test]
fn a_rotation_interrupted_after_linking_is_completed_later() {
    // A crash between the two steps of a rotation leaves audit.log and audit.log.<seq> as
    // two names of one file.
    let (_dir, path) = ten_records();
    let rotated = path.with_file_name(format!("audit.log.{:020}", 0));
    std::fs::hard_link(&path, &rotated).unwrap();
    assert_eq!(chain_files(&path).unwrap(), std::slice::from_ref(&rotated), "one file, listed once");

    let log = AuditLog::open(&path, std::fs::metadata(&path).unwrap().len()).unwrap();
    write_events(&log, 10..12);
    drop(log);
    let files = chain_files(&path).unwrap();
    assert_eq!(files, [rotated, path.clone()]);
    assert_eq!(json(&lines(&path)[0])["seq"], 10);
    let report = verify_files(&files).unwrap();
    assert!(report.is_intact() && report.records == 12, "{report}");
}

#[test]
fn reopening_refuses_to_continue_after_a_damaged_last_record() {
    let (_dir, path) = ten_records();
    let intact = lines(&path);

    // An unterminated last line (an interrupted write, or a cut).
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str(&intact[9][..40]);
    std::fs::write(&path, &text).unwrap();
    let err = AuditLog::open(&path, 1 << 20).unwrap_err();
    assert!(matches!(err, AuditError::Damaged { .. }), "{err}");

    // An edited last record.
    let mut edited = intact.clone();
    edited[9] = edited[9].replace("\"deny\"", "\"allow\"");
    write_lines(&path, &edited);
    let err = AuditLog::open(&path, 1 << 20).unwrap_err();
    assert!(err.to_string().contains("last record is altered"), "{err}");

    // The intact file opens again.
    write_lines(&path, &intact);
    assert!(AuditLog::open(&path, 1 << 20).is_ok());
}

#[test]
fn lost_events_are_written_into_the_chain() {
    let dir = TempDir::new().unwrap();
    let path = audit_path(&dir);
    let log = AuditLog::open(&path, 1 << 20).unwrap();
    log.simulate_losses(3);
    write_events(&log, 0..1);
    assert_eq!(log.lost_events(), 3);
    drop(log);
    let all = lines(&path);
    assert_eq!(all.len(), 2);
    let notice = json(&all[0]);
    assert_eq!(notice["action"], "audit_records_lost");
    assert_eq!(notice["decision"], "error");
    assert!(notice["reason"].as_str().unwrap().starts_with("3 audit event(s)"));
    assert!(verify_files(&[path]).unwrap().is_intact());
}

// ---------------------------------------------------------------------------------------------
// tamper detection, one file

#[test]
fn an_untouched_file_verifies() {
    let (_dir, path) = ten_records();
    let report = verify_files(&[path]).unwrap();
    assert!(report.is_intact(), "{report}");
    assert_eq!((report.records, report.last_seq), (10, Some(9)));
}

#[test]
fn a_deleted_line_is_missing_at_the_next_record() {
    let (path, report) = tampered(|lines| {
        lines.remove(4);
    });
    let p = problem(&report);
    assert_eq!((p.kind, p.file.as_path(), p.line, p.seq), (ProblemKind::Missing, path.as_path(), 5, Some(5)));
    assert!(p.detail.contains("seq 4 is missing"), "{}", p.detail);
    assert_eq!(report.records, 4);
}

#[test]
fn an_edited_field_is_altered_at_its_line() {
    let (_, report) = tampered(|lines| {
        assert!(lines[7].contains("\"decision\":\"deny\""));
        lines[7] = lines[7].replace("\"decision\":\"deny\"", "\"decision\":\"allow\"");
    });
    let p = problem(&report);
    assert_eq!((p.kind, p.line, p.seq), (ProblemKind::Altered, 8, Some(7)));
    assert_eq!(report.records, 7);
    let text = report.to_string();
    assert!(text.starts_with("FAILED: altered at ") && text.contains("line 8 (seq 7)"), "{text}");
}

#[test]
fn a_reformatted_line_is_altered() {
    let (_, report) = tampered(|lines| lines[2] = lines[2].replace(",\"hash\":\"", ", \"hash\": \""));
    let p = problem(&report);
    assert_eq!((p.kind, p.line, p.seq), (ProblemKind::Altered, 3, Some(2)));
}

#[test]
fn two_swapped_lines_are_reordered_at_the_first_of_them() {
    let (_, report) = tampered(|lines| lines.swap(3, 4));
    let p = problem(&report);
    assert_eq!((p.kind, p.line, p.seq), (ProblemKind::Reordered, 4, Some(4)));
}

#[test]
fn a_truncated_line_is_broken() {
    let (_, report) = tampered(|lines| lines[5].truncate(60));
    let p = problem(&report);
    assert_eq!((p.kind, p.line, p.seq), (ProblemKind::Broken, 6, None));
}

#[test]
fn a_garbage_line_is_broken() {
    let (_, report) = tampered(|lines| lines.insert(2, "Authorization: Bearer xyz".into()));
    let p = problem(&report);
    assert_eq!((p.kind, p.line), (ProblemKind::Broken, 3));
    assert!(!p.detail.contains("Bearer"), "the report does not echo the line: {}", p.detail);
}

#[test]
fn a_repeated_line_is_duplicated() {
    let (_, report) = tampered(|lines| {
        let copy = lines[6].clone();
        lines.insert(7, copy);
    });
    let p = problem(&report);
    assert_eq!((p.kind, p.line, p.seq), (ProblemKind::Duplicated, 8, Some(6)));
}

#[test]
fn a_rehashed_replacement_is_caught_by_the_next_records_prev() {
    // Someone rewrites record 5 and recomputes its hash: record 6's prev no longer matches.
    let (_, report) = tampered(|lines| {
        let old = json(&lines[5]);
        let event = AuditEvent::security("impersonation_granted", Decision::Allow).resource("session:5");
        let (line, _) = render(5, old["time"].as_str().unwrap(), old["prev"].as_str().unwrap(), &event).unwrap();
        lines[5] = line.trim_end().to_string();
    });
    let p = problem(&report);
    assert_eq!((p.kind, p.line, p.seq), (ProblemKind::Missing, 7, Some(6)));
    assert!(p.detail.contains("prev is not the hash of seq 5"), "{}", p.detail);
}

#[test]
fn cutting_the_newest_records_shows_only_in_the_last_hash() {
    let (_dir, path) = ten_records();
    let full = verify_files(std::slice::from_ref(&path)).unwrap();
    let mut all = lines(&path);
    all.truncate(8);
    write_lines(&path, &all);
    let cut = verify_files(&[path]).unwrap();
    // The documented limit of an unkeyed chain: still intact, but the last hash differs from a
    // copy kept elsewhere.
    assert!(cut.is_intact());
    assert_ne!(cut.last_hash, full.last_hash);
}

// ---------------------------------------------------------------------------------------------
// tamper detection, several files

#[test]
fn a_deleted_middle_file_is_missing_at_the_start_of_the_next_one() {
    let (_dir, _path, mut files) = rotated_chain();
    let removed = files.remove(1);
    let removed_last = json(lines(&removed).last().unwrap())["seq"].as_u64().unwrap();
    let report = verify_files(&files).unwrap();
    let p = problem(&report);
    assert_eq!((p.kind, &p.file, p.line, p.seq), (ProblemKind::Missing, &files[1], 1, Some(removed_last + 1)));
}

#[test]
fn a_chain_whose_oldest_files_were_deleted_starts_mid_chain() {
    let (_dir, _path, files) = rotated_chain();
    let report = verify_files(&files[2..]).unwrap();
    assert!(report.is_intact(), "{report}");
    assert!(report.starts_mid_chain);
    assert_ne!(report.first_seq, Some(0));
    assert!(report.to_string().contains("starts mid-way"), "{report}");
}

#[test]
fn files_given_in_the_wrong_order_are_reordered() {
    let (_dir, _path, mut files) = rotated_chain();
    files.swap(0, 1);
    let report = verify_files(&files).unwrap();
    let p = problem(&report);
    assert_eq!((p.kind, &p.file, p.line, p.seq), (ProblemKind::Reordered, &files[1], 1, Some(0)));
}

#[test]
fn an_unreadable_file_is_an_error_not_a_report() {
    let dir = TempDir::new().unwrap();
    assert!(matches!(verify_files(&[dir.path().join("nope")]), Err(AuditError::Io { .. })));
}

// ---------------------------------------------------------------------------------------------
// the middleware

const TOKEN: &str = "s3cr3t-t0ken";

fn alice() -> Principal {
    Principal { name: "alice".into(), groups: vec![], method: AuthMethod::Jwt }
}

/// Stands in for the auth layer: it records what the real one records.
async fn fake_auth(request: axum::extract::Request, next: Next) -> Response {
    let good = format!("Bearer {TOKEN}");
    if request.headers().get("authorization").is_some_and(|v| v.as_bytes() == good.as_bytes()) {
        let record = AuthRecord::Principal(alice());
        AuthSlot::fill(request.extensions(), &record);
        let mut response = next.run(request).await;
        response.extensions_mut().insert(record);
        response
    } else {
        let record = AuthRecord::Refused("invalid bearer token".into());
        AuthSlot::fill(request.extensions(), &record);
        let mut response = StatusCode::UNAUTHORIZED.into_response();
        response.extensions_mut().insert(record);
        response
    }
}

async fn create(UrlPath(id): UrlPath<u32>, _body: String) -> impl IntoResponse {
    let note = Annotation {
        resource: Some(format!("session:{id}")),
        effective_user: Some("bob".into()),
        ..Annotation::default()
    };
    (StatusCode::CREATED, Extension(note), "created")
}

async fn forbidden() -> impl IntoResponse {
    let note = Annotation {
        action: Some("impersonation_denied".into()),
        reason: Some("no proxyuser rule lets alice act as root".into()),
        ..Annotation::default()
    };
    (StatusCode::FORBIDDEN, Extension(note))
}

async fn odd() -> impl IntoResponse {
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        Extension(Annotation { decision: Some("maybe".into()), ..Annotation::default() }),
    )
}

async fn slow() -> &'static str {
    tokio::time::sleep(Duration::from_secs(3600)).await;
    "late"
}

fn routes() -> Router {
    Router::new()
        .route("/sessions/{id}", post(create))
        .route("/forbidden", get(forbidden))
        .route("/odd", get(odd))
        .route("/slow", get(slow))
        .route_layer(from_fn(fake_auth))
}

/// The middleware inside the router (per route, `MatchedPath` in the request).
fn app_inside(log: &Arc<AuditLog>) -> Router {
    routes().layer(from_fn_with_state(log.clone(), audit_requests))
}

/// The middleware outside the router, as in the gateway's stack: unknown paths are recorded
/// too, and `expose_matched_path` carries the route pattern out.
fn app_outside(log: &Arc<AuditLog>) -> Router {
    Router::new()
        .fallback_service(routes().layer(from_fn(expose_matched_path)))
        .layer(from_fn_with_state(log.clone(), audit_requests))
}

fn request(method: &str, uri: &str, token: Option<&str>) -> Request<Body> {
    let mut builder = Request::builder()
        .method(method)
        .uri(uri)
        .header("x-request-id", "req-1")
        .header("cookie", format!("livy-session={TOKEN}"))
        .header("x-api-key", TOKEN)
        .extension(ConnInfo::new("127.0.0.1:5555".parse().unwrap(), None));
    if let Some(token) = token {
        builder = builder.header("authorization", format!("Bearer {token}"));
    }
    builder.body(Body::from(format!("{{\"secret\":\"{TOKEN}\"}}"))).unwrap()
}

/// Sends one request and returns its status and the one audit record it produced.
async fn audited(app: Router, log: &AuditLog, path: &Path, req: Request<Body>) -> (StatusCode, serde_json::Value) {
    let status = app.oneshot(req).await.unwrap().status();
    log.flush().unwrap();
    let text = std::fs::read_to_string(path).unwrap();
    assert!(!text.contains(TOKEN), "a credential reached the audit trail: {text}");
    let all: Vec<&str> = text.lines().collect();
    assert_eq!(all.len(), 1, "{text}");
    (status, json(all[0]))
}

#[tokio::test]
async fn an_allowed_request_is_recorded_with_typed_facts_and_no_credential() {
    let dir = TempDir::new().unwrap();
    let path = audit_path(&dir);
    let log = AuditLog::open(&path, 1 << 20).unwrap();
    let req = request("POST", &format!("/sessions/3?doAs=bob&token={TOKEN}"), Some(TOKEN));
    let (status, record) = audited(app_inside(&log), &log, &path, req).await;

    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(record["kind"], "request");
    assert_eq!(record["action"], "POST /sessions/{id}");
    assert_eq!(record["request_id"], "req-1");
    assert_eq!(record["remote_addr"], "127.0.0.1:5555");
    assert_eq!(record["principal"], "alice");
    assert_eq!(record["auth_method"], "jwt");
    assert_eq!(record["effective_user"], "bob");
    assert_eq!(record["resource"], "session:3");
    assert_eq!(record["decision"], "allow");
    assert_eq!(record["status"], 201);
    assert!(record["latency_ms"].is_u64());
    assert!(record.get("reason").is_none());
}

#[tokio::test]
async fn a_refused_request_is_recorded_as_deny_with_the_reason_and_no_credential() {
    let dir = TempDir::new().unwrap();
    let path = audit_path(&dir);
    let log = AuditLog::open(&path, 1 << 20).unwrap();
    let wrong = format!("{TOKEN}-wrong");
    let req = request("POST", "/sessions/3", Some(&wrong));
    let (status, record) = audited(app_inside(&log), &log, &path, req).await;

    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(record["decision"], "deny");
    assert_eq!(record["reason"], "invalid bearer token");
    assert_eq!(record["status"], 401);
    assert!(record.get("principal").is_none());
}

#[tokio::test]
async fn a_handler_annotation_overrides_action_and_reason() {
    let dir = TempDir::new().unwrap();
    let path = audit_path(&dir);
    let log = AuditLog::open(&path, 1 << 20).unwrap();
    let (status, record) = audited(app_inside(&log), &log, &path, request("GET", "/forbidden", Some(TOKEN))).await;

    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(record["action"], "impersonation_denied");
    assert_eq!(record["decision"], "deny");
    assert_eq!(record["reason"], "no proxyuser rule lets alice act as root");
    assert_eq!(record["principal"], "alice");
}

#[tokio::test]
async fn an_invalid_annotated_decision_is_ignored_and_a_500_is_an_error() {
    let dir = TempDir::new().unwrap();
    let path = audit_path(&dir);
    let log = AuditLog::open(&path, 1 << 20).unwrap();
    let (status, record) = audited(app_inside(&log), &log, &path, request("GET", "/odd", Some(TOKEN))).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(record["decision"], "error");
}

#[tokio::test]
async fn outside_the_router_the_route_pattern_comes_from_the_router() {
    let dir = TempDir::new().unwrap();
    let path = audit_path(&dir);
    let log = AuditLog::open(&path, 1 << 20).unwrap();
    let (_, record) = audited(app_outside(&log), &log, &path, request("POST", "/sessions/7", Some(TOKEN))).await;
    assert_eq!(record["action"], "POST /sessions/{id}");
    assert_eq!(record["resource"], "session:7");
}

#[tokio::test]
async fn a_panicking_handler_is_recorded_with_its_route() {
    let dir = TempDir::new().unwrap();
    let path = audit_path(&dir);
    let log = AuditLog::open(&path, 1 << 20).unwrap();
    // As in the stack: the panic layer sits between the audit layer and the router, so no
    // response of the router's comes back; the route still reaches the record.
    let routes = Router::new()
        .route("/items/{id}", get(|| async { panic!("handler bug") as &'static str }))
        .layer(from_fn(expose_matched_path));
    let app = Router::new()
        .fallback_service(routes)
        .layer(tower_http::catch_panic::CatchPanicLayer::new())
        .layer(from_fn_with_state(log.clone(), audit_requests));
    let (status, record) = audited(app, &log, &path, request("GET", "/items/9", None)).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(record["action"], "GET /items/{id}");
    assert_eq!(record["status"], 500);
}

#[tokio::test]
async fn outside_the_router_an_unknown_path_is_recorded_without_its_query() {
    let dir = TempDir::new().unwrap();
    let path = audit_path(&dir);
    let log = AuditLog::open(&path, 1 << 20).unwrap();
    let req = request("GET", &format!("/nope?access_token={TOKEN}"), None);
    let (status, record) = audited(app_outside(&log), &log, &path, req).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // An anonymous refusal is a kind the client cannot vary: no route, the raw path aside.
    assert_eq!(record["action"], "GET (unmatched)");
    assert_eq!(record["resource"], "/nope");
    assert_eq!(record["decision"], "error");
}

#[tokio::test]
async fn a_request_dropped_before_its_response_is_still_recorded() {
    let dir = TempDir::new().unwrap();
    let path = audit_path(&dir);
    let log = AuditLog::open(&path, 1 << 20).unwrap();
    let call = app_inside(&log).oneshot(request("GET", "/slow", Some(TOKEN)));
    assert!(tokio::time::timeout(Duration::from_millis(50), call).await.is_err());
    log.flush().unwrap();
    let all = lines(&path);
    assert_eq!(all.len(), 1);
    let record = json(&all[0]);
    assert_eq!(record["action"], "GET /slow");
    assert_eq!(record["decision"], "error");
    assert!(record.get("status").is_none());
    assert!(record["reason"].as_str().unwrap().contains("cancelled"));
}

// ---------------------------------------------------------------------------------------------
// the principal when no response comes back through the real auth layer

/// A bearer-token scheme, so these tests run the gateway's own auth layer
/// ([`crate::auth::authenticate`]) rather than a stand-in.
#[derive(Debug)]
struct BearerToken;

impl crate::auth::Authenticator for BearerToken {
    fn challenge(&self) -> Option<String> {
        Some("Bearer".into())
    }

    fn authenticate(&self, parts: &axum::http::request::Parts, _conn: Option<&ConnInfo>) -> crate::auth::AuthOutcome {
        match parts.headers.get("authorization") {
            None => crate::auth::AuthOutcome::NotApplicable,
            Some(v) if v.as_bytes() == format!("Bearer {TOKEN}").as_bytes() => {
                crate::auth::AuthOutcome::authenticated(alice())
            }
            Some(_) => crate::auth::AuthOutcome::Rejected("invalid bearer token".into()),
        }
    }
}

/// As in the gateway's stack: audit outermost, then the panic layer and the request timeout,
/// then the router with the real auth layer on its routes. A panic's 500 and a timeout's 408
/// are made outside the auth layer, so they carry no `AuthRecord` of their own.
fn app_authenticated(log: &Arc<AuditLog>, timeout: Duration) -> Router {
    let chain = crate::auth::AuthChain::new(vec![Box::new(BearerToken)]);
    let routes = Router::new()
        .route("/items/{id}", get(|| async { panic!("handler bug") as &'static str }))
        .route("/slow", get(slow))
        .route_layer(from_fn_with_state(chain, crate::auth::authenticate))
        .layer(from_fn(expose_matched_path));
    Router::new()
        .fallback_service(routes)
        .layer(
            tower::ServiceBuilder::new()
                .layer(axum::error_handling::HandleErrorLayer::new(|_: axum::BoxError| async {
                    StatusCode::REQUEST_TIMEOUT
                }))
                .timeout(timeout),
        )
        .layer(tower_http::catch_panic::CatchPanicLayer::new())
        .layer(from_fn_with_state(log.clone(), audit_requests))
}

#[tokio::test]
async fn a_panicking_handler_behind_authentication_is_recorded_with_its_principal() {
    let dir = TempDir::new().unwrap();
    let path = audit_path(&dir);
    let log = AuditLog::open(&path, 1 << 20).unwrap();
    let app = app_authenticated(&log, Duration::from_secs(3600));
    let (status, record) = audited(app, &log, &path, request("GET", "/items/9", Some(TOKEN))).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(record["action"], "GET /items/{id}");
    assert_eq!(record["principal"], "alice");
    assert_eq!(record["auth_method"], "jwt");
    assert_eq!(record["decision"], "error");
    assert_eq!(record["status"], 500);
}

#[tokio::test]
async fn a_refused_request_to_a_panicking_route_is_recorded_as_deny_without_a_principal() {
    let dir = TempDir::new().unwrap();
    let path = audit_path(&dir);
    let log = AuditLog::open(&path, 1 << 20).unwrap();
    let app = app_authenticated(&log, Duration::from_secs(3600));
    let wrong = format!("{TOKEN}-wrong");
    let (status, record) = audited(app.clone(), &log, &path, request("GET", "/items/9", Some(&wrong))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "the handler never ran");
    assert_eq!(record["decision"], "deny");
    assert_eq!(record["reason"], "invalid bearer token");
    assert!(record.get("principal").is_none());
}

#[tokio::test]
async fn a_timed_out_request_is_recorded_with_its_principal() {
    let dir = TempDir::new().unwrap();
    let path = audit_path(&dir);
    let log = AuditLog::open(&path, 1 << 20).unwrap();
    let app = app_authenticated(&log, Duration::from_millis(50));
    let (status, record) = audited(app, &log, &path, request("GET", "/slow", Some(TOKEN))).await;
    assert_eq!(status, StatusCode::REQUEST_TIMEOUT);
    assert_eq!(record["action"], "GET /slow");
    assert_eq!(record["principal"], "alice");
    assert_eq!(record["status"], 408);
}

#[tokio::test]
async fn a_request_dropped_after_authentication_is_recorded_with_its_principal() {
    let dir = TempDir::new().unwrap();
    let path = audit_path(&dir);
    let log = AuditLog::open(&path, 1 << 20).unwrap();
    let call = app_authenticated(&log, Duration::from_secs(3600)).oneshot(request("GET", "/slow", Some(TOKEN)));
    assert!(tokio::time::timeout(Duration::from_millis(50), call).await.is_err());
    log.flush().unwrap();
    let all = lines(&path);
    assert_eq!(all.len(), 1);
    let record = json(&all[0]);
    assert_eq!(record["principal"], "alice");
    assert!(record.get("status").is_none());
    assert!(record["reason"].as_str().unwrap().contains("cancelled"));
}

// ---------------------------------------------------------------------------------------------
// repeated security events are counted, not written one by one

fn options(max_file_bytes: u64, max_files: usize, repeat_window: Duration) -> AuditOptions {
    AuditOptions { max_file_bytes, max_files, max_age: None, repeat_window }
}

fn failed_handshake(peer: &str) -> AuditEvent {
    AuditEvent::security("rpc_auth_failed", Decision::Deny)
        .remote_addr(peer.parse().unwrap())
        .reason("TLS handshake failed: received corrupt message")
}

fn records_of(path: &Path, action: &str) -> Vec<serde_json::Value> {
    lines(path).iter().map(|l| json(l)).filter(|r| r["action"] == action).collect()
}

/// Events a set of records stands for: each full record is one, a summary is `repeated`.
fn represented(records: &[serde_json::Value]) -> u64 {
    records.iter().map(|r| r["repeated"].as_u64().unwrap_or(1)).sum()
}

#[test]
fn a_flood_of_identical_failures_costs_two_records_and_loses_no_count() {
    let dir = TempDir::new().unwrap();
    let path = audit_path(&dir);
    let log = AuditLog::open_with(&path, &options(1 << 20, 0, Duration::from_secs(3600))).unwrap();
    let peer = "192.0.2.7:40000".parse::<std::net::SocketAddr>().unwrap();
    let mut outcomes = Vec::new();
    for port in 0..1000u16 {
        // Each connection comes from another port; the address is what counts.
        let event = failed_handshake(&format!("192.0.2.7:{}", 40000 + port));
        outcomes.push(log.record_coalesced(event, Some(peer.ip()), "tls"));
    }
    assert_eq!(outcomes[0], Recorded::Written);
    assert!(outcomes[1..].iter().all(|o| *o == Recorded::Counted));
    // Metrics see every event, written or counted.
    let counted = log.security_event_counts();
    assert_eq!(counted, vec![(("rpc_auth_failed".to_string(), "deny"), 1000)]);
    // A flush writes the count without waiting for the window to end.
    log.flush().unwrap();
    let records = records_of(&path, "rpc_auth_failed");
    assert_eq!(records.len(), 2, "{records:?}");
    assert_eq!(records[0]["remote_addr"], "192.0.2.7:40000");
    assert!(records[0].get("repeated").is_none());
    assert_eq!(records[1]["repeated"], 999);
    assert_eq!(records[1]["remote_addr"], "192.0.2.7");
    assert!(records[1]["reason"].as_str().unwrap().starts_with("999 more rpc_auth_failed event(s) of kind `tls`"));
    assert_eq!(represented(&records), 1000);
    drop(log);
    assert!(verify_files(&[path]).unwrap().is_intact());
}

#[test]
fn a_flood_from_one_address_hides_no_other_address_or_reason() {
    let dir = TempDir::new().unwrap();
    let path = audit_path(&dir);
    let log = AuditLog::open_with(&path, &options(1 << 20, 0, Duration::from_secs(3600))).unwrap();
    for _ in 0..100 {
        log.record_coalesced(failed_handshake("192.0.2.7:1"), Some("192.0.2.7".parse().unwrap()), "tls");
    }
    // Another address, another kind of failure, another event: each written in full.
    let other = log.record_coalesced(failed_handshake("198.51.100.1:1"), Some("198.51.100.1".parse().unwrap()), "tls");
    let proof = log.record_coalesced(
        AuditEvent::security("rpc_auth_failed", Decision::Deny)
            .reason("wrong proof for session 3")
            .resource("session:3"),
        Some("192.0.2.7".parse().unwrap()),
        "bad_proof",
    );
    log.record(AuditEvent::security("driver_authenticated", Decision::Allow).resource("session:3"));
    assert_eq!((other, proof), (Recorded::Written, Recorded::Written));
    drop(log); // shutdown writes what is still counted
    let records: Vec<_> = lines(&path).iter().map(|l| json(l)).collect();
    assert_eq!(records.len(), 5, "{records:#?}");
    assert!(records.iter().any(|r| r["remote_addr"] == "198.51.100.1:1"));
    assert!(records.iter().any(|r| r["resource"] == "session:3" && r["action"] == "rpc_auth_failed"));
    assert!(records.iter().any(|r| r["action"] == "driver_authenticated"));
    assert_eq!(represented(&records_of(&path, "rpc_auth_failed")), 102);
}

#[test]
fn a_summary_is_written_when_its_window_ends_without_further_events() {
    let dir = TempDir::new().unwrap();
    let path = audit_path(&dir);
    let log = AuditLog::open_with(&path, &options(1 << 20, 0, Duration::from_millis(300))).unwrap();
    for _ in 0..50 {
        log.record_coalesced(failed_handshake("192.0.2.7:1"), Some("192.0.2.7".parse().unwrap()), "tls");
    }
    // No flush, no new event: the writer wakes up for the window's end by itself. However
    // slowly the machine ran the loop, every event is in a full record or a summary.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let records = records_of(&path, "rpc_auth_failed");
        if represented(&records) == 50 {
            assert!(records.len() < 50, "{records:?}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no summary after the window: {records:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The next event after the window is written in full again.
    assert_eq!(
        log.record_coalesced(failed_handshake("192.0.2.7:1"), Some("192.0.2.7".parse().unwrap()), "tls"),
        Recorded::Written
    );
}

// ---------------------------------------------------------------------------------------------
// retention: retired files, and what verify makes of what remains

/// Two hundred records in files of about fifteen (4096 bytes, the smallest size the
/// configuration allows), at most three rotated files kept.
fn retained_chain() -> (TempDir, PathBuf) {
    let dir = TempDir::new().unwrap();
    let path = audit_path(&dir);
    let log = AuditLog::open_with(&path, &options(4096, 3, Duration::from_secs(60))).unwrap();
    write_events(&log, 0..200);
    drop(log);
    (dir, path)
}

#[test]
fn retired_files_keep_the_disk_bounded_and_the_rest_verifies_as_retired_not_removed() {
    let (_dir, path) = retained_chain();
    let files = chain_files(&path).unwrap();
    // Three rotated files and the current one, however many rotations there were.
    assert_eq!(files.len(), 4, "{files:?}");
    let on_disk = std::fs::read_dir(path.parent().unwrap()).unwrap().count();
    assert_eq!(on_disk, 4, "nothing else is left behind");
    let report = verify_files(&files).unwrap();
    assert!(report.is_intact(), "{report}");
    assert!(report.starts_mid_chain && report.prefix_retired(), "{report}");
    assert!(report.to_string().contains("retired by the gateway's retention"), "{report}");
    // The retirements are records of the chain, naming where the kept part begins.
    let retirements: Vec<_> = files.iter().flat_map(|f| records_of(f, "audit_files_retired")).collect();
    assert!(!retirements.is_empty());
    let last = retirements.last().unwrap();
    assert_eq!(last["retired_before"].as_u64(), report.first_seq, "{last}");
    assert_eq!(last["decision"], "info");
    assert!(last["reason"].as_str().unwrap().contains("audit.max_files = 3"), "{last}");
}

#[test]
fn a_gap_between_the_remaining_files_is_still_missing() {
    let (_dir, path) = retained_chain();
    let mut files = chain_files(&path).unwrap();
    let removed = files.remove(1);
    let removed_last = json(lines(&removed).last().unwrap())["seq"].as_u64().unwrap();
    let report = verify_files(&files).unwrap();
    let p = problem(&report);
    assert_eq!((p.kind, &p.file, p.line, p.seq), (ProblemKind::Missing, &files[1], 1, Some(removed_last + 1)));
}

#[test]
fn removing_more_than_retention_did_is_not_reported_as_retired() {
    let (_dir, path) = retained_chain();
    let files = chain_files(&path).unwrap();
    // Someone deletes the oldest kept file as well: the retirement record does not cover it.
    let report = verify_files(&files[1..]).unwrap();
    assert!(report.starts_mid_chain, "{report}");
    assert!(!report.prefix_retired(), "{report}");
    assert!(report.to_string().contains("no retirement record in these files explains"), "{report}");
}

#[test]
fn without_a_limit_every_rotated_file_is_kept() {
    let dir = TempDir::new().unwrap();
    let path = audit_path(&dir);
    let log = AuditLog::open_with(&path, &options(700, 0, Duration::from_secs(60))).unwrap();
    write_events(&log, 0..40);
    drop(log);
    let report = verify_files(&chain_files(&path).unwrap()).unwrap();
    assert!(report.is_intact() && report.records == 40 && !report.starts_mid_chain, "{report}");
}

#[test]
fn old_rotated_files_are_retired_by_age_at_start_up() {
    let dir = TempDir::new().unwrap();
    let path = audit_path(&dir);
    let log = AuditLog::open(&path, 700).unwrap();
    write_events(&log, 0..20);
    drop(log);
    let rotated = chain_files(&path).unwrap();
    let rotated = &rotated[..rotated.len() - 1];
    assert!(rotated.len() >= 3, "{rotated:?}");
    // The two oldest rotated files were last written two days ago.
    let two_days_ago = std::time::SystemTime::now() - Duration::from_secs(2 * 86_400);
    for file in &rotated[..2] {
        std::fs::File::options().append(true).open(file).unwrap().set_modified(two_days_ago).unwrap();
    }
    let mut opts = AuditOptions::keep_all(700);
    opts.max_age = Some(Duration::from_secs(86_400));
    let log = AuditLog::open_with(&path, &opts).unwrap();
    log.flush().unwrap();
    drop(log);
    let files = chain_files(&path).unwrap();
    assert!(!files.contains(&rotated[0]) && !files.contains(&rotated[1]), "{files:?}");
    assert!(files.contains(&rotated[2]), "a younger file stays: {files:?}");
    let report = verify_files(&files).unwrap();
    assert!(report.is_intact() && report.prefix_retired(), "{report}");
    let retirement = files.iter().flat_map(|f| records_of(f, "audit_files_retired")).next().unwrap();
    assert!(retirement["reason"].as_str().unwrap().contains("older than audit.max_age"), "{retirement}");
}

#[test]
fn a_trail_that_lost_records_the_store_saw_is_told_apart_from_one_that_went_on() {
    use super::ChainHead;
    let head = |seq: u64, hash: &str| ChainHead { seq, hash: hash.to_string() };
    assert_eq!(ChainHead::missing_from(None, Some(&head(3, "c"))), None, "nothing kept yet");
    assert_eq!(ChainHead::missing_from(Some(&head(3, "c")), Some(&head(3, "c"))), None);
    assert_eq!(ChainHead::missing_from(Some(&head(3, "c")), Some(&head(9, "i"))), None, "it went on since");
    let lost = ChainHead::missing_from(Some(&head(9, "i")), Some(&head(3, "c"))).unwrap();
    assert!(lost.contains("ends at seq 3") && lost.contains("seq 9"), "{lost}");
    let replaced = ChainHead::missing_from(Some(&head(3, "c")), Some(&head(3, "x"))).unwrap();
    assert!(replaced.contains("seq 3 is not the one written"), "{replaced}");
    assert!(ChainHead::missing_from(Some(&head(0, "a")), None).unwrap().contains("empty"));
}

#[test]
fn the_synced_head_follows_what_is_on_disk_and_the_opened_head_what_was() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let log = AuditLog::open(&path, 1 << 20).unwrap();
    assert!(log.opened_head().is_none() && log.synced_head().is_none());
    log.record(AuditEvent::security("one", crate::audit_slots::Decision::Info));
    log.record(AuditEvent::security("two", crate::audit_slots::Decision::Info));
    log.flush().unwrap();
    let head = log.synced_head().unwrap();
    assert_eq!(head.seq, 1);
    drop(log);
    let again = AuditLog::open(&path, 1 << 20).unwrap();
    assert_eq!(again.opened_head(), Some(&head));
}

#[tokio::test]
async fn a_request_that_changes_state_is_answered_once_its_record_is_on_disk() {
    let dir = TempDir::new().unwrap();
    let path = audit_path(&dir);
    let log = AuditLog::open(&path, 1 << 20).unwrap();
    // Something recorded before it (a launch, say) is on disk with it.
    log.record(event(0));
    let status = app_inside(&log).oneshot(request("POST", "/sessions/3", Some(TOKEN))).await.unwrap().status();
    assert_eq!(status, StatusCode::CREATED);
    // No flush: the answer itself waited for the sync that covers its record.
    let head = log.synced_head().expect("synced before the answer");
    assert_eq!(head.seq, 1, "the earlier record and the request's");
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(json(text.lines().nth(1).unwrap())["action"], "POST /sessions/{id}");
}

#[test]
fn durable_records_are_told_when_they_are_on_disk_in_groups() {
    let dir = TempDir::new().unwrap();
    let path = audit_path(&dir);
    let log = AuditLog::open(&path, 1 << 20).unwrap();
    let told: Vec<_> = (0..200).map(|i| log.record_durable(event(i))).collect();
    for tell in told {
        assert_eq!(tell.blocking_recv(), Ok(true));
    }
    assert_eq!(log.synced_head().unwrap().seq, 199);
    assert_eq!(lines(&path).len(), 200);
    let report = verify_files(&[path]).unwrap();
    assert!(report.is_intact() && report.records == 200, "{report}");
}

/// Waits (bounded) until the synced head reaches `seq`.
fn synced_up_to(log: &AuditLog, seq: u64) -> bool {
    for _ in 0..200 {
        if log.synced_head().is_some_and(|h| h.seq >= seq) {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    false
}

#[test]
fn an_allowed_reads_record_is_synced_within_a_second_and_everything_else_as_the_queue_runs_dry() {
    let allowed_read = || AuditEvent::request("GET /sessions/{id}", Decision::Allow).status(200);
    assert!(allowed_read().may_sync_later());
    for other in [
        AuditEvent::request("GET /sessions/{id}", Decision::Deny).status(403),
        AuditEvent::request("GET /sessions/{id}", Decision::Error).status(500),
        AuditEvent::request("DELETE /sessions/{id}", Decision::Allow).status(200),
        AuditEvent::request("POST /sessions", Decision::Allow).status(201),
        AuditEvent::security("driver_authenticated", Decision::Allow),
    ] {
        assert!(!other.may_sync_later(), "{other:?}");
    }
    let dir = TempDir::new().unwrap();
    let log = AuditLog::open(&audit_path(&dir), 1 << 20).unwrap();
    // Reads alone are synced all the same, within READ_SYNC (plus the machine's slowness).
    log.record(allowed_read());
    log.record(allowed_read());
    assert!(synced_up_to(&log, 1), "the reads were synced");
    // A refusal after reads is synced at once, and the reads before it with it.
    log.record(allowed_read());
    log.record(AuditEvent::request("GET /sessions/{id}", Decision::Deny).status(403));
    assert!(synced_up_to(&log, 3));
}
