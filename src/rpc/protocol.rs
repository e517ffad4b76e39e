//! The messages of the gateway ⇄ driver protocol (docs/driver-protocol.md), as typed enums.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Protocol version spoken by this gateway.
pub const PROTOCOL_VERSION: u32 = 1;

/// Everything the gateway sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToDriver {
    /// Handshake step 2.
    Challenge {
        /// 32 fresh random bytes, hex.
        server_nonce: String,
    },
    /// Handshake step 4: the gateway's own proof.
    Ok {
        /// HMAC, hex.
        mac: String,
    },
    /// Run a statement.
    Execute {
        /// Statement id.
        id: u32,
        /// Resolved kind (`pyspark`, `scala`, `sql`, `sparkr`).
        kind: String,
        /// The code.
        code: String,
    },
    /// Cancel a running statement.
    Cancel {
        /// Statement id.
        id: u32,
    },
    /// The result of a statement is stored; the driver may forget it.
    Ack {
        /// Statement id.
        id: u32,
    },
    /// Completion candidates, please.
    Complete {
        /// Correlates the answer.
        request_id: u64,
        /// Resolved kind.
        kind: String,
        /// The code.
        code: String,
        /// Cursor position in `code` (characters).
        cursor: usize,
    },
    /// Add a jar, Python file or file to the SparkContext.
    AddFile {
        /// Correlates the answer.
        request_id: u64,
        /// `jar`, `pyfile` or `file`.
        what: String,
        /// Where it is.
        uri: String,
    },
    /// Liveness check.
    Ping,
    /// Stop Spark and exit.
    Shutdown,
}

/// Everything the driver sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FromDriver {
    /// Handshake step 1.
    Hello {
        /// Must equal [`PROTOCOL_VERSION`].
        protocol_version: u32,
        /// The session this driver belongs to.
        session_id: u32,
        /// 32 fresh random bytes, hex.
        client_nonce: String,
    },
    /// Handshake step 3.
    Proof {
        /// HMAC, hex.
        mac: String,
    },
    /// The driver's REPL state.
    State {
        /// `starting`, `idle`, `busy` or `error`.
        state: String,
        /// Why, for `error`.
        #[serde(default)]
        message: Option<String>,
    },
    /// The Spark application's id and UI.
    AppInfo {
        /// e.g. `local-1716000000000`, `app-…`, `application_…`.
        app_id: Option<String>,
        /// The Spark UI, if it runs.
        #[serde(default)]
        spark_ui_url: Option<String>,
    },
    /// A statement started or made progress.
    StatementUpdate {
        /// Statement id.
        id: u32,
        /// `running`.
        state: String,
        /// 0.0 ..= 1.0
        progress: f64,
    },
    /// A statement finished.
    StatementResult {
        /// Statement id.
        id: u32,
        /// `available` or `cancelled`.
        state: String,
        /// Livy's output object.
        output: Value,
        /// When it finished (ms since the epoch), by the driver's clock: a result delivered
        /// later (after a reconnect, a restart of the gateway) keeps its real completion time.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        completed: Option<i64>,
    },
    /// Completion candidates.
    Completion {
        /// As sent in `complete`.
        request_id: u64,
        /// Candidates.
        candidates: Vec<String>,
    },
    /// Outcome of `add_file`.
    AddFileResult {
        /// As sent in `add_file`.
        request_id: u64,
        /// Whether it worked.
        ok: bool,
        /// Why not.
        #[serde(default)]
        error: Option<String>,
    },
    /// Answer to `ping`.
    Pong,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn wire_shapes() {
        let m = ToDriver::Execute { id: 3, kind: "pyspark".into(), code: "1+1".into() };
        assert_eq!(serde_json::to_value(&m).unwrap(), json!({"type":"execute","id":3,"kind":"pyspark","code":"1+1"}));
        assert_eq!(serde_json::to_value(ToDriver::Ping).unwrap(), json!({"type":"ping"}));
        let r: FromDriver = serde_json::from_value(json!({
            "type":"statement_result","id":1,"state":"available",
            "output":{"status":"ok","execution_count":1,"data":{"text/plain":"2"}}
        }))
        .unwrap();
        assert!(matches!(r, FromDriver::StatementResult { id: 1, .. }));
        let s: FromDriver = serde_json::from_value(json!({"type":"state","state":"idle"})).unwrap();
        assert_eq!(s, FromDriver::State { state: "idle".into(), message: None });
    }

    #[test]
    fn unknown_messages_are_errors() {
        assert!(serde_json::from_value::<FromDriver>(json!({"type":"rm -rf"})).is_err());
        assert!(serde_json::from_value::<FromDriver>(json!({"id":1})).is_err());
    }
}
