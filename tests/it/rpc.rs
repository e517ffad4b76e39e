//! The driver RPC channel under attack: a raw client that skips, fakes or replays the
//! handshake, sends oversized frames or garbage, holds handshakes open, or floods results
//! without reading. Each is refused or its connection closed, and the gateway goes on serving
//! its real drivers.

use crate::support::{gateway, shared_session, TestGateway};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use sparkgate::rpc::handshake::{fresh_nonce, Role, SessionSecret};
use sparkgate::rpc::{
    DriverLink, DriverRegistry, FromDriver, HandshakeError, Peer, QueueLimits, Refusal, RpcSettings, ToDriver,
};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_util::codec::{Framed, LengthDelimitedCodec};

type Conn = Framed<TlsStream<TcpStream>, LengthDelimitedCodec>;

async fn tls_connect(addr: SocketAddr, ca_pem: &str) -> TlsStream<TcpStream> {
    tls_over(TcpStream::connect(addr).await.unwrap(), ca_pem).await
}

/// TLS as a driver speaks it, over any stream (TCP, or a session's Unix socket).
pub(crate) async fn tls_over<S>(stream: S, ca_pem: &str) -> TlsStream<S>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
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
    connector.connect("127.0.0.1".try_into().unwrap(), stream).await.unwrap()
}

pub(crate) async fn connect(addr: SocketAddr, ca_pem: &str) -> Conn {
    Framed::new(tls_connect(addr, ca_pem).await, LengthDelimitedCodec::new())
}

pub(crate) async fn send<S>(conn: &mut Framed<S, LengthDelimitedCodec>, v: Value)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    conn.send(Bytes::from(serde_json::to_vec(&v).unwrap())).await.unwrap();
}

/// The next frame, or None when the server closed the connection (or failed it).
pub(crate) async fn recv<S>(conn: &mut Framed<S, LengthDelimitedCodec>) -> Option<Value>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    match tokio::time::timeout(Duration::from_secs(15), conn.next()).await {
        Ok(Some(Ok(frame))) => Some(serde_json::from_slice(&frame).unwrap()),
        Ok(_) => None,
        Err(_) => panic!("the server neither answered nor closed the connection"),
    }
}

pub(crate) fn hello(session_id: u64, nonce: &str) -> Value {
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
pub(crate) struct KnownSecret {
    pub(crate) attached: Mutex<Vec<u64>>,
    pub(crate) failures: Mutex<Vec<String>>,
    pub(crate) refusals: Mutex<Vec<(Peer, Refusal)>>,
    running: std::sync::atomic::AtomicBool,
    /// Kept so the connections stay open (dropping a link closes its connection).
    pub(crate) links: Mutex<Vec<DriverLink>>,
    /// Results delivered, and the most the acks to them ever held queued (messages, bytes).
    results: std::sync::atomic::AtomicU64,
    most_queued: Mutex<(usize, usize)>,
    detached: Mutex<Vec<u64>>,
}

pub(crate) const SECRET: [u8; 32] = [42u8; 32];

impl DriverRegistry for KnownSecret {
    fn secret(&self, session_id: u32) -> Option<SessionSecret> {
        (session_id == 7).then(|| SessionSecret::from_bytes(SECRET))
    }
    fn attach(&self, _session_id: u32, link: DriverLink) {
        self.attached.lock().unwrap().push(link.conn_id);
        link.send(ToDriver::Ping);
        self.links.lock().unwrap().push(link);
    }
    fn deliver(&self, _session_id: u32, conn_id: u64, msg: FromDriver) {
        // As a session does: every result is acknowledged, even for an id it does not know.
        if let FromDriver::StatementResult { id, .. } = msg {
            self.results.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let links = self.links.lock().unwrap();
            if let Some(link) = links.iter().find(|l| l.conn_id == conn_id) {
                link.send(ToDriver::Ack { id });
                let (messages, bytes) = link.queued();
                let mut most = self.most_queued.lock().unwrap();
                *most = (most.0.max(messages), most.1.max(bytes));
            }
        }
    }
    fn detach(&self, _session_id: u32, conn_id: u64) {
        self.detached.lock().unwrap().push(conn_id);
    }
    fn auth_failed(&self, _peer: Peer, error: &HandshakeError) {
        self.failures.lock().unwrap().push(error.to_string());
    }
    fn connection_refused(&self, peer: Peer, why: Refusal) {
        self.refusals.lock().unwrap().push((peer, why));
    }
    fn statement_running(&self, _session_id: u32) -> bool {
        self.running.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Starts an RPC server for a [`KnownSecret`] registry.
pub(crate) async fn known_secret_server(
    ping_interval: Duration,
) -> (sparkgate::rpc::server::RpcServer, Arc<KnownSecret>, String) {
    known_secret_server_with(settings(ping_interval)).await
}

pub(crate) fn settings(ping_interval: Duration) -> RpcSettings {
    RpcSettings {
        max_frame_bytes: 1 << 20,
        handshake_timeout: Duration::from_secs(5),
        max_pending: 256,
        max_pending_per_ip: 32,
        ping_interval,
        max_queued: QueueLimits::for_frames(1 << 20),
    }
}

pub(crate) async fn known_secret_server_with(
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
pub(crate) async fn authenticate<S>(conn: &mut Framed<S, LengthDelimitedCodec>) -> (String, String, String)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
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

/// Settings with a long handshake timeout (silent peers hold their slots for the whole test)
/// and the given caps.
fn capped(max_pending: usize, max_pending_per_ip: usize) -> RpcSettings {
    RpcSettings {
        handshake_timeout: Duration::from_secs(120),
        max_pending,
        max_pending_per_ip,
        ..settings(Duration::from_secs(30))
    }
}

#[tokio::test]
async fn pending_handshakes_are_capped_per_address_and_in_total() {
    let (server, registry, ca) = known_secret_server_with(capped(3, 2)).await;
    let addr = server.local_addr;
    // Two silent connections from one address hold its two handshake slots...
    let a1 = tcp_from("127.0.0.1", addr).await;
    let _a2 = tcp_from("127.0.0.1", addr).await;
    accepted(&server, 2).await;
    // ...so a third from there is closed at once, not left waiting for the timeout; and
    // another loopback source address is the same host (a local process picks any of
    // 127.0.0.0/8), so it cannot take the total's third slot either.
    let mut a3 = tcp_from("127.0.0.1", addr).await;
    assert!(closed_promptly(&mut a3).await, "a third pending connection from one address was kept");
    for from in ["127.0.0.2", "127.0.0.3", "127.1.2.3"] {
        let mut other = tcp_from(from, addr).await;
        assert!(closed_promptly(&mut other).await, "a pending connection from {from} took a slot of its own");
    }
    let refusals: Vec<_> =
        registry.refusals.lock().unwrap().iter().map(|(peer, why)| (peer.ip().unwrap(), *why)).collect();
    let per_address = Refusal::TooManyFromAddress { limit: 2 };
    assert_eq!(
        refusals,
        ["127.0.0.1", "127.0.0.2", "127.0.0.3", "127.1.2.3"].map(|ip| (ip.parse().unwrap(), per_address))
    );
    assert_eq!(server.stats.refused.load(std::sync::atomic::Ordering::SeqCst), 4);

    // The total: a server whose total is below its per-address cap refuses the third as such.
    let (total_server, total_registry, _) = known_secret_server_with(capped(2, 3)).await;
    let _t1 = tcp_from("127.0.0.1", total_server.local_addr).await;
    let _t2 = tcp_from("127.0.0.1", total_server.local_addr).await;
    accepted(&total_server, 2).await;
    let mut t3 = tcp_from("127.0.0.1", total_server.local_addr).await;
    assert!(closed_promptly(&mut t3).await, "a pending connection beyond the total was kept");
    assert_eq!(total_registry.refusals.lock().unwrap()[0].1, Refusal::TooMany { limit: 2 });

    // A slot comes back when its handshake ends (here: the peer gives up), and an
    // authenticated connection holds none: three drivers in a row authenticate from the
    // address that still has one connection pending.
    drop(a1);
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
            // The gateway had not yet noticed a1 was gone: refused, try again shortly.
            _ => {
                assert!(server.stats.refused.load(std::sync::atomic::Ordering::SeqCst) > refused_before);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

#[tokio::test]
async fn a_driver_that_floods_results_without_reading_is_disconnected_and_its_queue_stays_bounded() {
    // User code in a driver can stop the driver's reader and flood `statement_result` frames;
    // each is acknowledged. A peer that never reads must lose its connection once what waits
    // for it passes the bound, not make the gateway grow until it runs out of memory.
    let limits = QueueLimits { messages: 256, bytes: 64 * 1024 };
    let (server, registry, ca) =
        known_secret_server_with(RpcSettings { max_queued: limits, ..settings(Duration::from_secs(30)) }).await;
    // A small receive buffer, so that the gateway's writes stall soon (a real attacker's
    // buffers only make it take a little longer).
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = socket.connect(server.local_addr).await.unwrap();
    let mut conn = Framed::new(tls_over(tcp, &ca).await, LengthDelimitedCodec::new());
    authenticate(&mut conn).await;
    let frame = Bytes::from(
        serde_json::to_vec(&json!({"type": "statement_result", "id": 999_999, "state": "available", "output": {}}))
            .unwrap(),
    );
    // Far more acks than the bound and every socket buffer on the way could hold; stop as
    // soon as the gateway closes the connection.
    let mut sent = 0u64;
    let cut_off = 'flood: {
        while sent < 4_000_000 {
            for _ in 0..1000 {
                if conn.feed(frame.clone()).await.is_err() {
                    break 'flood true;
                }
            }
            if SinkExt::<Bytes>::flush(&mut conn).await.is_err() {
                break 'flood true;
            }
            sent += 1000;
        }
        false
    };
    let overflows = server.stats.queue_overflows.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        cut_off,
        "the gateway never closed a connection that did not read ({sent} results sent, {overflows} overflows)"
    );
    assert_eq!(overflows, 1);
    let (most_messages, most_bytes) = *registry.most_queued.lock().unwrap();
    assert!(
        most_messages <= limits.messages && most_bytes <= limits.bytes,
        "{most_messages} messages, {most_bytes} bytes"
    );
    assert!(registry.results.load(std::sync::atomic::Ordering::SeqCst) > limits.messages as u64);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while registry.detached.lock().unwrap().is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "the session was never told the connection ended");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // An honest driver connects again and is served.
    let mut again = connect(server.local_addr, &ca).await;
    authenticate(&mut again).await;
    assert_eq!(recv(&mut again).await.unwrap()["type"], "ping");
}
