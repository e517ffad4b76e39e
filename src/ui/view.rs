//! What the pages show, shaped from the engine's records: plain strings and numbers only, so
//! the templates never see anything but text (askama escapes every one of them as HTML).

use crate::engine::{Session, Statement};
use serde_json::Value;

/// One row of the sessions list.
#[derive(Debug, Clone)]
pub(crate) struct SessionRow {
    pub id: u32,
    pub name: String,
    pub state: String,
    pub kind: String,
    pub owner: String,
    pub effective_user: String,
    pub app_id: String,
    pub started: String,
}

impl SessionRow {
    pub(crate) fn of(session: &Session) -> Self {
        let snapshot = session.snapshot();
        let spec = &snapshot.spec;
        Self {
            id: snapshot.id,
            name: shown(spec.submit.name.as_deref().unwrap_or_default()),
            state: snapshot.state.as_str().to_string(),
            kind: spec.kind.as_str().to_string(),
            owner: spec.owner.clone(),
            effective_user: spec.effective_user.clone(),
            app_id: snapshot.app_id.clone().unwrap_or_default(),
            started: utc_time(session.created_ms()),
        }
    }
}

/// A statement's output, by what it holds.
#[derive(Debug, Clone)]
pub(crate) enum OutputView {
    /// Not finished yet.
    Pending,
    /// `text/plain`.
    Text(String),
    /// A SQL result (`application/json` with `schema` and `data`).
    Table { columns: Vec<String>, rows: Vec<Vec<String>> },
    /// Other JSON, pretty-printed.
    Json(String),
    /// `%matplot`: a base64 PNG, shown as a `data:` image.
    Image(String),
    /// An error with its traceback.
    Error { ename: String, evalue: String, traceback: Vec<String> },
}

/// One statement of a session page.
#[derive(Debug, Clone)]
pub(crate) struct StatementView {
    pub id: u32,
    pub code: String,
    pub kind: String,
    pub state: String,
    pub progress: u32,
    pub output: OutputView,
}

/// The most of one text (code, an output, a cell, a log line) a page shows; the rest is cut
/// with a note, and the API serves it whole. Bounds a page's size: markup escapes to ~5 times
/// its length.
pub(crate) const MAX_SHOWN: usize = 16 * 1024;

/// `text` for a page: at most [`MAX_SHOWN`] characters, and bidirectional-override controls
/// shown as U+FFFD (they could make a name or code read as something else).
pub(crate) fn shown(text: &str) -> String {
    let bidi = |c: char| matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200E}' | '\u{200F}');
    let mut out: String = text.chars().take(MAX_SHOWN).map(|c| if bidi(c) { '\u{FFFD}' } else { c }).collect();
    if out.len() < text.len() && text.chars().nth(MAX_SHOWN).is_some() {
        out.push_str(&format!("\n… (cut at {MAX_SHOWN} characters; the API has all of it)"));
    }
    out
}

impl StatementView {
    pub(crate) fn of(statement: &Statement) -> Self {
        Self {
            id: statement.id,
            code: shown(&statement.code),
            kind: statement.kind.as_str().to_string(),
            state: statement.state.as_str().to_string(),
            progress: (statement.progress.clamp(0.0, 1.0) * 100.0).round() as u32,
            output: statement.output.as_ref().map_or(OutputView::Pending, |o| output_view(&o.value())),
        }
    }
}

/// Livy's output object as something to show.
pub(crate) fn output_view(output: &Value) -> OutputView {
    let text = |v: &Value| shown(&v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string()));
    if output["status"] == "error" {
        // Every line on its own line (JVM tracebacks come without newlines), at most 200.
        let line = |v: &Value| {
            let t = text(v);
            if t.ends_with('\n') {
                t
            } else {
                t + "\n"
            }
        };
        return OutputView::Error {
            ename: text(&output["ename"]),
            evalue: text(&output["evalue"]),
            traceback: output["traceback"]
                .as_array()
                .map(|t| t.iter().take(200).map(line).collect())
                .unwrap_or_default(),
        };
    }
    let data = &output["data"];
    if let Some(png) = data["image/png"].as_str() {
        // Only base64's alphabet reaches the data: URL.
        if png.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=' | b'\n')) {
            return OutputView::Image(png.replace('\n', ""));
        }
    }
    // `%table`: headers with names, and rows.
    if let Some(table) = data.get("application/vnd.livy.table.v1+json") {
        if let (Some(headers), Some(rows)) = (table["headers"].as_array(), table["data"].as_array()) {
            return table_view(headers.iter().map(|h| text(&h["name"])).collect(), rows);
        }
    }
    if let Some(json) = data.get("application/json") {
        if let (Some(fields), Some(rows)) = (json["schema"]["fields"].as_array(), json["data"].as_array()) {
            return table_view(fields.iter().map(|f| text(&f["name"])).collect(), rows);
        }
        return OutputView::Json(shown(&serde_json::to_string_pretty(json).unwrap_or_default()));
    }
    match data.get("text/plain") {
        Some(v) => OutputView::Text(text(v)),
        None => OutputView::Text(String::new()),
    }
}

/// Rows shown of a table at most.
const MAX_ROWS: usize = 1000;

fn table_view(columns: Vec<String>, rows: &[Value]) -> OutputView {
    let rows = rows
        .iter()
        .take(MAX_ROWS)
        .map(|row| row.as_array().map(|cells| cells.iter().map(cell).collect()).unwrap_or_default())
        .collect();
    OutputView::Table { columns, rows }
}

fn cell(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::String(s) => shown(s),
        other => shown(&other.to_string()),
    }
}

/// Epoch milliseconds as `2026-12-01 06:16:00 UTC`.
pub(crate) fn utc_time(ms: i64) -> String {
    let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second] UTC");
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&format).ok())
        .unwrap_or_default()
}

/// One row of the batches list.
#[derive(Debug, Clone)]
pub(crate) struct BatchRow {
    pub id: u32,
    pub name: String,
    pub state: String,
    pub owner: String,
    pub effective_user: String,
    pub app_id: String,
    pub file: String,
}

impl BatchRow {
    pub(crate) fn of(batch: &crate::engine::batch::Batch) -> Self {
        let snapshot = batch.snapshot();
        let spec = &snapshot.spec;
        Self {
            id: snapshot.id,
            name: shown(spec.submit.name.as_deref().unwrap_or_default()),
            state: snapshot.state.as_str().to_string(),
            owner: spec.owner.clone(),
            effective_user: spec.effective_user.clone(),
            app_id: snapshot.app_id.clone().unwrap_or_default(),
            file: without_query(&spec.file),
        }
    }
}

/// Property names and flags whose values are never shown (Spark's own redaction rule, and
/// more): anything naming a secret, password, token, credential, private or signing key, and
/// any `key` as a name part (`account.key`, `access_key`, `apikey`, `--api-key`).
fn secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    let words = ["secret", "password", "passwd", "pwd", "token", "credential", "private", "signature", "apikey"];
    words.iter().any(|w| key.contains(w))
        || key.split(|c: char| !c.is_ascii_alphanumeric()).any(|part| part == "key" || part == "sig" || part == "p")
}

/// A URL without its query string or user info (a presigned URL's signature, a password).
fn without_query(location: &str) -> String {
    let cut = location.split(['?', '#']).next().unwrap_or_default();
    match cut.split_once("://") {
        Some((scheme, rest)) => match rest.split_once('/') {
            Some((authority, path)) => {
                let host = authority.rsplit('@').next().unwrap_or(authority);
                format!("{scheme}://{host}/{path}")
            }
            None => format!("{scheme}://{}", rest.rsplit('@').next().unwrap_or(rest)),
        },
        None => cut.to_string(),
    }
}

/// `word` quoted for a POSIX shell when it needs to be.
fn shell_word(word: &str) -> String {
    if !word.is_empty() && word.chars().all(|c| c.is_ascii_alphanumeric() || "-_./:=,@%+".contains(c)) {
        return word.to_string();
    }
    format!("'{}'", word.replace('\'', "'\\''"))
}

/// The spark-submit command line a batch is equivalent to, as a user could run it: the
/// request's own settings (never the operator's `spark.conf`, which may hold credentials),
/// values of secret-looking properties as `<redacted>`, URLs without query strings or user
/// info. (The gateway itself passes properties in an owner-only file, never on a command line.)
pub(crate) fn submit_command(spec: &crate::engine::batch::BatchSpec, master: &str, deploy_mode: &str) -> String {
    let submit = &spec.submit;
    let mut words: Vec<String> = vec!["spark-submit".into(), "--master".into(), master.into()];
    words.extend(["--deploy-mode".into(), deploy_mode.into()]);
    let flag = |words: &mut Vec<String>, name: &str, value: Option<String>| {
        if let Some(value) = value {
            words.extend([name.to_string(), value]);
        }
    };
    flag(&mut words, "--name", submit.name.clone());
    flag(&mut words, "--class", spec.class_name.clone());
    flag(&mut words, "--proxy-user", submit.proxy_user.clone());
    flag(&mut words, "--queue", submit.queue.clone());
    flag(&mut words, "--driver-memory", submit.driver_memory.clone());
    flag(&mut words, "--driver-cores", submit.driver_cores.map(|n| n.to_string()));
    flag(&mut words, "--executor-memory", submit.executor_memory.clone());
    flag(&mut words, "--executor-cores", submit.executor_cores.map(|n| n.to_string()));
    flag(&mut words, "--num-executors", submit.num_executors.map(|n| n.to_string()));
    let list = |items: &[String]| {
        (!items.is_empty()).then(|| items.iter().map(|i| without_query(i)).collect::<Vec<_>>().join(","))
    };
    flag(&mut words, "--jars", list(&submit.jars));
    flag(&mut words, "--py-files", list(&submit.py_files));
    flag(&mut words, "--files", list(&submit.files));
    flag(&mut words, "--archives", list(&submit.archives));
    for (key, value) in &submit.conf {
        let value = match value {
            _ if secret_key(key) => "<redacted>".to_string(),
            url if url.contains("://") => without_query(url),
            plain => plain.clone(),
        };
        words.extend(["--conf".to_string(), format!("{key}={value}")]);
    }
    words.push(without_query(&spec.file));
    // Application arguments: `key=value` with a secret-looking key, and the word after a
    // secret-looking flag (`--password x`), are redacted.
    let mut hide_next = false;
    for arg in &spec.args {
        let shown = match arg.split_once('=') {
            _ if hide_next => "<redacted>".to_string(),
            Some((key, _)) if secret_key(key) => format!("{key}=<redacted>"),
            _ => without_query(arg),
        };
        hide_next = arg.starts_with('-') && !arg.contains('=') && secret_key(arg);
        words.push(shown);
    }
    shown(&words.iter().map(|w| shell_word(w)).collect::<Vec<_>>().join(" "))
}
