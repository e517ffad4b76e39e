use super::*;
use crate::config::{self, Sources};
use axum::body::Body;
use axum::routing::get;
use axum::Router;
use tower::ServiceExt;

impl Metrics {
    /// The request figures alone (the engine's need a whole gateway: tests/it/api.rs).
    fn render_requests(&self) -> String {
        let mut registry = Registry::with_prefix("sparkgate");
        self.register_requests(&mut registry);
        encode(&registry)
    }
}

fn line<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    text.lines().find(|l| l.starts_with(prefix))
}

#[test]
fn requests_are_counted_by_method_route_and_status() {
    let m = Metrics::new();
    m.observe(&Method::GET, "/sessions/{id}", 200, 0.003);
    m.observe(&Method::GET, "/sessions/{id}", 200, 0.010);
    m.observe(&Method::POST, "/sessions", 403, 0.002);
    m.observe(&Method::from_bytes(b"BREW").unwrap(), "unmatched", 405, 0.001);
    let text = m.render_requests();
    assert_eq!(
        line(&text, r#"sparkgate_http_requests_total{method="GET",route="/sessions/{id}",status="200"}"#),
        Some(r#"sparkgate_http_requests_total{method="GET",route="/sessions/{id}",status="200"} 2"#),
        "{text}"
    );
    assert!(
        text.contains(r#"sparkgate_http_requests_total{method="POST",route="/sessions",status="403"} 1"#),
        "{text}"
    );
    assert!(text.contains(r#"{method="other",route="unmatched",status="405"} 1"#), "{text}");
    assert!(!text.contains("BREW"), "client-chosen methods never become labels: {text}");
    assert!(
        text.contains(r#"sparkgate_http_request_duration_seconds_count{method="GET",route="/sessions/{id}"} 2"#),
        "{text}"
    );
    assert!(
        text.contains(
            r#"sparkgate_http_request_duration_seconds_bucket{le="0.004",method="GET",route="/sessions/{id}"} 1"#
        ) || text.contains(
            r#"sparkgate_http_request_duration_seconds_bucket{method="GET",route="/sessions/{id}",le="0.004"} 1"#
        ),
        "one of the two GETs took under 4 ms: {text}"
    );
    assert!(text.ends_with("# EOF\n"), "{text}");
}

#[tokio::test]
async fn the_stack_counts_route_patterns_never_raw_paths() {
    let cfg = config::load(&Sources::default()).unwrap();
    let metrics = Arc::new(Metrics::new());
    let routes = Router::new()
        .route("/items/{id}", get(|| async { "item" }))
        .route("/boom", get(|| async { panic!("handler bug") as &'static str }))
        .layer(axum::middleware::from_fn(crate::audit::expose_matched_path));
    let app = crate::http::stack::with_middleware(routes, &cfg, None, Some(metrics.clone()));
    for (path, status) in [("/items/7", 200), ("/items/secret-name", 200), ("/nope/42", 404), ("/boom", 500)] {
        let response = app.clone().oneshot(Request::get(path).body(Body::empty()).unwrap()).await.unwrap();
        assert_eq!(response.status().as_u16(), status, "{path}");
    }
    let text = metrics.render_requests();
    assert!(text.contains(r#"{method="GET",route="/items/{id}",status="200"} 2"#), "{text}");
    assert!(text.contains(r#"{method="GET",route="unmatched",status="404"} 1"#), "{text}");
    assert!(text.contains(r#"{method="GET",route="/boom",status="500"} 1"#), "a panic is counted as its 500: {text}");
    assert!(!text.contains("secret-name") && !text.contains("/nope"), "raw paths never become labels: {text}");
}
