use super::*;
use crate::config::{self, Sources};
use axum::body::Body;
use axum::routing::{get, post};
use http_body_util::BodyExt;
use std::time::Duration;
use tower::ServiceExt;

fn config(overrides: &[&str]) -> ValidatedConfig {
    config::load(&Sources { file: None, env: vec![], overrides: overrides.iter().map(|s| s.to_string()).collect() })
        .unwrap()
}

#[allow(clippy::unused_async)] // axum handlers are async by contract
async fn boom() -> &'static str {
    panic!("handler bug")
}

async fn slow() -> &'static str {
    tokio::time::sleep(Duration::from_secs(3600)).await;
    "done"
}

async fn echo(body: axum::body::Bytes) -> String {
    body.len().to_string()
}

/// The request ids as a handler (and so any log line or audit record) sees them.
async fn ids(headers: axum::http::HeaderMap) -> axum::Json<serde_json::Value> {
    let get = |name: &str| headers.get(name).map(|v| v.to_str().unwrap().to_owned());
    axum::Json(serde_json::json!({
        "request_id": get("x-request-id"),
        "client_request_id": get("x-client-request-id"),
    }))
}

fn app(cfg: &ValidatedConfig) -> Router {
    let routes = Router::new()
        .route("/boom", get(boom))
        .route("/slow", get(slow))
        .route("/ok", get(|| async { "ok" }))
        .route("/echo", post(|b: crate::api::LivyJson<serde_json::Value>| async move { b.0.to_string() }))
        .route("/raw", post(echo))
        .route("/ids", get(ids));
    with_middleware(routes, cfg, None, None)
}

async fn json_of(response: Response) -> serde_json::Value {
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&bytes).unwrap()
}

#[tokio::test]
async fn a_panic_is_a_json_500_with_the_request_id() {
    let response = app(&config(&[])).oneshot(Request::get("/boom").body(Body::empty()).unwrap()).await.unwrap();
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert!(response.headers().get("x-request-id").is_some());
    let body = json_of(response).await;
    assert!(body["msg"].as_str().unwrap().contains("request id"));
    assert!(!body.to_string().contains("handler bug"), "no internals leak");
}

#[tokio::test]
async fn a_slow_request_times_out_with_408() {
    let response = app(&config(&["server.request_timeout=\"100ms\""]))
        .oneshot(Request::get("/slow").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::REQUEST_TIMEOUT);
    assert_eq!(json_of(response).await["msg"], "request timed out");
}

#[tokio::test]
async fn overload_is_shed_with_503_and_normal_load_is_served() {
    let app = app(&config(&["server.max_concurrent_requests=1"]));
    let busy = tokio::spawn(app.clone().oneshot(Request::get("/slow").body(Body::empty()).unwrap()));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let shed = app.clone().oneshot(Request::get("/ok").body(Body::empty()).unwrap()).await.unwrap();
    assert_eq!(shed.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(json_of(shed).await["msg"].as_str().unwrap().contains("overloaded"));
    busy.abort();
    let _ = busy.await;
    let ok = app.oneshot(Request::get("/ok").body(Body::empty()).unwrap()).await.unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
}

#[tokio::test]
async fn bodies_over_the_limit_are_a_json_413() {
    let app = app(&config(&["server.max_body_bytes=2048"]));
    let big = format!("{{\"x\": \"{}\"}}", "a".repeat(4096));
    let response = app.clone().oneshot(Request::post("/echo").body(Body::from(big)).unwrap()).await.unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert!(json_of(response).await["msg"].as_str().unwrap().contains("max_body_bytes"));
    let small = app.oneshot(Request::post("/echo").body(Body::from("{\"x\": 1}")).unwrap()).await.unwrap();
    assert_eq!(small.status(), StatusCode::OK);
}

#[tokio::test]
async fn unknown_paths_and_methods_are_json() {
    let app = app(&config(&[]));
    let response = app.clone().oneshot(Request::get("/nowhere").body(Body::empty()).unwrap()).await.unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert!(json_of(response).await["msg"].is_string());
    let response = app.oneshot(Request::delete("/ok").body(Body::empty()).unwrap()).await.unwrap();
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert!(json_of(response).await["msg"].is_string());
}

/// Sends `/ids` with these headers; returns the response's `x-request-id` and what the
/// handler saw.
async fn ids_seen(headers: &[(&str, &[u8])]) -> (String, serde_json::Value) {
    let mut request = Request::get("/ids");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = app(&config(&[])).oneshot(request.body(Body::empty()).unwrap()).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let echoed = response.headers()["x-request-id"].to_str().unwrap().to_owned();
    (echoed, json_of(response).await)
}

#[tokio::test]
async fn a_client_request_id_is_replaced_by_the_gateways_and_kept_aside() {
    let (echoed, seen) = ids_seen(&[("x-request-id", b"abc-123")]).await;
    assert_ne!(echoed, "abc-123", "the client cannot choose the id the audit trail records");
    assert!(uuid::Uuid::parse_str(&echoed).is_ok(), "{echoed}");
    assert_eq!(seen["request_id"], echoed.as_str(), "handlers, logs and the response agree");
    assert_eq!(seen["client_request_id"], "abc-123");
}

#[tokio::test]
async fn without_a_client_request_id_there_is_none_aside() {
    let (echoed, seen) = ids_seen(&[]).await;
    assert!(uuid::Uuid::parse_str(&echoed).is_ok(), "{echoed}");
    assert_eq!(seen["request_id"], echoed.as_str());
    assert!(seen["client_request_id"].is_null());
}

#[tokio::test]
async fn every_request_gets_a_fresh_id_even_when_the_client_repeats_one() {
    let (first, _) = ids_seen(&[("x-request-id", b"same")]).await;
    let (second, _) = ids_seen(&[("x-request-id", b"same")]).await;
    assert_ne!(first, second);
}

#[tokio::test]
async fn a_long_client_request_id_is_clipped_to_128_characters() {
    let long = "a".repeat(500);
    let (_, seen) = ids_seen(&[("x-request-id", long.as_bytes())]).await;
    assert_eq!(seen["client_request_id"], "a".repeat(128));
}

#[tokio::test]
async fn a_client_request_id_that_is_not_visible_ascii_is_dropped() {
    for bad in [&b"has space"[..], b"tab\there", b"caf\xc3\xa9", b""] {
        let (echoed, seen) = ids_seen(&[("x-request-id", bad)]).await;
        assert!(seen["client_request_id"].is_null(), "{bad:?}: {seen}");
        assert!(uuid::Uuid::parse_str(&echoed).is_ok(), "{echoed}");
    }
}

#[tokio::test]
async fn a_client_cannot_set_the_client_request_id_itself() {
    let (_, seen) = ids_seen(&[("x-client-request-id", b"forged")]).await;
    assert!(seen["client_request_id"].is_null(), "{seen}");
    let (_, seen) = ids_seen(&[("x-client-request-id", b"forged"), ("x-request-id", b"mine")]).await;
    assert_eq!(seen["client_request_id"], "mine");
}
