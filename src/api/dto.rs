//! Request and response shapes with Livy's exact field names and order.

use crate::engine::session::SessionSnapshot;
use axum::body::{Body, Bytes};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

/// Declares a Livy create-request body: its own fields, then the submit fields every create
/// request shares ([`SubmitFields`]), written once here. Unknown fields are refused, as Livy
/// does, and a wrong value's error names its field — which `#[serde(flatten)]` of a shared
/// struct would not keep: serde buffers flattened fields, and errors in them name no field (and
/// `deny_unknown_fields` does not work with it).
macro_rules! create_request {
    ($(#[$meta:meta])* $name:ident { $($(#[$fmeta:meta])* $field:ident: $ty:ty,)* }) => {
        $(#[$meta])*
        #[derive(Debug, Default, Deserialize)]
        #[serde(deny_unknown_fields, rename_all = "camelCase")]
        pub struct $name {
            $($(#[$fmeta])* pub $field: $ty,)*
            /// Unique name.
            pub name: Option<String>,
            /// User to run as.
            pub proxy_user: Option<String>,
            /// Jars.
            pub jars: Option<Vec<String>>,
            /// Python files.
            pub py_files: Option<Vec<String>>,
            /// Files.
            pub files: Option<Vec<String>>,
            /// Archives.
            pub archives: Option<Vec<String>>,
            /// Driver memory, e.g. `1g`.
            pub driver_memory: Option<String>,
            /// Driver cores.
            pub driver_cores: Option<u32>,
            /// Executor memory.
            pub executor_memory: Option<String>,
            /// Executor cores.
            pub executor_cores: Option<u32>,
            /// Executors.
            pub num_executors: Option<u32>,
            /// YARN queue.
            pub queue: Option<String>,
            /// Spark conf; values may be strings, numbers or booleans.
            pub conf: Option<BTreeMap<String, Value>>,
        }

        impl $name {
            /// Takes the shared submit fields out, as sent.
            pub fn take_submit(&mut self) -> SubmitFields {
                SubmitFields {
                    name: self.name.take(),
                    proxy_user: self.proxy_user.take(),
                    jars: self.jars.take(),
                    py_files: self.py_files.take(),
                    files: self.files.take(),
                    archives: self.archives.take(),
                    driver_memory: self.driver_memory.take(),
                    driver_cores: self.driver_cores.take(),
                    executor_memory: self.executor_memory.take(),
                    executor_cores: self.executor_cores.take(),
                    num_executors: self.num_executors.take(),
                    queue: self.queue.take(),
                    conf: self.conf.take(),
                }
            }
        }
    };
}

/// The submit fields of a create request as sent, before checking (which makes them a
/// [`crate::engine::SubmitSpec`]: see `AppState::checked_submit`).
#[derive(Debug, Default)]
pub struct SubmitFields {
    /// `name`.
    pub name: Option<String>,
    /// `proxyUser`.
    pub proxy_user: Option<String>,
    /// `jars`.
    pub jars: Option<Vec<String>>,
    /// `pyFiles`.
    pub py_files: Option<Vec<String>>,
    /// `files`.
    pub files: Option<Vec<String>>,
    /// `archives`.
    pub archives: Option<Vec<String>>,
    /// `driverMemory`.
    pub driver_memory: Option<String>,
    /// `driverCores`.
    pub driver_cores: Option<u32>,
    /// `executorMemory`.
    pub executor_memory: Option<String>,
    /// `executorCores`.
    pub executor_cores: Option<u32>,
    /// `numExecutors`.
    pub num_executors: Option<u32>,
    /// `queue`.
    pub queue: Option<String>,
    /// `conf`.
    pub conf: Option<BTreeMap<String, Value>>,
}

impl SubmitFields {
    /// The Spark properties of [`RESOURCE_KEYS`] that the resource fields given set.
    pub fn resource_keys(&self) -> Vec<&'static str> {
        resource_keys([
            self.driver_memory.is_some(),
            self.driver_cores.is_some(),
            self.executor_memory.is_some(),
            self.executor_cores.is_some(),
            self.num_executors.is_some(),
            self.queue.is_some(),
        ])
    }
}

create_request! {
    /// `POST /sessions` body (every field optional).
    CreateSessionRequest {
        /// Session kind.
        kind: Option<String>,
        /// Heartbeat timeout in seconds (0 = off).
        heartbeat_timeout_in_second: Option<u32>,
        /// Time to live, e.g. `2h`.
        ttl: Option<String>,
        /// Idle timeout, e.g. `30m`.
        idle_timeout: Option<String>,
    }
}

create_request! {
    /// `POST /batches` body.
    CreateBatchRequest {
        /// The application (required): a .py file or a jar.
        file: Option<String>,
        /// Main class of a jar.
        class_name: Option<String>,
        /// Application arguments.
        args: Option<Vec<String>>,
    }
}

/// The Spark properties the Livy resource fields set, in this order: `driverMemory`,
/// `driverCores`, `executorMemory`, `executorCores`, `numExecutors`, `queue`.
pub const RESOURCE_KEYS: [&str; 6] = [
    "spark.driver.memory",
    "spark.driver.cores",
    "spark.executor.memory",
    "spark.executor.cores",
    "spark.executor.instances",
    "spark.yarn.queue",
];

/// The properties of [`RESOURCE_KEYS`] whose fields a request sets (`set`, in the same order).
pub fn resource_keys(set: [bool; 6]) -> Vec<&'static str> {
    RESOURCE_KEYS.iter().zip(set).filter_map(|(key, set)| set.then_some(*key)).collect()
}

/// Spark conf values as strings; nested values are refused with the key named.
pub fn conf_to_strings(conf: BTreeMap<String, Value>) -> Result<BTreeMap<String, String>, String> {
    conf.into_iter()
        .map(|(key, value)| {
            if key.trim().is_empty() || key.contains(['\n', '\r', '=']) {
                return Err("field `conf`: a key is empty or contains `=` or a line break".into());
            }
            let text = match value {
                Value::String(s) => s,
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                other => {
                    return Err(format!(
                        "field `conf.{key}`: values must be strings, numbers or booleans, not {}",
                        type_name(&other)
                    ))
                }
            };
            if text.contains(['\n', '\r']) {
                return Err(format!("field `conf.{key}`: values must not contain line breaks"));
            }
            // Spark trims property values it reads from a file (as the gateway passes them):
            // refuse rather than change a value behind the user's back.
            let edge = |c: char| c <= ' ';
            if text.starts_with(edge) || text.ends_with(edge) {
                return Err(format!(
                    "field `conf.{key}`: values must not begin or end with whitespace (Spark would trim it)"
                ));
            }
            Ok((key, text))
        })
        .collect()
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Livy's Batch, for a caller who may view it (nobody else gets one: see
/// [`super::AppState::batch_for`]). `sparkUiUrl` is the gateway's proxy of the Spark UI.
pub fn batch_json(b: &crate::engine::batch::BatchSnapshot, log: Vec<String>) -> Value {
    json!({
        "id": b.id,
        "name": b.spec.submit.name,
        "owner": b.spec.owner,
        "proxyUser": b.spec.submit.proxy_user,
        "state": b.state.as_str(),
        "appId": b.app_id,
        "appInfo": {"driverLogUrl": null, "sparkUiUrl": b.spark_ui_url},
        "log": log,
    })
}

/// `POST /sessions/{id}/statements` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateStatementRequest {
    /// The code (required).
    pub code: Option<String>,
    /// The kind; defaults to the session's.
    pub kind: Option<String>,
}

/// `POST /sessions/{id}/submit-job` and `run-job` body (Livy's `SerializedJob`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SerializedJob {
    /// The job's bytes in base64 (required).
    pub job: Option<String>,
    /// `pyspark` or `spark` (required).
    #[serde(rename = "jobType")]
    pub job_type: Option<String>,
}

/// `POST /sessions/{id}/completion` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompletionRequest {
    /// The code.
    pub code: Option<String>,
    /// The kind; defaults to the session's.
    pub kind: Option<String>,
    /// Cursor position (characters); defaults to the end of the code.
    pub cursor: Option<usize>,
}

/// Livy's SessionInfo, for a caller who may view the session (nobody else gets one: see
/// [`super::AppState::session_for`]; its `conf` and file lists may carry credentials). `log`
/// is the last lines.
pub fn session_json(s: &SessionSnapshot, log: Vec<String>) -> Value {
    let spec = &s.spec;
    let conf: Map<String, Value> =
        spec.submit.conf.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect();
    json!({
        "id": s.id,
        "name": spec.submit.name,
        "appId": s.app_id,
        "owner": spec.owner,
        "proxyUser": spec.submit.proxy_user,
        "state": s.state.as_str(),
        "kind": spec.kind.as_str(),
        "appInfo": {"driverLogUrl": null, "sparkUiUrl": s.spark_ui_url},
        "log": log,
        "ttl": spec.ttl,
        "idleTimeout": spec.idle_timeout,
        "driverMemory": spec.submit.driver_memory,
        "driverCores": spec.submit.driver_cores.unwrap_or(0),
        "executorMemory": spec.submit.executor_memory,
        "executorCores": spec.submit.executor_cores.unwrap_or(0),
        "conf": conf,
        "archives": spec.submit.archives,
        "files": spec.submit.files,
        "heartbeatTimeoutInSecond": spec.heartbeat_timeout_secs,
        "jars": spec.submit.jars,
        "numExecutors": spec.submit.num_executors.unwrap_or(0),
        "pyFiles": spec.submit.py_files,
        "queue": spec.submit.queue,
    })
}

/// A JSON response `head` + `items` (as a JSON array's elements) + `tail`, each item turned
/// into its JSON (in one or more pieces, see [`serialized`]) only as the client reads: however
/// large the items, the gateway holds one item's pieces per response, not the whole document —
/// and pieces that share stored bytes (statement outputs) copy nothing.
pub fn streamed_json<T: Send + 'static>(
    head: String,
    items: Vec<T>,
    tail: &'static str,
    pieces: impl Fn(&T) -> Vec<Bytes> + Send + 'static,
) -> Response {
    let body = std::iter::once(Bytes::from(head))
        .chain(items.into_iter().enumerate().flat_map(move |(i, item)| {
            let comma = (i > 0).then(|| Bytes::from_static(b","));
            comma.into_iter().chain(pieces(&item))
        }))
        .chain(std::iter::once(Bytes::from_static(tail.as_bytes())));
    let stream = futures_util::stream::iter(body.map(Ok::<_, std::convert::Infallible>));
    ([(header::CONTENT_TYPE, "application/json")], Body::from_stream(stream)).into_response()
}

/// `item` as one piece of JSON, for [`streamed_json`].
pub fn serialized<T: serde::Serialize>(item: &T) -> Vec<Bytes> {
    // Serializing plain data into a Vec cannot fail; `null` would stand in for it.
    vec![serde_json::to_vec(item).map_or_else(|_| Bytes::from_static(b"null"), Bytes::from)]
}

/// Livy's `/log` answer: `size` defaults to 100 and -1 means all; `from` defaults to the last
/// `size` lines; `total` is the number of lines there are.
pub fn log_page(id: u32, lines: Vec<String>, paging: &super::Paging) -> Value {
    let total = lines.len();
    let range = log_range(total, paging);
    log_json(id, range.start, total, &lines[range])
}

/// The lines of `0..total` a `/log` request asks for, with Livy's defaults (see [`log_page`]);
/// for a source that reads only those lines.
pub fn log_range(total: usize, paging: &super::Paging) -> std::ops::Range<usize> {
    let size = paging.size.unwrap_or(Some(100));
    let from = paging.from.unwrap_or_else(|| size.map_or(0, |n| total.saturating_sub(n)));
    window(total, from, size)
}

/// The `/log` answer's shape: `lines` are lines `from..` of `total`.
pub fn log_json(id: u32, from: usize, total: usize, lines: &[String]) -> Value {
    json!({"id": id, "from": from, "total": total, "log": lines})
}

/// Livy's list answer (`GET /sessions`, `GET /batches`: both use the key `sessions`): the
/// `from`/`size` window of `items` (100 by default), each shown by `to_json`.
pub fn list_page<T>(items: &[T], paging: &crate::api::Paging, to_json: impl Fn(&T) -> Value) -> Value {
    let range = window(items.len(), paging.from.unwrap_or(0), paging.size.unwrap_or(Some(100)));
    let from = range.start;
    let shown: Vec<Value> = items[range].iter().map(to_json).collect();
    json!({"from": from, "total": items.len(), "sessions": shown})
}

/// A `from`/`size` window over `total` items.
pub fn window(total: usize, from: usize, size: Option<usize>) -> std::ops::Range<usize> {
    let start = from.min(total);
    let end = size.map_or(total, |n| start.saturating_add(n).min(total));
    start..end
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conf_values_are_stringified_and_checked() {
        let conf: BTreeMap<String, Value> =
            serde_json::from_value(json!({"spark.a": "x", "spark.b": 2, "spark.c": true})).unwrap();
        let out = conf_to_strings(conf).unwrap();
        assert_eq!(out["spark.b"], "2");
        assert_eq!(out["spark.c"], "true");
        let bad: BTreeMap<String, Value> = serde_json::from_value(json!({"spark.a": {"x": 1}})).unwrap();
        assert!(conf_to_strings(bad).unwrap_err().contains("conf.spark.a"));
        let bad: BTreeMap<String, Value> = serde_json::from_value(json!({"a=b": "x"})).unwrap();
        assert!(conf_to_strings(bad).is_err());
        for value in [" pass", "pass ", "\tpass"] {
            let bad: BTreeMap<String, Value> = serde_json::from_value(json!({"spark.x": value})).unwrap();
            assert!(conf_to_strings(bad).unwrap_err().contains("whitespace"), "{value:?}");
        }
        let inner: BTreeMap<String, Value> = serde_json::from_value(json!({"spark.x": "a b", "spark.y": ""})).unwrap();
        assert!(conf_to_strings(inner).is_ok(), "inner spaces and empty values are fine");
    }

    #[test]
    fn log_pages_default_to_the_tail() {
        let lines: Vec<String> = (0..150).map(|i| format!("l{i}")).collect();
        let page = log_page(3, lines.clone(), &crate::api::Paging::default());
        assert_eq!((page["from"].as_u64(), page["total"].as_u64()), (Some(50), Some(150)));
        assert_eq!(page["log"][0], "l50");
        let all = crate::api::Paging { size: Some(None), ..Default::default() };
        assert_eq!(log_page(3, lines.clone(), &all)["log"].as_array().unwrap().len(), 150);
        let window = crate::api::Paging { from: Some(10), size: Some(Some(2)), ..Default::default() };
        assert_eq!(log_page(3, lines, &window)["log"], json!(["l10", "l11"]));
    }

    #[test]
    fn a_viewer_sees_the_whole_session_in_livys_shape() {
        let spec = crate::engine::SessionSpec {
            owner: "alice".into(),
            submit: crate::engine::SubmitSpec {
                jars: vec!["hdfs:///a.jar".into()],
                conf: BTreeMap::from([("spark.sql.shuffle.partitions".into(), "4".into())]),
                ..Default::default()
            },
            ..Default::default()
        };
        let snapshot = SessionSnapshot {
            id: 1,
            spec: std::sync::Arc::new(spec),
            state: crate::engine::SessionState::Idle,
            app_id: Some("local-1".into()),
            spark_ui_url: Some("https://gw/sessions/1/sparkui/".into()),
        };
        let info = session_json(&snapshot, vec!["line".into()]);
        assert_eq!(info["jars"][0], "hdfs:///a.jar");
        assert_eq!(info["conf"]["spark.sql.shuffle.partitions"], "4");
        assert_eq!(info["appInfo"]["sparkUiUrl"], "https://gw/sessions/1/sparkui/");
        assert_eq!(info["log"], json!(["line"]));
        assert_eq!(info["appId"], "local-1");
    }

    #[tokio::test]
    async fn streamed_json_is_one_document() {
        use http_body_util::BodyExt;
        let response = streamed_json(
            "{\"total\":3,\"items\":[".into(),
            vec![json!({"a": 1}), json!("x"), json!(null)],
            "]}",
            serialized,
        );
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let doc: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(doc, json!({"total": 3, "items": [{"a": 1}, "x", null]}));
        let empty =
            streamed_json("[".into(), Vec::<Value>::new(), "]", serialized).into_body().collect().await.unwrap();
        assert_eq!(&empty.to_bytes()[..], b"[]");
    }

    #[test]
    fn statements_serialize_as_livy_shows_them() {
        let statement = crate::engine::Statement {
            id: 3,
            code: "1+1".into(),
            kind: crate::engine::CodeKind::PySpark,
            state: crate::engine::StatementState::Available,
            output: Some(crate::engine::session::Output::new(&json!({"status": "ok", "execution_count": 3}))),
            progress: 1.0,
            started: 10,
            completed: 20,
        };
        let text = serde_json::to_string(&statement).unwrap();
        assert_eq!(
            text,
            r#"{"id":3,"code":"1+1","state":"available","output":{"status":"ok","execution_count":3},"progress":1.0,"started":10,"completed":20}"#
        );
        // The pieces a list streams are the same document, the output's bytes not copied.
        let waiting = crate::engine::Statement {
            code: "print(\"é\\n\")".into(),
            state: crate::engine::StatementState::Running,
            output: None,
            progress: 0.37,
            ..statement.clone()
        };
        for s in [&statement, &waiting] {
            let pieces = s.json_pieces();
            let joined: Vec<u8> = pieces.iter().flat_map(|p| p.iter().copied()).collect();
            assert_eq!(String::from_utf8(joined).unwrap(), serde_json::to_string(s).unwrap());
        }
        let shared = statement.json_pieces()[1].as_ptr();
        let stored = statement.output.as_ref().unwrap().value();
        assert_eq!(stored["status"], "ok");
        assert_eq!(shared, statement.json_pieces()[1].as_ptr(), "every reader is handed the one stored copy");
    }

    #[test]
    fn windows() {
        assert_eq!(window(10, 0, None), 0..10);
        assert_eq!(window(10, 8, Some(5)), 8..10);
        assert_eq!(window(10, 20, Some(5)), 10..10);
        assert_eq!(window(10, 2, Some(3)), 2..5);
    }

    #[test]
    fn unknown_request_fields_are_refused() {
        let err = serde_json::from_value::<CreateSessionRequest>(json!({"knd": "pyspark"})).unwrap_err();
        assert!(err.to_string().contains("knd"));
        let ok: CreateSessionRequest =
            serde_json::from_value(json!({"kind": "pyspark", "heartbeatTimeoutInSecond": 5, "pyFiles": []})).unwrap();
        assert_eq!(ok.heartbeat_timeout_in_second, Some(5));
    }
}
