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
async fn tls_connect(
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
