//! What the store keeps of a session, a statement and a batch: everything `GET` shows and what
//! recovery needs to take a launch back (see [`super::recovery`]) — never a secret (a session's
//! RPC secret is derived again from the gateway's key and the record's nonce). One type per
//! record, written and read through serde, so what is written is what is read back.

use super::launch::ProcessIdentity;
use super::spec::SubmitSpec;
use super::state::{SessionState, StatementState};
use crate::rpc::secret_key::NONCE_LEN;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// Milliseconds since the epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// The [`tokio::time::Instant`] that was `epoch_ms` (in the past; now if it is not).
pub fn instant_of(epoch_ms: i64) -> tokio::time::Instant {
    let ago = u64::try_from(now_ms().saturating_sub(epoch_ms)).unwrap_or(0);
    let now = tokio::time::Instant::now();
    now.checked_sub(std::time::Duration::from_millis(ago)).unwrap_or(now)
}

/// `at` as milliseconds since the epoch.
pub fn epoch_ms_of(at: tokio::time::Instant) -> i64 {
    let ago = tokio::time::Instant::now().saturating_duration_since(at).as_millis() as i64;
    now_ms().saturating_sub(ago)
}

/// A session as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionRecord {
    /// Its id.
    pub id: u32,
    /// Its kind (`pyspark`, `spark`, `sql`, `shared`).
    pub kind: String,
    /// Who created it.
    pub owner: String,
    /// Whom it acts as.
    pub effective_user: String,
    /// How it was submitted.
    pub submit: SubmitSpec,
    /// `heartbeatTimeoutInSecond`.
    #[serde(rename = "heartbeatTimeoutInSecond")]
    pub heartbeat_timeout_secs: u32,
    /// `ttl` as given.
    pub ttl: Option<String>,
    /// `idleTimeout` as given.
    pub idle_timeout: Option<String>,
    /// The nonce its RPC secret is derived with (hex).
    pub secret_nonce: Option<String>,
    /// Its state.
    pub state: SessionState,
    /// Its Spark application id.
    pub app_id: Option<String>,
    /// The id its next statement gets.
    pub next_statement_id: u32,
    /// Who leads its launch's process group (the supervisor).
    #[serde(default)]
    pub process: Option<ProcessIdentity>,
    /// YARN cluster mode: its launch's tag.
    #[serde(default)]
    pub yarn_tag: Option<String>,
    /// Kubernetes cluster mode: its driver pod (`<namespace>:<pod>`).
    #[serde(default)]
    pub cluster_driver: Option<String>,
    /// When it was created (ms since the epoch).
    #[serde(default)]
    pub created_at: i64,
    /// When it finished (ms since the epoch).
    #[serde(default)]
    pub finished_at: Option<i64>,
    /// A warm driver nobody has claimed yet (see [`super::warm`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub warm: bool,
}

/// A statement as stored (Livy's statement, and the interpreter it runs in).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatementRecord {
    /// Its id.
    pub id: u32,
    /// Its code.
    pub code: String,
    /// Its state.
    pub state: StatementState,
    /// Livy's output object, once finished.
    pub output: Option<Box<RawValue>>,
    /// 0.0 ..= 1.0
    pub progress: f64,
    /// Epoch ms when it started (0: not yet).
    pub started: i64,
    /// Epoch ms when it finished (0: not yet).
    pub completed: i64,
    /// The interpreter (`pyspark`, `spark`, `sql`).
    pub kind: String,
}

impl PartialEq for StatementRecord {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
            && self.code == other.code
            && self.state == other.state
            && self.output.as_ref().map(|o| o.get()) == other.output.as_ref().map(|o| o.get())
            && self.progress == other.progress
            && (self.started, self.completed) == (other.started, other.completed)
            && self.kind == other.kind
    }
}

/// A batch as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchRecord {
    /// Its id.
    pub id: u32,
    /// Who created it.
    pub owner: String,
    /// Whom it runs as.
    pub effective_user: String,
    /// The application.
    pub file: String,
    /// `--class`.
    pub class_name: Option<String>,
    /// The application's arguments.
    pub args: Vec<String>,
    /// How it was submitted.
    pub submit: SubmitSpec,
    /// Its state.
    pub state: SessionState,
    /// Its Spark application id.
    pub app_id: Option<String>,
    /// Who leads its launch's process group (the supervisor).
    #[serde(default)]
    pub process: Option<ProcessIdentity>,
    /// Standalone or Kubernetes cluster mode: where its driver runs, to kill it there.
    #[serde(default)]
    pub driver_id: Option<String>,
    /// YARN cluster mode: its launch's tag.
    #[serde(default)]
    pub yarn_tag: Option<String>,
    /// When it finished (ms since the epoch).
    #[serde(default)]
    pub finished_at: Option<i64>,
    /// The nonce its Spark UI key is derived with (hex).
    #[serde(default)]
    pub ui_nonce: Option<String>,
}

/// A nonce as a record keeps it (hex), read back; `what` names it in the error.
pub fn decode_nonce(text: Option<&str>, what: &str) -> Result<Option<[u8; NONCE_LEN]>, String> {
    let Some(text) = text else { return Ok(None) };
    hex::decode(text)
        .ok()
        .and_then(|bytes| <[u8; NONCE_LEN]>::try_from(bytes).ok())
        .map(Some)
        .ok_or_else(|| format!("its {what} is malformed"))
}

/// `value` as a record's bytes.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // These types hold strings, numbers and JSON only: serializing them cannot fail.
    serde_json::to_vec(value).unwrap_or_default()
}

/// A record's bytes as `T`; the error says what is wrong (never the bytes).
pub fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, String> {
    serde_json::from_slice(bytes)
        .map_err(|e| format!("undecodable record ({}, column {})", e.classify_name(), e.column()))
}

trait Classify {
    fn classify_name(&self) -> &'static str;
}

impl Classify for serde_json::Error {
    fn classify_name(&self) -> &'static str {
        match self.classify() {
            serde_json::error::Category::Io => "unreadable",
            serde_json::error::Category::Syntax => "not JSON",
            serde_json::error::Category::Data => "fields missing or of the wrong type",
            serde_json::error::Category::Eof => "cut short",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_record_reads_back_as_written() {
        let process = ProcessIdentity { pid: 4242, start_time: 987_654, boot_id: "b00t".into() };
        let submit = SubmitSpec {
            name: Some("etl".into()),
            proxy_user: Some("bob".into()),
            conf: [("spark.x".to_string(), "1".to_string())].into(),
            ..SubmitSpec::default()
        };
        let session = SessionRecord {
            id: 7,
            kind: "pyspark".into(),
            owner: "alice".into(),
            effective_user: "bob".into(),
            submit: submit.clone(),
            heartbeat_timeout_secs: 30,
            ttl: Some("2h".into()),
            idle_timeout: None,
            secret_nonce: Some("00ff".into()),
            state: SessionState::Busy,
            app_id: Some("local-1".into()),
            next_statement_id: 3,
            process: Some(process.clone()),
            yarn_tag: None,
            cluster_driver: Some("ns:pod".into()),
            created_at: 1_700_000_000_000,
            finished_at: None,
            warm: true,
        };
        assert_eq!(decode::<SessionRecord>(&encode(&session)).unwrap(), session);
        let statement = StatementRecord {
            id: 2,
            code: "6*7".into(),
            state: StatementState::Available,
            output: Some(RawValue::from_string(r#"{"status":"ok","data":{"text/plain":"42"}}"#.into()).unwrap()),
            progress: 1.0,
            started: 5,
            completed: 6,
            kind: "pyspark".into(),
        };
        assert_eq!(decode::<StatementRecord>(&encode(&statement)).unwrap(), statement);
        let batch = BatchRecord {
            id: 9,
            owner: "alice".into(),
            effective_user: "alice".into(),
            file: "/jobs/pi.py".into(),
            class_name: None,
            args: vec!["10".into()],
            submit,
            state: SessionState::Running,
            app_id: None,
            process: Some(process),
            driver_id: None,
            yarn_tag: Some("sparkgate-launch-x".into()),
            finished_at: Some(1_700_000_000_500),
            ui_nonce: Some("ab".repeat(16)),
        };
        assert_eq!(decode::<BatchRecord>(&encode(&batch)).unwrap(), batch);
        // A record of an older version (no recovery fields) still reads.
        let mut old: serde_json::Value = serde_json::from_slice(&encode(&batch)).unwrap();
        for field in ["process", "driverId", "yarnTag", "finishedAt", "uiNonce"] {
            old.as_object_mut().unwrap().remove(field);
        }
        old["submit"] = serde_json::json!({"conf": {"spark.x": "1"}});
        let read = decode::<BatchRecord>(old.to_string().as_bytes()).unwrap();
        assert_eq!((read.process, read.finished_at), (None, None));
        assert_eq!(read.submit.conf.len(), 1, "a submit spec without the later fields reads too");
    }

    #[test]
    fn a_damaged_record_is_refused_with_a_reason_that_does_not_quote_it() {
        let err = decode::<SessionRecord>(b"{\"id\": 3, \"owner\": \"s3cr3t\"").unwrap_err();
        assert!(err.contains("cut short") && !err.contains("s3cr3t"), "{err}");
        let err = decode::<BatchRecord>(b"{\"id\": \"x\"}").unwrap_err();
        assert!(err.contains("wrong type"), "{err}");
    }

    #[test]
    fn a_nonce_reads_back_or_is_refused_without_quoting_it() {
        assert_eq!(decode_nonce(Some(&"0a".repeat(16)), "UI nonce").unwrap(), Some([10; NONCE_LEN]));
        assert_eq!(decode_nonce(None, "UI nonce").unwrap(), None);
        let err = decode_nonce(Some("zz-s3cr3t"), "secret nonce").unwrap_err();
        assert_eq!(err, "its secret nonce is malformed");
    }

    #[test]
    fn instants_and_epoch_times_convert_both_ways() {
        let then = now_ms() - 60_000;
        let back = epoch_ms_of(instant_of(then));
        assert!((back - then).abs() < 1000, "{back} vs {then}");
    }
}
