//! TLS: client certificates (mTLS) accepted and refused, and a certificate swapped under load
//! without a restart or a failed request.

use crate::support::TestGateway;
use reqwest::Method;
use sparkgate::tls::{generate_client_pki, generate_pki, ClientCertSpec, PemPair};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const POLICY: &str = "[gateway]\nusers = [\"carol\", \"dave\"]\n";

fn client_with(gw: &TestGateway, identity: Option<&PemPair>) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&gw.ca_pem).unwrap())
        .tls_built_in_root_certs(false)
        .use_rustls_tls()
        .timeout(Duration::from_secs(20));
    if let Some(id) = identity {
        let pem = format!("{}{}", id.cert_pem, id.key_pem.expose());
        b = b.identity(reqwest::Identity::from_pem(pem.as_bytes()).unwrap());
    }
    b.build().unwrap()
}

#[tokio::test]
async fn client_certificates_are_verified_and_mapped_to_users() {
    let (ca, certs) = generate_client_pki(
        "client CA",
        &[
            ClientCertSpec { common_name: "carol".into(), email: None, expired: false },
            ClientCertSpec { common_name: "dave".into(), email: None, expired: true },
        ],
    )
    .unwrap();
    let (_, strangers) = generate_client_pki(
        "another CA",
        &[ClientCertSpec { common_name: "carol".into(), email: None, expired: false }],
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca_path = dir.path().join("client-ca.pem");
    std::fs::write(&ca_path, ca).unwrap();
    let gw = TestGateway::start_with_policy(
        &["auth.methods=[\"client_cert\", \"jwt\"]", &format!("auth.client_cert.ca=\"{}\"", ca_path.display())],
        POLICY,
    );
    let url = gw.url("/sessions");
    // A valid certificate authenticates carol.
    let r = client_with(&gw, Some(&certs[0])).get(&url).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    // An expired one, or one from a CA the gateway does not trust, fails the TLS handshake.
    assert!(client_with(&gw, Some(&certs[1])).get(&url).send().await.is_err(), "expired");
    assert!(client_with(&gw, Some(&strangers[0])).get(&url).send().await.is_err(), "untrusted CA");
    // Without a certificate (not required here) other schemes still work, or it is a 401.
    assert_eq!(client_with(&gw, None).get(&url).send().await.unwrap().status().as_u16(), 401);
    let (status, _, _) = gw.call(Method::GET, "/sessions", Some(&gw.token("dave", &[])), None).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_required_client_certificate_refuses_connections_without_one() {
    let (ca, certs) = generate_client_pki(
        "client CA",
        &[ClientCertSpec { common_name: "x".into(), email: Some("carol@example.com".into()), expired: false }],
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca_path = dir.path().join("client-ca.pem");
    std::fs::write(&ca_path, ca).unwrap();
    let gw = TestGateway::start_with_policy(
        &[
            "auth.methods=[\"client_cert\"]",
            &format!("auth.client_cert.ca=\"{}\"", ca_path.display()),
            "auth.client_cert.required=true",
            "auth.client_cert.user_from=\"san_email\"",
            "auth.client_cert.user_pattern=\"^([^@]+)@example\\\\.com$\"",
        ],
        POLICY,
    );
    let url = gw.url("/sessions");
    assert!(client_with(&gw, None).get(&url).send().await.is_err());
    let r = client_with(&gw, Some(&certs[0])).get(&url).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200, "carol, from the e-mail SAN");
}

/// A TLS connection to `addr` trusting `ca_pems`.
pub(crate) async fn tls_connect(
    addr: std::net::SocketAddr,
    ca_pems: &[&str],
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    for pem in ca_pems {
        for cert in rustls_pemfile::certs(&mut pem.as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config)).connect("127.0.0.1".try_into().unwrap(), tcp).await.unwrap()
}

/// The certificate the server presents to a fresh connection.
async fn presented_cert(addr: std::net::SocketAddr, ca_pems: &[&str]) -> Vec<u8> {
    let tls = tls_connect(addr, ca_pems).await;
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

fn addr_of(gw: &TestGateway) -> std::net::SocketAddr {
    gw.base.trim_start_matches("https://").parse().unwrap()
}

#[tokio::test]
async fn a_client_trickling_its_headers_is_dropped() {
    let gw = TestGateway::start(&["server.header_timeout=\"2s\""]);
    let ca = String::from_utf8(gw.ca_pem.clone()).unwrap();
    let mut tls = tls_connect(addr_of(&gw), &[&ca]).await;
    tls.write_all(b"GET /version HTTP/1.1\r\nHost: 127.0.0.1\r\n").await.unwrap();
    // The rest of the headers never comes: the gateway closes the connection.
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(60), tls.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the connection was still open after a minute");
    assert!(!String::from_utf8_lossy(&buf).contains("\"version\""), "{}", String::from_utf8_lossy(&buf));
    // A client that completes the handshake and then sends nothing at all is dropped too, and
    // so is one that sends only the start of the HTTP/2 preface.
    let mut silent = tls_connect(addr_of(&gw), &[&ca]).await;
    let read = tokio::time::timeout(Duration::from_secs(60), silent.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "a silent connection was still open after a minute");
    let mut partial = tls_connect(addr_of(&gw), &[&ca]).await;
    partial.write_all(b"PRI * HTTP").await.unwrap();
    let read = tokio::time::timeout(Duration::from_secs(60), partial.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "a partial h2 preface held the connection for a minute");
    assert_eq!(gw.get("/version").await.0, 200, "others are served");
}

#[tokio::test]
async fn one_address_cannot_take_every_connection() {
    let gw = TestGateway::start(&["server.max_connections_per_ip=2", "server.header_timeout=\"120s\""]);
    let ca = String::from_utf8(gw.ca_pem.clone()).unwrap();
    let first = tls_connect(addr_of(&gw), &[&ca]).await;
    let _second = tls_connect(addr_of(&gw), &[&ca]).await;
    // A third connection from the same address is closed at once, not queued.
    let refused = gw.client().get(gw.url("/version")).send().await;
    assert!(refused.is_err(), "served beyond the per-address cap: {refused:?}");
    drop(first);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        // The gateway notices the closed connection and frees its slot.
        if let Ok(r) = gw.client().get(gw.url("/version")).send().await {
            assert_eq!(r.status(), 200);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the slot was never freed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn connections_beyond_the_cap_wait_for_a_free_slot() {
    let gw = TestGateway::start(&["server.max_connections=2", "server.header_timeout=\"120s\""]);
    let ca = String::from_utf8(gw.ca_pem.clone()).unwrap();
    let first = tls_connect(addr_of(&gw), &[&ca]).await;
    let _second = tls_connect(addr_of(&gw), &[&ca]).await;
    // Two idle connections hold both slots: a third client is not served...
    let client = |limit| {
        reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&gw.ca_pem).unwrap())
            .tls_built_in_root_certs(false)
            .timeout(limit)
            .build()
            .unwrap()
    };
    let waiting = client(Duration::from_secs(2)).get(gw.url("/version")).send().await;
    assert!(waiting.is_err(), "served beyond the connection cap: {waiting:?}");
    // ...until one of them closes.
    drop(first);
    let served = client(Duration::from_secs(60)).get(gw.url("/version")).send().await.unwrap();
    assert_eq!(served.status(), 200);
}

fn der(pem: &str) -> Vec<u8> {
    rustls_pemfile::certs(&mut pem.as_bytes()).next().unwrap().unwrap().to_vec()
}

#[tokio::test]
async fn the_certificate_is_reloaded_under_load_without_failures() {
    let first = generate_pki("first CA", &["127.0.0.1".into(), "localhost".into()]).unwrap();
    let second = generate_pki("second CA", &["127.0.0.1".into(), "localhost".into()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("server.pem"), dir.path().join("server-key.pem"));
    std::fs::write(&cert, &first.server.cert_pem).unwrap();
    std::fs::write(&key, first.server.key_pem.expose()).unwrap();
    let gw = TestGateway::start_with_policy(
        &[
            "auth.methods=[\"jwt\"]",
            &format!("tls.cert=\"{}\"", cert.display()),
            &format!("tls.key=\"{}\"", key.display()),
            "tls.reload_interval=\"200ms\"",
        ],
        POLICY,
    );
    let addr: std::net::SocketAddr = gw.base.trim_start_matches("https://").parse().unwrap();
    assert_eq!(presented_cert(addr, &[&first.ca_pem]).await, der(&first.server.cert_pem));

    // Load: clients that trust both CAs keep calling while the files are replaced.
    let token = gw.token("dave", &[]);
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(first.ca_pem.as_bytes()).unwrap())
        .add_root_certificate(reqwest::Certificate::from_pem(second.ca_pem.as_bytes()).unwrap())
        .tls_built_in_root_certs(false)
        .build()
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (client, url, token, stop, ok, failed) =
            (client.clone(), gw.url("/sessions"), token.clone(), stop.clone(), ok.clone(), failed.clone());
        workers.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) && n < 2000 {
                n += 1;
                match client.get(&url).bearer_auth(&token).send().await {
                    Ok(r) if r.status().is_success() => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    std::fs::write(&key, second.server.key_pem.expose()).unwrap();
    std::fs::write(&cert, &second.server.cert_pem).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while presented_cert(addr, &[&first.ca_pem, &second.ca_pem]).await != der(&second.server.cert_pem) {
        assert!(tokio::time::Instant::now() < deadline, "the new certificate was not picked up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    assert_eq!(failed.load(Ordering::Relaxed), 0, "requests failed during the reload");
    assert!(ok.load(Ordering::Relaxed) > 20);
    // A broken pair keeps the current certificate.
    std::fs::write(&cert, "garbage").unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(presented_cert(addr, &[&second.ca_pem]).await, der(&second.server.cert_pem));
}

/// Sends `head` on a fresh HTTP/1 TLS connection and returns the status of the answer (None if
/// the connection failed before one arrived: a server may close while a large head is still
/// being written) and the local address the connection came from.
async fn raw_h1(gw: &TestGateway, head: String) -> (Option<u16>, std::net::SocketAddr) {
    let ca = String::from_utf8(gw.ca_pem.clone()).unwrap();
    let tls = tls_connect(addr_of(gw), &[&ca]).await;
    let local = tls.get_ref().0.local_addr().unwrap();
    let (mut reader, mut writer) = tokio::io::split(tls);
    let writing = tokio::spawn(async move {
        let _ = writer.write_all(head.as_bytes()).await;
        writer
    });
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(60), reader.read_to_end(&mut answer)).await;
    drop(writing.await);
    let text = String::from_utf8_lossy(&answer);
    let status = text.strip_prefix("HTTP/1.1 ").and_then(|rest| rest.get(..3)).and_then(|s| s.parse().ok());
    (status, local)
}

/// The gateway's audit records, after flushing it.
fn audit_records(gw: &TestGateway) -> Vec<serde_json::Value> {
    gw.audit.flush().unwrap();
    std::fs::read_to_string(gw.audit.path()).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// Waits (generously) until `audit_records` holds a record matching `pred`.
async fn audited(gw: &TestGateway, what: &str, pred: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(record) = audit_records(gw).into_iter().find(&pred) {
            return record;
        }
        assert!(tokio::time::Instant::now() < deadline, "no audit record for {what}: {:#?}", audit_records(gw));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn h2_client(gw: &TestGateway) -> reqwest::Client {
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&gw.ca_pem).unwrap())
        .tls_built_in_root_certs(false)
        .use_rustls_tls()
        .http2_prior_knowledge()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

fn h1_client(gw: &TestGateway) -> reqwest::Client {
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&gw.ca_pem).unwrap())
        .tls_built_in_root_certs(false)
        .use_rustls_tls()
        .http1_only()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

#[tokio::test]
async fn requests_the_http_layer_refuses_itself_are_audited() {
    // Heads far beyond every limit, so that hyper (HTTP/1) and h2 answer them before the
    // gateway's own service runs: they must still leave a record, without the request's data.
    let gw = TestGateway::start(&[]);
    let big = "a".repeat(600_000);
    let (_, from_431) = raw_h1(&gw, format!("GET /version HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: {big}\r\n\r\n")).await;
    let (status, from_414) =
        raw_h1(&gw, format!("GET /{} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", "u".repeat(70_000))).await;
    assert_eq!(status, Some(414));
    let (status, from_400) = raw_h1(&gw, "GET /version HTTP/1.1\r\nHost 127.0.0.1\r\n\r\n".to_string()).await;
    assert_eq!(status, Some(400));
    for (from, code) in [(from_431, 431), (from_414, 414), (from_400, 400)] {
        let record = audited(&gw, &format!("the HTTP/1 {code}"), |r| r["remote_addr"] == from.to_string()).await;
        assert_eq!(record["status"], code, "{record}");
        assert_eq!(record["kind"], "request");
        assert_eq!(record["action"], "(request refused by the HTTP/1 parser)");
    }
    // h2: a header list h2 refuses itself (431, or the connection ends); the count is recorded
    // when the connection ends.
    let client = h2_client(&gw);
    assert_eq!(client.get(gw.url("/version")).send().await.unwrap().version(), reqwest::Version::HTTP_2);
    let refused = client.get(gw.url("/version")).header("x-big", &big[..300_000]).send().await;
    assert!(refused.as_ref().map_or(true, |r| r.status() == 431), "{refused:?}");
    drop(client);
    let record = audited(&gw, "the h2 refusal", |r| r["action"] == "(requests refused by the HTTP/2 layer)").await;
    assert!(record["reason"].as_str().unwrap().starts_with("1 HTTP/2 request(s)"), "{record}");
    // No record holds the request's data.
    let text = std::fs::read_to_string(gw.audit.path()).unwrap();
    assert!(!text.contains("aaaaaaaa") && !text.contains("uuuuuuuu"));
    assert_eq!(gw.get("/version").await.0, 200, "the gateway serves on");
}

#[tokio::test]
async fn heads_over_the_configured_limits_are_refused_and_audited_on_both_protocols() {
    let gw = TestGateway::start(&["server.max_header_bytes=16384", "server.max_uri_bytes=2048"]);
    for (client, version) in [(h1_client(&gw), reqwest::Version::HTTP_11), (h2_client(&gw), reqwest::Version::HTTP_2)] {
        // Allowed: within the limits.
        let ok = client.get(gw.url(&format!("/version?pad={}", "q".repeat(1500)))).header("x-pad", "p".repeat(8000));
        let ok = ok.send().await.unwrap();
        assert_eq!((ok.status().as_u16(), ok.version()), (200, version));
        // Denied: a header list and a target over the limits.
        let r = client.get(gw.url("/version")).header("x-big", "b".repeat(17_000)).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 431);
        let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
        let body: serde_json::Value = r.json().await.unwrap();
        assert!(body["msg"].as_str().unwrap().contains("server.max_header_bytes allows 16384"), "{body}");
        let r = client.get(gw.url(&format!("/version?pad={}", "t".repeat(3000)))).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 414);
        let id_414 = r.headers()["x-request-id"].to_str().unwrap().to_string();
        if version == reqwest::Version::HTTP_11 {
            // The first refusal of each kind from an address is written in full...
            let record = audited(&gw, "the 431", |rec| rec["request_id"] == id.as_str()).await;
            assert_eq!(
                (record["status"].as_u64(), record["action"].as_str()),
                (Some(431), Some("GET (request head over the limits)"))
            );
            let record = audited(&gw, "the 414", |rec| rec["request_id"] == id_414.as_str()).await;
            assert_eq!(record["status"], 414);
            assert!(record["reason"].as_str().unwrap().contains("server.max_uri_bytes allows 2048"), "{record}");
            assert!(record["remote_addr"].as_str().unwrap().starts_with("127.0.0.1:"), "{record}");
        } else {
            // ...and anonymous repeats within the window are counted (a client could send them
            // as fast as it likes), in a summary written at the latest at the flush.
            let summary = audited(&gw, "the counted repeat", |rec| {
                rec["action"] == "GET (request head over the limits)" && rec["repeated"].as_u64() >= Some(1)
            })
            .await;
            assert!(summary["reason"].as_str().unwrap().contains("counted"), "{summary}");
        }
    }
    let text = std::fs::read_to_string(gw.audit.path()).unwrap();
    assert!(!text.contains("bbbbbbbb") && !text.contains("tttttttt"), "no request data in the trail");
}
