//! Request extractors that turn every malformed input into a 400/413 naming what is wrong.

use crate::error::ApiError;
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use std::collections::HashMap;

/// A JSON body parsed like Livy does (any content type; an empty body is `{}`), with errors
/// that name the offending field.
#[derive(Debug)]
pub struct LivyJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for LivyJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge("request body is larger than server.max_body_bytes".into())
            } else {
                ApiError::bad_request(format!("cannot read the request body: {rejection}"))
            }
        })?;
        let text: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) { b"{}" } else { &bytes };
        let de = &mut serde_json::Deserializer::from_slice(text);
        serde_path_to_error::deserialize(de).map(LivyJson).map_err(|err| {
            // The path holds the request's own keys (a map's, an unknown field's): cut, so a
            // value pasted into a key by mistake is not sent back whole.
            let path = crate::engine::launch::clip_text(&err.path().to_string(), MAX_QUOTED_NAME);
            let problem = problem_of(err.inner());
            if path == "." || path.is_empty() {
                ApiError::bad_request(format!("invalid JSON body: {problem}"))
            } else {
                ApiError::bad_request(format!("invalid JSON body: field `{path}`: {problem}"))
            }
        })
    }
}

/// How much of a request's own key names an error quotes.
const MAX_QUOTED_NAME: usize = 128;

/// What is wrong with a JSON body, without the submitted value: serde's own messages quote it
/// (`invalid type: string "s3cr3t", expected u32`), and a value can hold a credential. The
/// problem and what was expected stay; names of fields (`unknown field`, `missing field`) are
/// the request's structure and stay too.
fn problem_of(err: &serde_json::Error) -> String {
    use serde_json::error::Category;
    let text = err.to_string();
    // serde_json appends ` at line L column C`; the position is useful, the rest is rebuilt.
    let (message, position) = match text.rfind(" at line ") {
        Some(at) => (&text[..at], &text[at..]),
        None => (text.as_str(), ""),
    };
    // What was expected, in JSON's words: serde names our own types (`struct SerializedJob`).
    let expected = message.rsplit_once(", expected ").map(|(_, e)| match e {
        e if e.starts_with("struct ") => "a JSON object",
        e if e.starts_with("a sequence") || e.starts_with("tuple") => "a JSON array",
        e => e,
    });
    let problem = match err.classify() {
        Category::Data if message.starts_with("invalid type:") => {
            format!("wrong type, expected {}", expected.unwrap_or("another type"))
        }
        Category::Data if message.starts_with("invalid value:") => {
            format!("invalid value, expected {}", expected.unwrap_or("another value"))
        }
        Category::Data if message.starts_with("unknown variant") => {
            format!("unknown value, expected {}", expected.unwrap_or("another value"))
        }
        Category::Data if message.starts_with("invalid length") => {
            format!("wrong length, expected {}", expected.unwrap_or("another length"))
        }
        Category::Data
            if message.starts_with("unknown field")
                || message.starts_with("missing field")
                || message.starts_with("duplicate field") =>
        {
            crate::engine::launch::clip_text(message, 2 * MAX_QUOTED_NAME)
        }
        Category::Data => "invalid value".to_string(),
        // Syntax errors name the kind of token expected, never the input.
        Category::Syntax | Category::Eof | Category::Io => message.to_string(),
    };
    format!("{problem}{position}")
}

/// `from` / `size` query parameters, checked: negative or non-numeric values are a 400.
#[derive(Debug, Clone, Default)]
pub struct Paging {
    /// `from`, if given.
    pub from: Option<usize>,
    /// `size`, if given; `Some(None)` is `size=-1` ("all", accepted where Livy accepts it).
    pub size: Option<Option<usize>>,
    /// `order=desc`.
    pub descending: bool,
}

impl<S: Send + Sync> FromRequestParts<S> for Paging {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or("");
        let pairs: HashMap<String, String> = serde_urlencoded_pairs(query);
        let number = |name: &str, allow_all: bool| -> Result<Option<Option<usize>>, ApiError> {
            let Some(raw) = pairs.get(name) else { return Ok(None) };
            match raw.trim().parse::<i64>() {
                Ok(-1) if allow_all => Ok(Some(None)),
                Ok(n) if n >= 0 => Ok(Some(Some(usize::try_from(n).unwrap_or(usize::MAX)))),
                Ok(_) => Err(ApiError::bad_request(format!("query parameter `{name}` must not be negative"))),
                Err(_) => Err(ApiError::bad_request(format!("query parameter `{name}` must be a number"))),
            }
        };
        let from = number("from", false)?.flatten();
        let size = number("size", true)?;
        let descending = match pairs.get("order").map(String::as_str) {
            None | Some("asc") => false,
            Some("desc") => true,
            Some(_) => return Err(ApiError::bad_request("query parameter `order` must be asc or desc")),
        };
        Ok(Self { from, size, descending })
    }
}

/// The `wait` query parameter of a statement's `GET` (a long poll, an extension Livy clients
/// never send): a time such as `30s` or `500ms`, or a number of seconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct Wait(pub Option<std::time::Duration>);

impl<S: Send + Sync> FromRequestParts<S> for Wait {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let pairs = serde_urlencoded_pairs(parts.uri.query().unwrap_or(""));
        let Some(raw) = pairs.get("wait").map(|w| w.trim()) else { return Ok(Self(None)) };
        let wait = match raw.parse::<u64>() {
            Ok(secs) => Ok(std::time::Duration::from_secs(secs)),
            Err(_) => crate::config::parse_duration(raw),
        };
        wait.map(|w| Self(Some(w))).map_err(|_| {
            ApiError::bad_request("query parameter `wait` must be a time such as 30s or 500ms, or seconds")
        })
    }
}

fn serde_urlencoded_pairs(query: &str) -> HashMap<String, String> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match u8::from_str_radix(std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz"), 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Request as HttpRequest;

    async fn paging(uri: &str) -> Result<Paging, ApiError> {
        let (mut parts, _) = HttpRequest::get(uri).body(()).unwrap().into_parts();
        Paging::from_request_parts(&mut parts, &()).await
    }

    #[tokio::test]
    async fn paging_accepts_numbers_and_minus_one_size() {
        let p = paging("/s?from=2&size=5&order=desc").await.unwrap();
        assert_eq!((p.from, p.size, p.descending), (Some(2), Some(Some(5)), true));
        assert_eq!(paging("/s?size=-1").await.unwrap().size, Some(None));
        assert_eq!(paging("/s").await.unwrap().from, None);
    }

    #[tokio::test]
    async fn paging_refuses_negative_and_garbage() {
        for uri in ["/s?from=-1", "/s?size=-2", "/s?from=abc", "/s?size=1.5", "/s?order=sideways"] {
            let err = paging(uri).await.unwrap_err();
            assert!(matches!(err, ApiError::BadRequest(_)), "{uri}");
        }
        let msg = paging("/s?from=x").await.unwrap_err().to_string();
        assert!(msg.contains("from"), "{msg}");
    }

    async fn job_body(body: &str) -> String {
        let request =
            HttpRequest::post("/sessions/0/submit-job").body(axum::body::Body::from(body.to_owned())).unwrap();
        LivyJson::<super::super::dto::SerializedJob>::from_request(request, &()).await.unwrap_err().to_string()
    }

    #[tokio::test]
    async fn errors_quote_the_requests_keys_cut_short_and_never_our_type_names() {
        let key = "k".repeat(10_000);
        let msg = job_body(&format!(r#"{{"job": "AAAA", "jobType": "spark", "{key}": 1}}"#)).await;
        assert!(msg.contains("unknown field") && msg.len() < 1024, "{} bytes: {}", msg.len(), &msg[..200]);
        for body in ["[]", r#"["AAAA"]"#, "7"] {
            let msg = job_body(body).await;
            assert!(!msg.contains("SerializedJob") && msg.contains("a JSON object"), "{body}: {msg}");
        }
        let msg = job_body(r#"{"job": "AAAA", "jobType": "spark", "conf": {}}"#).await;
        assert!(msg.contains("unknown field `conf`"), "{msg}");
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%20b+c"), "a b c");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
    }
}
