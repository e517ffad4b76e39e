//! Local and client-mode drivers reach the gateway over a Unix socket of their session's own,
//! in the session's `work/` directory, which no other sandbox can see: what code in one
//! session does to the shared TCP RPC port (hold every pending-handshake slot of loopback)
//! cannot keep another session's driver out. The socket serves the same TLS, handshake and
//! frames as the TCP port, and only its own session authenticates there.

use crate::rpc::{authenticate, hello, known_secret_server, known_secret_server_with, recv, send, settings, tls_over};
use crate::support::TestGateway;
use serde_json::{json, Value};
use sparkgate::rpc::handshake::{fresh_nonce, Role, SessionSecret};
use sparkgate::rpc::{LocalListenError, Peer, Refusal, RpcSettings, Transport};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpStream, UnixStream};
use tokio_util::codec::{Framed, LengthDelimitedCodec};

async fn unix_driver(
    path: &std::path::Path,
    ca: &str,
) -> Framed<tokio_rustls::client::TlsStream<UnixStream>, LengthDelimitedCodec> {
    Framed::new(tls_over(UnixStream::connect(path).await.unwrap(), ca).await, LengthDelimitedCodec::new())
}

#[tokio::test]
async fn a_session_socket_is_owner_only_serves_the_protocol_and_only_its_own_session() {
    let (server, registry, ca) = known_secret_server(Duration::from_secs(30)).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rpc.sock");
    let socket = server.local_listeners().listen(&path, 7).unwrap();
    let meta = std::fs::metadata(&path).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600, "only the gateway's account may connect");

    // Allow: the session's driver, TLS and handshake exactly as on TCP.
    let mut conn = unix_driver(&path, &ca).await;
    authenticate(&mut conn).await;
    assert_eq!(recv(&mut conn).await.unwrap(), json!({"type": "ping"}), "messages flow after the handshake");
    assert_eq!(server.stats.local_connections.load(Ordering::SeqCst), 1);
    assert_eq!(server.stats.connections.load(Ordering::SeqCst), 0, "the TCP port saw nothing");

    // Deny: another session's socket does not take session 7, even with its secret.
    let other_path = dir.path().join("other.sock");
    let _other = server.local_listeners().listen(&other_path, 9).unwrap();
    let mut intruder = unix_driver(&other_path, &ca).await;
    let cn = fresh_nonce();
    send(&mut intruder, hello(7, &cn)).await;
    let challenge = recv(&mut intruder).await.expect("challenged like anyone");
    let sn = challenge["server_nonce"].as_str().unwrap();
    let proof = SessionSecret::from_bytes(crate::rpc::SECRET).mac(Role::Driver, 7, &cn, sn);
    send(&mut intruder, json!({"type": "proof", "mac": proof})).await;
    assert_eq!(recv(&mut intruder).await, None, "a session's socket authenticates that session only");
    assert_eq!(registry.failures.lock().unwrap().as_slice(), ["wrong proof for session 7"]);
    assert_eq!(registry.attached.lock().unwrap().len(), 1);

    // The session ends: nothing listens there any more, and the file is gone.
    drop(socket);
    assert!(!path.exists());
    assert!(UnixStream::connect(&path).await.is_err());
    // A connection made before stays until it closes (the session's process ends it).
    drop(conn);
}

#[tokio::test]
async fn a_session_socket_caps_its_pending_handshakes_and_refuses_a_path_too_long() {
    let settings = RpcSettings {
        handshake_timeout: Duration::from_secs(120),
        max_pending_per_ip: 2,
        ..settings(Duration::from_secs(30))
    };
    let (server, registry, ca) = known_secret_server_with(settings).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rpc.sock");
    let _socket = server.local_listeners().listen(&path, 7).unwrap();
    let _a = UnixStream::connect(&path).await.unwrap();
    let _b = UnixStream::connect(&path).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while server.stats.local_connections.load(Ordering::SeqCst) < 2 {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Deny: a third silent connection on the same socket is closed at once.
    let mut c = UnixStream::connect(&path).await.unwrap();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(30), c.read(&mut buf)).await;
    assert!(matches!(read, Ok(Ok(0) | Err(_))), "a third pending connection was kept: {read:?}");
    assert_eq!(
        registry.refusals.lock().unwrap().as_slice(),
        [(Peer::Unix { session: 7 }, Refusal::TooManyFromAddress { limit: 2 })]
    );
    // The TCP port's budget is another: its slots are all free.
    let mut tcp = crate::rpc::connect(server.local_addr, &ca).await;
    authenticate(&mut tcp).await;

    // A path the kernel cannot take is refused before anything is created.
    let long = dir.path().join("x".repeat(120));
    let err = server.local_listeners().listen(&long, 7).unwrap_err();
    assert!(matches!(err, LocalListenError::PathTooLong { max: 107, .. }), "{err}");
    assert!(!long.exists());
}

/// `n` silent TCP connections to `addr` from loopback address `from`.
async fn hold_from(from: &str, addr: std::net::SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut held = Vec::new();
    for _ in 0..n {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
        held.push(socket.connect(addr).await.unwrap());
    }
    held
}

async fn closed_promptly(tcp: &mut TcpStream) -> bool {
    let mut buf = [0u8; 64];
    matches!(tokio::time::timeout(Duration::from_secs(30), tcp.read(&mut buf)).await, Ok(Ok(0) | Err(_)))
}

fn text(st: &Value) -> &str {
    st["output"]["data"]["text/plain"].as_str().unwrap_or_else(|| panic!("no text/plain in {st}"))
}

#[tokio::test]
async fn holding_the_tcp_ports_handshake_slots_keeps_no_local_driver_out() {
    // Code in one session shares the host network, so it can open connections to the TCP RPC
    // port from 127.0.0.1 and never speak: they hold the per-address pending-handshake slots
    // (here for five minutes). Other sessions' drivers must still come up and reconnect.
    let gw = TestGateway::start(&[
        "rpc.max_pending_handshakes_per_ip=2",
        "rpc.max_pending_handshakes=4",
        "rpc.handshake_timeout=\"300s\"",
        // A driver that cannot connect gives up (and its session dies) after this.
        "rpc.reconnect_window=\"30s\"",
    ]);
    let mut held = hold_from("127.0.0.1", gw.rpc_addr, 2).await;
    // Other loopback source addresses are the same host: they cannot take the total's slots.
    for from in ["127.0.0.2", "127.0.0.3", "127.9.9.9"] {
        let mut extra = hold_from(from, gw.rpc_addr, 1).await;
        assert!(closed_promptly(&mut extra[0]).await, "{from} took a pending-handshake slot of its own");
    }
    // ...and the held ones are really held (not closed).
    let mut buf = [0u8; 1];
    assert!(tokio::time::timeout(Duration::from_millis(500), held[0].read(&mut buf)).await.is_err());

    // A new local session starts and runs a statement all the same: its driver dials the
    // session's own socket.
    let (status, body) = gw.post("/sessions", json!({"kind": "pyspark"})).await;
    assert_eq!(status, 201, "{body}");
    let id = body["id"].as_u64().unwrap();
    let state = gw.wait_state(id, &["idle", "dead", "error", "killed"], Duration::from_secs(240)).await;
    let (_, log) = gw.get(&format!("/sessions/{id}/log?size=-1")).await;
    assert_eq!(state, "idle", "log: {log:#}");
    let session = gw.manager.get(&id.to_string()).unwrap();
    assert_eq!(session.driver_transport(), Some(Transport::Unix));
    let socket = session.dir.canonicalize().unwrap().join("work/rpc.sock");
    let meta = std::fs::metadata(&socket).unwrap();
    assert!(meta.file_type().is_socket() && meta.permissions().mode() & 0o777 == 0o600);
    assert_eq!(text(&gw.run(id, "pyspark", "21 * 2").await), "42");

    // Another session's socket is not there to dial from inside this sandbox; its own is.
    let other_work = gw.data_dir.canonicalize().unwrap().join("sessions/999999/work");
    std::fs::create_dir_all(&other_work).unwrap();
    let other = other_work.join("rpc.sock");
    let _other_listener = std::os::unix::net::UnixListener::bind(&other).unwrap();
    let code = format!(
        "import socket\ndef dial(p):\n    s = socket.socket(socket.AF_UNIX)\n    try:\n        s.connect(p)\n        \
         return 'connected'\n    except Exception as e:\n        return type(e).__name__\n    finally:\n        \
         s.close()\nprint(dial({:?}), dial({:?}))",
        other.display().to_string(),
        socket.display().to_string()
    );
    assert_eq!(text(&gw.run(id, "pyspark", &code).await), "FileNotFoundError connected");

    // A reconnect comes back over the same socket, while the TCP slots are still held.
    assert!(session.drop_driver_connection());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while session.driver_transport() != Some(Transport::Unix) {
        assert!(tokio::time::Instant::now() < deadline, "the driver did not reconnect");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(text(&gw.run(id, "pyspark", "6 * 7").await), "42");
    let (_, log) = gw.get(&format!("/sessions/{id}/log?size=-1")).await;
    let log = log["log"].to_string();
    assert_eq!(log.matches("over its Unix socket").count(), 2, "{log}");
    assert!(!log.contains("over TCP"), "{log}");

    // The session ends: its socket goes with it.
    let (status, _) = gw.delete(&format!("/sessions/{id}")).await;
    assert_eq!(status, 200);
    assert!(!socket.exists());
    drop(held);
}
