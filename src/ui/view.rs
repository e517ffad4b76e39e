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
            name: spec.submit.name.clone().unwrap_or_default(),
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

impl StatementView {
    pub(crate) fn of(statement: &Statement) -> Self {
        Self {
            id: statement.id,
            code: statement.code.to_string(),
            kind: statement.kind.as_str().to_string(),
            state: statement.state.as_str().to_string(),
            progress: (statement.progress.clamp(0.0, 1.0) * 100.0).round() as u32,
            output: statement.output.as_ref().map_or(OutputView::Pending, |o| output_view(&o.value())),
        }
    }
}

/// Livy's output object as something to show.
pub(crate) fn output_view(output: &Value) -> OutputView {
    let text = |v: &Value| v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string());
    if output["status"] == "error" {
        return OutputView::Error {
            ename: text(&output["ename"]),
            evalue: text(&output["evalue"]),
            traceback: output["traceback"].as_array().map(|t| t.iter().map(text).collect()).unwrap_or_default(),
        };
    }
    let data = &output["data"];
    if let Some(png) = data["image/png"].as_str() {
        // Only base64's alphabet reaches the data: URL.
        if png.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=' | b'\n')) {
            return OutputView::Image(png.replace('\n', ""));
        }
    }
    if let Some(json) = data.get("application/json") {
        if let (Some(fields), Some(rows)) = (json["schema"]["fields"].as_array(), json["data"].as_array()) {
            let columns = fields.iter().map(|f| text(&f["name"])).collect();
            let rows = rows
                .iter()
                .map(|row| row.as_array().map(|cells| cells.iter().map(cell).collect()).unwrap_or_default())
                .collect();
            return OutputView::Table { columns, rows };
        }
        return OutputView::Json(serde_json::to_string_pretty(json).unwrap_or_default());
    }
    match data.get("text/plain") {
        Some(v) => OutputView::Text(text(v)),
        None => OutputView::Text(String::new()),
    }
}

fn cell(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
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
