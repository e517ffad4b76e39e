//! Jobs of Livy's programmatic API as clients see them. A job is kept, queued, cancelled,
//! stored and recovered as a statement of a job kind ([`CodeKind::is_job`]); the gateway never
//! looks inside its bytes, and shows it with Livy's `JobStatus` fields.

use super::kind::CodeKind;
use super::session::Statement;
use super::state::StatementState;
use serde::Serialize;
use serde_json::Value;

/// Where the driver puts a job's result (base64) in a job's output `data`.
pub const RESULT_KEY: &str = "application/vnd.sparkgate.job-result+base64";

/// Livy's `JobStatus`: exactly these four fields (Livy's Java client refuses unknown ones).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobStatus {
    /// The job's id (from the session's statement ids).
    pub id: u32,
    /// `SENT`, `QUEUED`, `STARTED`, `CANCELLED`, `FAILED` or `SUCCEEDED`.
    pub state: &'static str,
    /// The result's bytes in base64, once it succeeded.
    pub result: Option<String>,
    /// What went wrong, once it failed.
    pub error: Option<String>,
}

impl JobStatus {
    /// How `job` stands.
    pub fn of(job: &Statement) -> Self {
        let output = job.output.as_ref().map(|o| o.value()).unwrap_or(Value::Null);
        let (state, result, error) = match job.state {
            StatementState::Waiting => ("QUEUED", None, None),
            StatementState::Running | StatementState::Cancelling => ("STARTED", None, None),
            // Cancelled by its user: no error, as in Livy. Ended with its session: why.
            StatementState::Cancelled => match output["ename"].as_str() {
                Some(ename) if ename != "Cancelled" => ("CANCELLED", None, Some(error_text(&output))),
                _ => ("CANCELLED", None, None),
            },
            StatementState::Available => match output["data"][RESULT_KEY].as_str() {
                Some(result) if output["status"] == "ok" => ("SUCCEEDED", Some(result.to_owned()), None),
                _ => ("FAILED", None, Some(error_text(&output))),
            },
        };
        Self { id: job.id, state, result, error }
    }
}

/// A failed job's error as one text: `ename: evalue`, then the traceback; only the traceback
/// when it ends with that line already (as Python's do).
fn error_text(output: &Value) -> String {
    let ename = output["ename"].as_str().unwrap_or("Error");
    let evalue = output["evalue"].as_str().unwrap_or("the job failed without saying why");
    let headline = format!("{ename}: {evalue}");
    let lines: Vec<&str> =
        output["traceback"].as_array().map_or_else(Vec::new, |l| l.iter().filter_map(Value::as_str).collect());
    let ends_with_headline = lines.last().is_some_and(|last| last.starts_with(&format!("{ename}:")));
    let mut text = if ends_with_headline { String::new() } else { headline };
    if !lines.is_empty() {
        if !text.is_empty() {
            text.push('\n');
        }
        for line in lines {
            text.push_str(line);
            if !line.ends_with('\n') {
                text.push('\n');
            }
        }
    }
    text
}

/// Livy's `jobType` of a job kind.
pub fn job_type(kind: CodeKind) -> &'static str {
    match kind {
        CodeKind::SparkJob => "spark",
        _ => "pyspark",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::session::Output;
    use serde_json::json;
    use std::sync::Arc;

    fn job(state: StatementState, output: Option<Value>) -> Statement {
        Statement {
            id: 4,
            code: Arc::from("AAAA"),
            kind: CodeKind::PySparkJob,
            state,
            output: output.as_ref().map(Output::new),
            progress: 0.0,
            started: 0,
            completed: 0,
        }
    }

    #[test]
    fn states_map_to_livys_job_states() {
        assert_eq!(JobStatus::of(&job(StatementState::Waiting, None)).state, "QUEUED");
        assert_eq!(JobStatus::of(&job(StatementState::Running, None)).state, "STARTED");
        assert_eq!(JobStatus::of(&job(StatementState::Cancelling, None)).state, "STARTED");
        assert_eq!(JobStatus::of(&job(StatementState::Cancelled, None)).state, "CANCELLED");
        // A cancel asked for has no error; a job ended with its session says why.
        let asked = json!({"status": "error", "ename": "Cancelled", "evalue": "Statement cancelled", "traceback": []});
        assert_eq!(JobStatus::of(&job(StatementState::Cancelled, Some(asked))).error, None);
        let ended =
            json!({"status": "error", "ename": "SessionStopped", "evalue": "the session ended", "traceback": []});
        let shown = JobStatus::of(&job(StatementState::Cancelled, Some(ended)));
        assert_eq!((shown.state, shown.error.as_deref()), ("CANCELLED", Some("SessionStopped: the session ended")));
    }

    #[test]
    fn a_result_or_an_error_is_shown_once_finished() {
        let ok = json!({"status": "ok", "execution_count": 4, "data": {RESULT_KEY: "NDk1MA=="}});
        let shown = JobStatus::of(&job(StatementState::Available, Some(ok)));
        assert_eq!((shown.state, shown.result.as_deref(), shown.error), ("SUCCEEDED", Some("NDk1MA=="), None));
        let failed = json!({"status": "error", "execution_count": 4, "ename": "ValueError", "evalue": "bad",
                            "traceback": ["Traceback (most recent call last):\n", "  line 1\n"]});
        let shown = JobStatus::of(&job(StatementState::Available, Some(failed)));
        assert_eq!(shown.state, "FAILED");
        assert_eq!(shown.error.as_deref(), Some("ValueError: bad\nTraceback (most recent call last):\n  line 1\n"));
        // A Python traceback that ends with the error's own line says it once.
        let python = json!({"status": "error", "ename": "TypeError", "evalue": "no",
                            "traceback": ["Traceback (most recent call last):\n", "  line 1\n", "TypeError: no\n"]});
        assert_eq!(
            JobStatus::of(&job(StatementState::Available, Some(python))).error.as_deref(),
            Some("Traceback (most recent call last):\n  line 1\nTypeError: no\n")
        );
        // An "ok" output without a result (an output the gateway replaced) is a failure.
        let odd = json!({"status": "ok", "execution_count": 4, "data": {"text/plain": "4950"}});
        assert_eq!(JobStatus::of(&job(StatementState::Available, Some(odd))).state, "FAILED");
        assert_eq!(
            serde_json::to_value(JobStatus::of(&job(StatementState::Waiting, None))).unwrap(),
            json!({"id": 4, "state": "QUEUED", "result": null, "error": null})
        );
    }
}
