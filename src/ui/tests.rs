use super::view::{output_view, utc_time, OutputView};
use super::*;
use serde_json::json;

#[test]
fn outputs_are_shown_by_type() {
    let text = output_view(&json!({"status": "ok", "data": {"text/plain": "<b>5</b>"}}));
    assert!(matches!(text, OutputView::Text(t) if t == "<b>5</b>"));
    let table = output_view(&json!({"status": "ok", "data": {"application/json": {
        "schema": {"type": "struct", "fields": [{"name": "id"}, {"name": "v"}]},
        "data": [[1, "a"], [2, null]]}}}));
    let OutputView::Table { columns, rows } = table else { panic!("not a table: {table:?}") };
    assert_eq!(columns, vec!["id", "v"]);
    assert_eq!(rows, vec![vec!["1", "a"], vec!["2", "null"]]);
    let image = output_view(&json!({"status": "ok", "data": {"image/png": "iVBORw0KGgo=\n", "text/plain": ""}}));
    assert!(matches!(image, OutputView::Image(p) if p == "iVBORw0KGgo="));
    // Anything but base64 never reaches a data: URL; the text is shown instead.
    let bad = output_view(&json!({"status": "ok", "data": {"image/png": "x\" onerror=\"alert(1)", "text/plain": "t"}}));
    assert!(matches!(bad, OutputView::Text(t) if t == "t"));
    let error =
        output_view(&json!({"status": "error", "ename": "NameError", "evalue": "x", "traceback": ["a\n", "b\n"]}));
    assert!(
        matches!(error, OutputView::Error { ename, traceback, .. } if ename == "NameError" && traceback.len() == 2)
    );
    let other = output_view(&json!({"status": "ok", "data": {"application/json": {"k": 1}}}));
    assert!(matches!(other, OutputView::Json(j) if j.contains("\"k\": 1")));
}

#[test]
fn after_login_only_pages_of_the_ui_are_reached() {
    assert_eq!(safe_next(Some("/ui/sessions/3")), "/ui/sessions/3");
    for bad in ["https://evil.example/", "//evil.example/ui/", "/ui//evil.example", "/sessions", "/ui/x\\y", "ui/"] {
        assert_eq!(safe_next(Some(bad)), "/ui/sessions", "{bad}");
    }
    assert_eq!(safe_next(None), "/ui/sessions");
}

#[test]
fn forms_are_accepted_from_the_gateways_own_origin_only() {
    let headers = |pairs: &[(&str, &str)]| {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        h
    };
    assert!(same_origin(
        &headers(&[("sec-fetch-site", "same-origin"), ("origin", "https://evil")]),
        &Uri::from_static("/ui/login")
    ));
    assert!(!same_origin(&headers(&[("sec-fetch-site", "cross-site")]), &Uri::from_static("/ui/login")));
    assert!(!same_origin(&headers(&[("sec-fetch-site", "same-site")]), &Uri::from_static("/ui/login")));
    assert!(same_origin(
        &headers(&[("origin", "https://gw:8998"), ("host", "gw:8998")]),
        &Uri::from_static("/ui/login")
    ));
    assert!(!same_origin(
        &headers(&[("origin", "https://evil:8998"), ("host", "gw:8998")]),
        &Uri::from_static("/ui/login")
    ));
    assert!(!same_origin(&headers(&[("origin", "null"), ("host", "gw:8998")]), &Uri::from_static("/ui/login")));
    assert!(same_origin(&headers(&[("host", "gw:8998")]), &Uri::from_static("/ui/login")));
    // HTTP/2: no Host header, the authority is in the request's URI.
    let h2 = Uri::from_static("https://gw:8998/ui/login");
    assert!(same_origin(&headers(&[("origin", "https://gw:8998")]), &h2));
    assert!(!same_origin(&headers(&[("origin", "https://evil:8998")]), &h2));
}

#[test]
fn times_are_utc() {
    assert_eq!(utc_time(0), "1970-01-01 00:00:00 UTC");
    assert_eq!(utc_time(1_764_569_760_000), "2025-12-01 06:16:00 UTC");
}

#[test]
fn the_equivalent_command_line_shows_the_request_without_secrets() {
    use crate::engine::batch::BatchSpec;
    use crate::engine::SubmitSpec;
    let spec = BatchSpec {
        owner: "alice".into(),
        effective_user: "alice".into(),
        file: "s3a://bucket/app.py?X-Amz-Signature=abc".into(),
        class_name: None,
        args: vec!["--password".into(), "hunter2".into(), "api.token=t0k3n".into(), "it's".into(), "plain".into()],
        submit: SubmitSpec {
            name: Some("nightly job".into()),
            proxy_user: Some("alice".into()),
            jars: vec!["https://user:pw@repo.example/lib.jar?sig=1".into()],
            driver_memory: Some("1g".into()),
            conf: [("spark.hadoop.fs.s3a.secret.key", "AKIA"), ("spark.app.color", "blue")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..SubmitSpec::default()
        },
    };
    let line = view::submit_command(&spec, "local[2]", "client");
    assert_eq!(
        line,
        "spark-submit --master 'local[2]' --deploy-mode client --name 'nightly job' --proxy-user alice \
         --driver-memory 1g --jars https://repo.example/lib.jar --conf spark.app.color=blue \
         --conf 'spark.hadoop.fs.s3a.secret.key=<redacted>' s3a://bucket/app.py --password '<redacted>' \
         'api.token=<redacted>' 'it'\\''s' plain"
    );
    for secret in ["hunter2", "t0k3n", "AKIA", "abc", "pw@", "sig=1"] {
        assert!(!line.contains(secret), "{secret} in {line}");
    }
    // What a review found shown: account keys, API keys, URLs in conf values, short flags.
    let more = BatchSpec {
        args: vec!["--api-key".into(), "APIKEY123".into(), "-p".into(), "PW123".into()],
        submit: SubmitSpec {
            conf: [
                ("spark.hadoop.fs.azure.account.key.acct.blob.core.windows.net", "AZUREKEY=="),
                ("spark.myapp.apikey", "APIKEY2"),
                ("spark.myapp.access_key", "AK"),
                ("spark.myapp.url", "https://u:pass@h/x?sig=SIG"),
                ("spark.myapp.pattern", "a#b?c"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
            ..SubmitSpec::default()
        },
        ..spec
    };
    let line = view::submit_command(&more, "yarn", "cluster");
    for secret in ["AZUREKEY", "APIKEY2", "AK'", "pass@", "SIG", "APIKEY123", "PW123"] {
        assert!(!line.contains(secret), "{secret} in {line}");
    }
    assert!(line.contains("spark.myapp.url=https://h/x") && line.contains("'spark.myapp.pattern=a#b?c'"), "{line}");
}
