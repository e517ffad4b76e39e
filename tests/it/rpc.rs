//! The driver RPC channel under attack: a raw client that skips, fakes or replays the
//! handshake, sends oversized frames or garbage. Each is refused and the connection closed,
//! and the gateway goes on serving its real drivers.

use crate::support::{gateway, shared_session, TestGateway};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use sparkgate::rpc::handshake::{fresh_nonce, Role, SessionSecret};
use sparkgate::rpc::{DriverLink, DriverRegistry, FromDriver, HandshakeError, Refusal, RpcSettings, ToDriver};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_util::codec::{Framed, LengthDelimitedCodec};

type Conn = Framed<TlsStream<TcpStream>, LengthDelimitedCodec>;

async fn tls_connect(addr: SocketAddr, ca_pem: &str) -> TlsStream<TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await.unwrap();
    connector.connect("127.0.0.1".try_into().unwrap(), tcp).await.unwrap()
}

async fn connect(addr: SocketAddr, ca_pem: &str) -> Conn {
    Framed::new(tls_connect(addr, ca_pem).await, LengthDelimitedCodec::new())
}

async fn send(conn: &mut Conn, v: Value) {
    conn.send(Bytes::from(serde_json::to_vec(&v).unwrap())).await.unwrap();
}

/// The next frame, or None when the server closed the connection (or failed it).
async fn recv(conn: &mut Conn) -> Option<Value> {
    match tokio::time::timeout(Duration::from_secs(15), conn.next()).await {
        Ok(Some(Ok(frame))) => Some(serde_json::from_slice(&frame).unwrap()),
        Ok(_) => None,
        Err(_) => panic!("the server neither answered nor closed the connection"),
    }
}

fn hello(session_id: u64, nonce: &str) -> Value {
    json!({"type": "hello", "protocol_version": 1, "session_id": session_id, "client_nonce": nonce})
}

async fn gateway_still_serves_its_driver(before: u64) {
    let gw = gateway();
    let session = shared_session().await;
    let st = gw.run(session, "pyspark", "21 * 2").await;
    assert_eq!(st["output"]["data"]["text/plain"], "42", "{st}");
    assert!(gw.manager.rpc_auth_failures() > before);
}

#[tokio::test]
async fn unknown_session_is_refused_after_a_challenge_like_a_wrong_proof() {
    let gw = gateway();
    let before = gw.manager.rpc_auth_failures();
    let mut conn = connect(gw.rpc_addr, &gw.rpc_ca_pem).await;
    let cn = fresh_nonce();
    send(&mut conn, hello(424_242, &cn)).await;
    // Whether a session id is live is not revealed: an unknown one is challenged too...
    let challenge = recv(&mut conn).await.expect("an unknown session gets a challenge like a live one");
    assert_eq!(challenge["type"], "challenge");
    let sn = challenge["server_nonce"].as_str().unwrap();
    let guess = SessionSecret::generate().mac(Role::Driver, 424_242, &cn, sn);
    send(&mut conn, json!({"type": "proof", "mac": guess})).await;
    // ...and fails only at the proof.
    assert_eq!(recv(&mut conn).await, None, "no `ok` without the secret");
    gateway_still_serves_its_driver(before).await;
}

#[tokio::test]
async fn wrong_secret_is_refused() {
    let gw = gateway();
    let session = shared_session().await;
    let before = gw.manager.rpc_auth_failures();
    let mut conn = connect(gw.rpc_addr, &gw.rpc_ca_pem).await;
    let cn = fresh_nonce();
    send(&mut conn, hello(session, &cn)).await;
    let challenge = recv(&mut conn).await.expect("a live session gets a challenge");
    assert_eq!(challenge["type"], "challenge");
    let sn = challenge["server_nonce"].as_str().unwrap();
    let forged = SessionSecret::generate().mac(Role::Driver, session as u32, &cn, sn);
    send(&mut conn, json!({"type": "proof", "mac": forged})).await;
    assert_eq!(recv(&mut conn).await, None, "no `ok` for a wrong secret");
    gateway_still_serves_its_driver(before).await;
}

#[tokio::test]
async fn messages_before_the_handshake_are_refused() {
    let gw = gateway();
    let before = gw.manager.rpc_auth_failures();
    let mut conn = connect(gw.rpc_addr, &gw.rpc_ca_pem).await;
    send(&mut conn, json!({"type": "statement_result", "id": 0, "state": "available", "output": {}})).await;
    assert_eq!(recv(&mut conn).await, None);
    let mut conn = connect(gw.rpc_addr, &gw.rpc_ca_pem).await;
    send(&mut conn, json!({"type": "hello", "protocol_version": 99, "session_id": 0, "client_nonce": fresh_nonce()}))
        .await;
    assert_eq!(recv(&mut conn).await, None, "unsupported protocol version");
    gateway_still_serves_its_driver(before).await;
}

#[tokio::test]
async fn oversized_frames_and_garbage_close_the_connection() {
    let gw = gateway();
    let before = gw.manager.rpc_auth_failures();
    // A length prefix far beyond rpc.max_frame_bytes.
    let mut tls = tls_connect(gw.rpc_addr, &gw.rpc_ca_pem).await;
    tls.write_all(&0x7fff_ffffu32.to_be_bytes()).await.unwrap();
    tls.write_all(&[b'{'; 1024]).await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(15), tls.read(&mut buf)).await.unwrap().unwrap_or(0);
    assert_eq!(n, 0);
    // Before the proof, even a frame within rpc.max_frame_bytes is too big: an anonymous peer
    // cannot make the gateway reserve large buffers.
    let mut tls = tls_connect(gw.rpc_addr, &gw.rpc_ca_pem).await;
    tls.write_all(&(64u32 * 1024).to_be_bytes()).await.unwrap();
    tls.write_all(&[b'{'; 1024]).await.unwrap();
    let n = tokio::time::timeout(Duration::from_secs(15), tls.read(&mut buf)).await.unwrap().unwrap_or(0);
    assert_eq!(n, 0);
    // A well-sized frame that is not JSON.
    let mut conn = connect(gw.rpc_addr, &gw.rpc_ca_pem).await;
    conn.send(Bytes::from_static(b"\x00\xffnot json at all")).await.unwrap();
    assert_eq!(recv(&mut conn).await, None);
    // Not even TLS.
    let mut tcp = TcpStream::connect(gw.rpc_addr).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(15), tcp.read_to_end(&mut buf)).await.unwrap();
    assert!(!String::from_utf8_lossy(&buf).contains("challenge"));
    gateway_still_serves_its_driver(before).await;
}

#[tokio::test]
async fn silent_clients_are_dropped_after_the_handshake_timeout() {
    let gw = gateway();
    let mut conn = connect(gw.rpc_addr, &gw.rpc_ca_pem).await;
    // rpc.handshake_timeout is 3s in the test gateway.
    let started = tokio::time::Instant::now();
    assert_eq!(recv(&mut conn).await, None);
    assert!(started.elapsed() >= Duration::from_secs(2));
}

/// A registry with one session whose secret the test knows, so the test can act as an honest
/// driver and then try to replay what it sent.
#[derive(Debug, Default)]
struct KnownSecret {
    attached: Mutex<Vec<u64>>,
    failures: Mutex<Vec<String>>,
    refusals: Mutex<Vec<(SocketAddr, Refusal)>>,
    running: std::sync::atomic::AtomicBool,
    /// Kept so the connections stay open (dropping a link closes its connection).
    links: Mutex<Vec<DriverLink>>,
}

const SECRET: [u8; 32] = [42u8; 32];

impl DriverRegistry for KnownSecret {
    fn secret(&self, session_id: u32) -> Option<SessionSecret> {
        (session_id == 7).then(|| SessionSecret::from_bytes(SECRET))
    }
    fn attach(&self, _session_id: u32, link: DriverLink) {
        self.attached.lock().unwrap().push(link.conn_id);
        link.send(ToDriver::Ping);
        self.links.lock().unwrap().push(link);
    }
    fn deliver(&self, _session_id: u32, _conn_id: u64, _msg: FromDriver) {}
    fn detach(&self, _session_id: u32, _conn_id: u64) {}
    fn auth_failed(&self, _peer: SocketAddr, error: &HandshakeError) {
        self.failures.lock().unwrap().push(error.to_string());
    }
    fn connection_refused(&self, peer: SocketAddr, why: Refusal) {
        self.refusals.lock().unwrap().push((peer, why));
    }
    fn statement_running(&self, _session_id: u32) -> bool {
        self.running.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Starts an RPC server for a [`KnownSecret`] registry.
async fn known_secret_server(ping_interval: Duration) -> (sparkgate::rpc::server::RpcServer, Arc<KnownSecret>, String) {
    let settings = RpcSettings {
        max_frame_bytes: 1 << 20,
        handshake_timeout: Duration::from_secs(5),
        max_pending: 256,
        max_pending_per_ip: 32,
        ping_interval,
    };
    known_secret_server_with(settings).await
}

async fn known_secret_server_with(
    settings: RpcSettings,
) -> (sparkgate::rpc::server::RpcServer, Arc<KnownSecret>, String) {
    let pki = sparkgate::tls::generate_pki("test rpc CA", &["127.0.0.1".into()]).unwrap();
    let tls = sparkgate::tls::server_config(&pki.server, &[]).unwrap();
    let registry = Arc::new(KnownSecret::default());
    let server =
        sparkgate::rpc::server::start("127.0.0.1:0".parse().unwrap(), tls, settings, registry.clone()).await.unwrap();
    (server, registry, pki.ca_pem)
}

/// Does the driver's side of the handshake for session 7, checking the gateway's proof;
/// returns the client nonce, the server nonce and the driver's proof.
async fn authenticate(conn: &mut Conn) -> (String, String, String) {
    let secret = SessionSecret::from_bytes(SECRET);
    let cn = fresh_nonce();
    send(conn, hello(7, &cn)).await;
    let challenge = recv(conn).await.unwrap();
    let sn = challenge["server_nonce"].as_str().unwrap().to_string();
    let proof = secret.mac(Role::Driver, 7, &cn, &sn);
    send(conn, json!({"type": "proof", "mac": proof})).await;
    let ok = recv(conn).await.unwrap();
    assert_eq!(ok["type"], "ok");
    assert!(secret.verify(Role::Gateway, 7, &cn, &sn, ok["mac"].as_str().unwrap()), "the gateway proved the secret");
    (cn, sn, proof)
}

#[tokio::test]
async fn a_busy_driver_may_be_silent_an_idle_one_may_not() {
    // A statement stuck in a C call holds Python's GIL, so the driver cannot answer pings;
    // that must not cost the session. Three ping intervals of silence end an idle driver.
    let interval = Duration::from_millis(100);
    let (server, registry, ca) = known_secret_server(interval).await;
    let mut conn = connect(server.local_addr, &ca).await;
    registry.running.store(true, std::sync::atomic::Ordering::SeqCst);
    authenticate(&mut conn).await;
    // Ten intervals without a pong: still open, pings still coming.
    let quiet_until = tokio::time::Instant::now() + interval * 10;
    while tokio::time::Instant::now() < quiet_until {
        match tokio::time::timeout(interval, conn.next()).await {
            Ok(Some(Ok(frame))) => assert_eq!(serde_json::from_slice::<Value>(&frame).unwrap()["type"], "ping"),
            Ok(other) => panic!("the connection of a busy driver was closed: {other:?}"),
            Err(_) => {}
        }
    }
    // The statement ends; the driver stays silent: the gateway gives up on it.
    registry.running.store(false, std::sync::atomic::Ordering::SeqCst);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        assert!(tokio::time::Instant::now() < deadline, "a silent idle driver was never dropped");
        match tokio::time::timeout(Duration::from_secs(1), conn.next()).await {
            Ok(Some(Ok(_))) | Err(_) => {}
            Ok(_) => break,
        }
    }
}

#[tokio::test]
async fn mutual_handshake_and_replayed_proof() {
    let (server, registry, ca) = known_secret_server(Duration::from_secs(30)).await;

    // An honest driver: the gateway's answer proves it knows the secret too.
    let mut conn = connect(server.local_addr, &ca).await;
    let (cn, sn, proof) = authenticate(&mut conn).await;
    assert_eq!(recv(&mut conn).await.unwrap(), json!({"type": "ping"}), "messages flow after the handshake");
    assert_eq!(registry.attached.lock().unwrap().len(), 1);

    // An eavesdropper replays the same hello and proof on a new connection: the server's
    // fresh nonce makes the old proof worthless.
    let mut replay = connect(server.local_addr, &ca).await;
    send(&mut replay, hello(7, &cn)).await;
    let challenge2 = recv(&mut replay).await.unwrap();
    assert_ne!(challenge2["server_nonce"].as_str().unwrap(), sn, "nonces are fresh");
    send(&mut replay, json!({"type": "proof", "mac": proof})).await;
    assert_eq!(recv(&mut replay).await, None);
    assert_eq!(registry.attached.lock().unwrap().len(), 1);
    assert!(registry.failures.lock().unwrap().iter().any(|f| f.contains("wrong proof")));

    // A proof for another session id does not transfer either.
    let mut other = connect(server.local_addr, &ca).await;
    send(&mut other, hello(8, &cn)).await;
    let challenge3 = recv(&mut other).await.expect("session 8 does not exist, and is challenged all the same");
    let sn3 = challenge3["server_nonce"].as_str().unwrap();
    send(&mut other, json!({"type": "proof", "mac": SessionSecret::from_bytes(SECRET).mac(Role::Driver, 8, &cn, sn3)}))
        .await;
    assert_eq!(recv(&mut other).await, None);
    assert_eq!(server.stats.authenticated.load(std::sync::atomic::Ordering::Relaxed), 1);
    // The unknown session failed exactly as the wrong proof for the live one did.
    let failures = registry.failures.lock().unwrap().clone();
    assert_eq!(failures, ["wrong proof for session 7", "wrong proof for session 8"]);
}

/// Sends `count` connections one after another that are not even TLS, each waiting until the
/// gateway has closed it.
async fn failed_connects(addr: SocketAddr, count: usize) {
    for _ in 0..count {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(30), tcp.read_to_end(&mut buf)).await.unwrap();
    }
}

fn audit_records(gw: &TestGateway, action: &str) -> Vec<Value> {
    gw.audit.flush().unwrap();
    std::fs::read_to_string(gw.audit.path())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|r| r["action"] == action)
        .collect()
}

#[tokio::test]
async fn a_loop_of_failed_connects_costs_a_bounded_number_of_audit_records() {
    // Its own gateway, so that no other test's failures mix into its audit trail; a long
    // handshake timeout, so that silent connections hold their slots for the whole test.
    let gw = TestGateway::start(&["rpc.max_pending_handshakes_per_ip=4", "rpc.handshake_timeout=\"120s\""]);
    failed_connects(gw.rpc_addr, 300).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while gw.manager.rpc_auth_failures() < 300 {
        assert!(tokio::time::Instant::now() < deadline, "only {} failures seen", gw.manager.rpc_auth_failures());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let records = audit_records(&gw, "rpc_auth_failed");
    // One in full, then one summary per ended window (60 s by default; a slow machine may
    // see a second window start), not one record per connect.
    assert!(records.len() <= 4, "{} records for 300 failures: {records:#?}", records.len());
    let represented: u64 = records.iter().map(|r| r["repeated"].as_u64().unwrap_or(1)).sum();
    assert_eq!(represented, 300, "every failure is counted: {records:#?}");
    assert!(records[0]["reason"].as_str().unwrap().starts_with("TLS handshake failed"), "{}", records[0]);

    // Connections beyond the pending-handshake cap are closed at once and counted the same way.
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(TcpStream::connect(gw.rpc_addr).await.unwrap());
    }
    for _ in 0..50 {
        let mut refused = TcpStream::connect(gw.rpc_addr).await.unwrap();
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_secs(30), refused.read(&mut buf)).await;
        assert!(matches!(read, Ok(Ok(0) | Err(_))), "a connection beyond the cap was kept: {read:?}");
    }
    let records = audit_records(&gw, "rpc_connection_refused");
    assert!(records.len() <= 4, "{} records for 50 refusals: {records:#?}", records.len());
    let represented: u64 = records.iter().map(|r| r["repeated"].as_u64().unwrap_or(1)).sum();
    assert_eq!(represented, 50, "{records:#?}");
    assert!(records[0]["reason"].as_str().unwrap().contains("rpc.max_pending_handshakes_per_ip = 4"), "{}", records[0]);
}

/// A TCP connection to `addr` from the loopback address `from` (127.0.0.0/8 is all loopback on
/// Linux), so one test can be several clients.
async fn tcp_from(from: &str, addr: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    socket.connect(addr).await.unwrap()
}

/// Waits until the server has accepted `n` connections in all.
async fn accepted(server: &sparkgate::rpc::server::RpcServer, n: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while server.stats.connections.load(std::sync::atomic::Ordering::SeqCst) < n {
        assert!(tokio::time::Instant::now() < deadline, "the server did not accept {n} connections");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether the server closes `tcp` well before the handshake timeout (two minutes here).
async fn closed_promptly(tcp: &mut TcpStream) -> bool {
    let mut buf = [0u8; 64];
    matches!(tokio::time::timeout(Duration::from_secs(30), tcp.read(&mut buf)).await, Ok(Ok(0) | Err(_)))
}

#[tokio::test]
async fn pending_handshakes_are_capped_per_address_and_in_total() {
    let settings = RpcSettings {
        max_frame_bytes: 1 << 20,
        handshake_timeout: Duration::from_secs(120),
        max_pending: 3,
        max_pending_per_ip: 2,
        ping_interval: Duration::from_secs(30),
    };
    let (server, registry, ca) = known_secret_server_with(settings).await;
    let addr = server.local_addr;
    // Two silent connections from one address hold its two handshake slots...
    let a1 = tcp_from("127.0.0.1", addr).await;
    let _a2 = tcp_from("127.0.0.1", addr).await;
    accepted(&server, 2).await;
    // ...so a third from there is closed at once, not left waiting for the timeout.
    let mut a3 = tcp_from("127.0.0.1", addr).await;
    assert!(closed_promptly(&mut a3).await, "a third pending connection from one address was kept");
    // Another address may still connect, up to the total of three...
    let b1 = tcp_from("127.0.0.2", addr).await;
    accepted(&server, 4).await;
    // ...beyond which any address is refused.
    let mut c1 = tcp_from("127.0.0.3", addr).await;
    assert!(closed_promptly(&mut c1).await, "a pending connection beyond the total was kept");
    let refusals: Vec<_> = registry.refusals.lock().unwrap().iter().map(|(peer, why)| (peer.ip(), *why)).collect();
    assert_eq!(
        refusals,
        [
            ("127.0.0.1".parse().unwrap(), Refusal::TooManyFromAddress { limit: 2 }),
            ("127.0.0.3".parse().unwrap(), Refusal::TooMany { limit: 3 }),
        ]
    );
    assert_eq!(server.stats.refused.load(std::sync::atomic::Ordering::SeqCst), 2);
    // A slot comes back when its handshake ends (here: the peers give up), and an
    // authenticated connection holds none: three drivers in a row authenticate from the
    // address that still has one connection pending.
    drop((a1, b1));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut drivers = Vec::new();
    while drivers.len() < 3 {
        assert!(tokio::time::Instant::now() < deadline, "the freed slot was never reused");
        let refused_before = server.stats.refused.load(std::sync::atomic::Ordering::SeqCst);
        let mut conn = connect(addr, &ca).await;
        let cn = fresh_nonce();
        send(&mut conn, hello(7, &cn)).await;
        match tokio::time::timeout(Duration::from_secs(30), conn.next()).await {
            Ok(Some(Ok(frame))) => {
                let challenge: Value = serde_json::from_slice(&frame).unwrap();
                let sn = challenge["server_nonce"].as_str().unwrap();
                let proof = SessionSecret::from_bytes(SECRET).mac(Role::Driver, 7, &cn, sn);
                send(&mut conn, json!({"type": "proof", "mac": proof})).await;
                assert_eq!(recv(&mut conn).await.unwrap()["type"], "ok");
                drivers.push(conn);
            }
            // The gateway had not yet noticed b1 was gone: refused, try again shortly.
            _ => {
                assert!(server.stats.refused.load(std::sync::atomic::Ordering::SeqCst) > refused_before);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}
