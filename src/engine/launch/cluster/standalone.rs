//! The standalone master: its driver ids in spark-submit's output, and plain HTTP with its web
//! UI (applications by name, killing a driver).

use std::time::Duration;
use tokio::io::AsyncReadExt;

/// One HTTP/1.0 exchange over plain TCP with a standalone master's web UI (the operator's
/// `spark.standalone_master_ui`): the status code and the body, or `None` if it failed or took
/// longer than `limit`. (Drivers' Spark UIs are reached only through `crate::sparkui`.)
async fn http_exchange(
    url: &str,
    limit: Duration,
    request: impl FnOnce(&str, &str) -> String,
) -> Option<(u16, String)> {
    use tokio::io::AsyncWriteExt;
    let rest = url.strip_prefix("http://")?;
    let (authority, path) = rest.split_once('/').map_or((rest, "/".to_string()), |(a, p)| (a, format!("/{p}")));
    let request = request(authority, &path);
    let attempt = async {
        let mut tcp = tokio::net::TcpStream::connect(authority).await.ok()?;
        tcp.write_all(request.as_bytes()).await.ok()?;
        let mut buf = Vec::new();
        tcp.read_to_end(&mut buf).await.ok()?;
        let text = String::from_utf8_lossy(&buf);
        let status = text.split_whitespace().nth(1)?.parse().ok()?;
        let body = text.split_once("\r\n\r\n").map_or("", |(_, body)| body);
        Some((status, body.to_string()))
    };
    tokio::time::timeout(limit, attempt).await.ok().flatten()
}

/// GETs a page; its body if the answer was 200.
async fn http_get(url: &str, accept: &str) -> Option<String> {
    let request =
        |authority: &str, path: &str| format!("GET {path} HTTP/1.0\r\nHost: {authority}\r\nAccept: {accept}\r\n\r\n");
    match http_exchange(url, Duration::from_secs(3), request).await? {
        (200, body) => Some(body),
        _ => None,
    }
}

/// GETs a JSON document.
pub async fn http_get_json(url: &str) -> Option<serde_json::Value> {
    serde_json::from_str(http_get(url, "application/json").await?.trim()).ok()
}

/// POSTs a form; returns the status code.
pub async fn http_post_form(url: &str, form: &str) -> Option<u16> {
    let request = |authority: &str, path: &str| {
        format!(
            "POST {path} HTTP/1.0\r\nHost: {authority}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{form}",
            form.len()
        )
    };
    Some(http_exchange(url, Duration::from_secs(10), request).await?.0)
}

/// Finds the id of the application named `name` in a standalone master's `/json/` document.
pub fn app_id_in_master_status(status: &serde_json::Value, name: &str) -> Option<String> {
    ["activeapps", "completedapps"].iter().find_map(|list| {
        status.get(list)?.as_array()?.iter().find_map(|app| {
            (app.get("name")?.as_str()? == name).then(|| app.get("id")?.as_str().map(str::to_string)).flatten()
        })
    })
}

/// The state of driver `driver_id` (`RUNNING`, `FINISHED`, `FAILED`, ...) in a standalone
/// master's `/json/` document, if the master lists it.
pub fn driver_state_in_master_status(status: &serde_json::Value, driver_id: &str) -> Option<String> {
    ["activedrivers", "completeddrivers"].iter().find_map(|list| {
        status.get(list)?.as_array()?.iter().find_map(|driver| {
            (driver.get("id")?.as_str()? == driver_id).then(|| driver.get("state")?.as_str().map(str::to_string))?
        })
    })
}

/// Finds a standalone cluster-mode driver id (`driver-20240101120000-0001`) in the line that
/// reports the submission: the master's "Driver successfully submitted as …" or the REST
/// client's "Submission successfully created as …" (the last occurrence, so no text before it
/// can supply the id).
pub fn find_driver_id(line: &str) -> Option<String> {
    ["submitted as ", "created as "].iter().find_map(|marker| {
        let (_, after) = line.rsplit_once(marker)?;
        let word =
            after.split(|c: char| c.is_whitespace() || matches!(c, '\'' | '"' | ',' | '.' | '(' | ')')).next()?;
        let ok = word.strip_prefix("driver-").is_some_and(|rest| {
            (10..=40).contains(&rest.len()) && rest.chars().all(|c| c.is_ascii_digit() || c == '-')
        });
        ok.then(|| word.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_drivers_state_is_read_from_the_masters_status() {
        let status = serde_json::json!({
            "activedrivers": [{"id": "driver-20260101000000-0001", "state": "RUNNING"}],
            "completeddrivers": [{"id": "driver-20260101000000-0000", "state": "FAILED"}],
        });
        let state = |id| driver_state_in_master_status(&status, id);
        assert_eq!(state("driver-20260101000000-0001").as_deref(), Some("RUNNING"));
        assert_eq!(state("driver-20260101000000-0000").as_deref(), Some("FAILED"));
        assert_eq!(state("driver-20260101000000-0009"), None);
    }

    #[tokio::test]
    async fn plain_http_exchanges_with_the_standalone_master() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let mut requests = Vec::new();
            for answer in [
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n {\"a\": 1}\n",
                "HTTP/1.1 404 Not Found\r\n\r\n{\"a\": 2}",
                "HTTP/1.1 302 Found\r\nLocation: /\r\n\r\n",
            ] {
                let (mut tcp, _) = listener.accept().await.unwrap();
                let mut buf = vec![0u8; 4096];
                let n = tcp.read(&mut buf).await.unwrap();
                requests.push(String::from_utf8_lossy(&buf[..n]).to_string());
                tcp.write_all(answer.as_bytes()).await.unwrap();
            }
            requests
        });
        let base = format!("http://127.0.0.1:{port}");
        assert_eq!(http_get_json(&format!("{base}/json/")).await, Some(serde_json::json!({"a": 1})));
        assert_eq!(http_get_json(&format!("{base}/json/")).await, None, "only a 200 counts");
        assert_eq!(http_post_form(&format!("{base}/driver/kill/"), "id=d-1&terminate=true").await, Some(302));
        let requests = server.await.unwrap();
        assert!(requests[0].starts_with("GET /json/ HTTP/1.0\r\n"), "{requests:?}");
        assert!(requests[2].starts_with("POST /driver/kill/ HTTP/1.0\r\n"), "{requests:?}");
        assert!(requests[2].ends_with("\r\n\r\nid=d-1&terminate=true"), "{requests:?}");
    }
}
