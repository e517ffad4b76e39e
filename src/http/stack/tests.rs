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

fn app(cfg: &ValidatedConfig) -> Router {
    let routes = Router::new()
        .route("/boom", get(boom))
        .route("/slow", get(slow))
        .route("/ok", get(|| async { "ok" }))
        .route("/echo", post(|b: crate::api::LivyJson<serde_json::Value>| async move { b.0.to_string() }))
        .route("/raw", post(echo));
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

#[tokio::test]
async fn an_incoming_request_id_is_kept_and_echoed() {
    let response = app(&config(&[]))
        .oneshot(Request::get("/ok").header("x-request-id", "abc-123").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "abc-123");
}
