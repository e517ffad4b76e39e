//! The RPC server drivers dial back to: TLS, the mutual handshake under a timeout, then framed
//! JSON messages routed to the session that owns the connection.
//!
//! Two kinds of listener serve the same TLS, handshake and frames: the TCP port (`rpc.bind`),
//! which cluster-mode drivers dial, and one Unix socket per local or client-mode session
//! ([`LocalListeners`]), in the session's own `work/` directory, which only that session's
//! sandbox can see. Local drivers do not use the TCP port, so what other local processes do
//! to it (all of loopback is one client there, see [`crate::net::AddrKey::of`])
//! cannot keep a driver from its gateway.
//!
//! Until a peer has proven a session's secret it is anonymous, so what it may cost is capped:
//! connections in the handshake at once, in total and per address (an IPv6 peer by its /64,
//! loopback as one), or per session socket, beyond which a new connection is closed at once
//! ([`Refusal`]); a timeout on the whole handshake; small frames. Nor does it learn anything:
//! an unknown or finished session id is challenged like a live one and fails at the proof,
//! exactly like a wrong secret. After the proof, what waits to be sent to a driver is bounded
//! too ([`super::link`]).

use super::handshake::{fresh_nonce, valid_nonce, Role, SessionSecret};
use super::link::{self, DriverLink, Outbox, QueueLimits, Transport};
use super::protocol::{FromDriver, ToDriver, PROTOCOL_VERSION};
use crate::net::{AddrSlot, PerAddr};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_util::codec::{Framed, LengthDelimitedCodec};

/// The engine side of the RPC server: who may connect, and where their messages go.
pub trait DriverRegistry: Send + Sync + 'static {
    /// The secret of a session still waiting for (or owning) a driver; None refuses the connection.
    fn secret(&self, session_id: u32) -> Option<SessionSecret>;
    /// A driver authenticated; messages to it go through `link`.
    fn attach(&self, session_id: u32, link: DriverLink);
    /// A message from an authenticated driver.
    fn deliver(&self, session_id: u32, conn_id: u64, msg: FromDriver);
    /// The connection `conn_id` of a session closed.
    fn detach(&self, session_id: u32, conn_id: u64);
    /// A connection failed to authenticate (for logs and the audit trail; the error holds no
    /// secret). A peer can cause this at will, once per connect: record it coalesced.
    fn auth_failed(&self, peer: Peer, error: &HandshakeError);
    /// A connection was closed at once, before TLS, because of a pending-handshake cap. A peer
    /// can cause this at will too: record it coalesced.
    fn connection_refused(&self, peer: Peer, why: Refusal);
    /// Whether the session is running a statement. A driver busy in a C call that holds
    /// Python's GIL (`sum(range(10**10))`) cannot answer pings, so silence is not death then;
    /// a dead process or host is still noticed (process exit, TCP keepalive, EOF).
    fn statement_running(&self, _session_id: u32) -> bool {
        false
    }
}

/// The frame limit until a driver has proven its secret (handshake messages are far smaller).
const HANDSHAKE_MAX_FRAME: usize = 16 * 1024;

/// Who is on the other end of a connection, as far as the gateway can tell before the proof.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Peer {
    /// A peer on the TCP port.
    Tcp(SocketAddr),
    /// A peer on the Unix socket of a session: a process inside that session's sandbox (or
    /// one running as the gateway's account, which may reach its directory).
    Unix {
        /// The session whose socket it is.
        session: u32,
    },
}

impl Peer {
    /// The address of a TCP peer.
    pub fn addr(self) -> Option<SocketAddr> {
        match self {
            Self::Tcp(addr) => Some(addr),
            Self::Unix { .. } => None,
        }
    }

    /// The IP address of a TCP peer.
    pub fn ip(self) -> Option<IpAddr> {
        self.addr().map(|a| a.ip())
    }

    /// How it connected.
    pub fn transport(self) -> Transport {
        match self {
            Self::Tcp(_) => Transport::Tcp,
            Self::Unix { .. } => Transport::Unix,
        }
    }
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tcp(addr) => write!(f, "{addr}"),
            Self::Unix { session } => write!(f, "the Unix socket of session {session}"),
        }
    }
}

/// Settings of the RPC server.
#[derive(Debug, Clone)]
pub struct RpcSettings {
    /// Largest frame, both directions.
    pub max_frame_bytes: usize,
    /// Time allowed for TLS plus the handshake.
    pub handshake_timeout: Duration,
    /// Connections in TLS or the handshake at once; beyond it new ones are closed at once.
    pub max_pending: usize,
    /// The same from one address (an IPv6 peer by its /64 prefix, every loopback address as
    /// one), and on one session's Unix socket.
    pub max_pending_per_ip: usize,
    /// How often to ping; a peer silent for three intervals is dropped.
    pub ping_interval: Duration,
    /// What may wait to be written to one driver; beyond it the connection is closed.
    pub max_queued: QueueLimits,
}

/// Counters the gateway exposes.
#[derive(Debug, Default)]
pub struct RpcStats {
    /// Connections accepted on the TCP port.
    pub connections: AtomicU64,
    /// Connections accepted on sessions' Unix sockets.
    pub local_connections: AtomicU64,
    /// Connections that failed TLS or the handshake.
    pub auth_failures: AtomicU64,
    /// Connections closed at once because of a pending-handshake cap.
    pub refused: AtomicU64,
    /// Connections that authenticated.
    pub authenticated: AtomicU64,
    /// Connections closed because their driver did not read what it was sent.
    pub queue_overflows: AtomicU64,
}

/// A running RPC server.
pub struct RpcServer {
    /// The address it listens on.
    pub local_addr: SocketAddr,
    /// Its counters.
    pub stats: Arc<RpcStats>,
    service: Arc<Service>,
}

impl std::fmt::Debug for RpcServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpcServer").field("local_addr", &self.local_addr).field("stats", &self.stats).finish()
    }
}

impl RpcServer {
    /// What a session manager keeps to open sessions' Unix sockets.
    pub fn local_listeners(&self) -> LocalListeners {
        LocalListeners { service: self.service.clone() }
    }
}

/// What serving a connection needs, whichever listener accepted it.
struct Service {
    acceptor: TlsAcceptor,
    settings: RpcSettings,
    registry: Arc<dyn DriverRegistry>,
    stats: Arc<RpcStats>,
    next_conn: AtomicU64,
}

/// Binds and starts serving; returns once the listener is bound.
pub async fn start(
    bind: SocketAddr,
    tls: Arc<rustls::ServerConfig>,
    settings: RpcSettings,
    registry: Arc<dyn DriverRegistry>,
) -> std::io::Result<RpcServer> {
    let listener = TcpListener::bind(bind).await?;
    let local_addr = listener.local_addr()?;
    let stats = Arc::new(RpcStats::default());
    let service = Arc::new(Service {
        acceptor: TlsAcceptor::from(tls),
        settings,
        registry,
        stats: stats.clone(),
        next_conn: AtomicU64::new(1),
    });
    tokio::spawn(accept_tcp(listener, service.clone()));
    tracing::info!(%local_addr, "driver RPC server listening (TLS)");
    Ok(RpcServer { local_addr, stats, service })
}

async fn accept_tcp(listener: TcpListener, service: Arc<Service>) {
    let settings = &service.settings;
    let pending_total = Arc::new(Semaphore::new(settings.max_pending.min(Semaphore::MAX_PERMITS)));
    let pending_per_addr = Arc::new(PerAddr::default());
    loop {
        let (tcp, addr) = match listener.accept().await {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!(error = %e, "rpc accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        service.stats.connections.fetch_add(1, Ordering::Relaxed);
        // Accepted and closed at once rather than left in the backlog: the backlog stays
        // free for drivers, and the refusal is counted. The address first, so that one
        // busy address is refused as such and cannot take the total's slots; every loopback
        // address is one, since a local process picks its source address in 127.0.0.0/8 freely.
        let slots = match pending_per_addr.enter(addr.ip(), settings.max_pending_per_ip) {
            None => Err(Refusal::TooManyFromAddress { limit: settings.max_pending_per_ip }),
            Some(addr) => match pending_total.clone().try_acquire_owned() {
                Ok(total) => Ok(PendingSlots { _permit: total, _addr: Some(addr) }),
                Err(_) => Err(Refusal::TooMany { limit: settings.max_pending }),
            },
        };
        let peer = Peer::Tcp(addr);
        let slots = match slots {
            Ok(slots) => slots,
            Err(why) => {
                service.refuse(peer, why);
                drop(tcp);
                continue;
            }
        };
        let service = service.clone();
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            // Notices a driver host that vanished without closing the connection (cluster
            // mode) even while silence is tolerated for a busy driver.
            let keepalive = socket2::TcpKeepalive::new()
                .with_time(Duration::from_secs(30))
                .with_interval(Duration::from_secs(10))
                .with_retries(6);
            let _ = socket2::SockRef::from(&tcp).set_tcp_keepalive(&keepalive);
            // Keepalive probes stop while sent data waits for an acknowledgement (our pings
            // do): unacknowledged data for 90 s also means the host is gone.
            let _ = socket2::SockRef::from(&tcp).set_tcp_user_timeout(Some(Duration::from_secs(90)));
            service.serve(tcp, peer, slots).await;
        });
    }
}

/// The longest Unix socket path the kernel takes (`sun_path` is 108 bytes with its NUL).
pub const MAX_UNIX_PATH_BYTES: usize = 107;

/// Opens sessions' Unix sockets on a running [`RpcServer`] (same TLS, handshake, frames and
/// registry as its TCP port).
#[derive(Clone)]
pub struct LocalListeners {
    service: Arc<Service>,
}

impl std::fmt::Debug for LocalListeners {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LocalListeners")
    }
}

/// Why a session's Unix socket could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LocalListenError {
    /// The path does not fit in a socket address; the driver must use the TCP port.
    #[error("the socket path is {len} bytes long; a Unix socket path may have at most {max}")]
    PathTooLong {
        /// Its length in bytes.
        len: usize,
        /// [`MAX_UNIX_PATH_BYTES`].
        max: usize,
    },
    /// Binding the socket, or making it owner-only, failed.
    #[error("cannot listen on the driver socket: {0}")]
    Io(#[from] std::io::Error),
}

impl LocalListeners {
    /// Listens on a new Unix socket at `path` (mode 0600) for the driver of session
    /// `session_id`, which is the only session that may authenticate on it. Serves until the
    /// returned guard is dropped; the guard also removes the socket file. Fails outside a
    /// Tokio runtime.
    pub fn listen(&self, path: &Path, session_id: u32) -> Result<SessionSocket, LocalListenError> {
        let len = path.as_os_str().len();
        if len > MAX_UNIX_PATH_BYTES {
            return Err(LocalListenError::PathTooLong { len, max: MAX_UNIX_PATH_BYTES });
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(std::io::Error::other)?;
        let _entered = runtime.enter();
        let listener = UnixListener::bind(path)?;
        // Created with the process umask; owner-only before the driver exists. (Its directory,
        // the session's work/, is owner-only already, so no one else could reach it meanwhile.)
        use std::os::unix::fs::PermissionsExt;
        if let Err(e) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)) {
            let _ = std::fs::remove_file(path);
            return Err(e.into());
        }
        let task = runtime.spawn(accept_unix(listener, session_id, self.service.clone()));
        tracing::debug!(session_id, path = %path.display(), "driver RPC socket listening");
        Ok(SessionSocket { path: path.to_path_buf(), task })
    }
}

/// A session's listening Unix socket: it stops listening and its file goes when this is
/// dropped (connections already made stay until they close).
#[derive(Debug)]
pub struct SessionSocket {
    path: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl SessionSocket {
    /// Where it listens.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SessionSocket {
    fn drop(&mut self) {
        self.task.abort();
        // Whatever is at the path now (user code may have replaced the socket) is only ever a
        // directory entry in the session's own work/: removing it follows no link.
        let _ = std::fs::remove_file(&self.path);
    }
}

async fn accept_unix(listener: UnixListener, session_id: u32, service: Arc<Service>) {
    // Only this session's sandbox can reach the socket, so its cap only keeps a session from
    // costing the gateway more than any one address may; it is no one else's budget.
    let limit = service.settings.max_pending_per_ip;
    let pending = Arc::new(Semaphore::new(limit.min(Semaphore::MAX_PERMITS)));
    let peer = Peer::Unix { session: session_id };
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(session_id, error = %e, "rpc accept on a session socket failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        service.stats.local_connections.fetch_add(1, Ordering::Relaxed);
        let Ok(permit) = pending.clone().try_acquire_owned() else {
            service.refuse(peer, Refusal::TooManyFromAddress { limit });
            drop(stream);
            continue;
        };
        let service = service.clone();
        tokio::spawn(async move { service.serve(stream, peer, PendingSlots { _permit: permit, _addr: None }).await });
    }
}

/// The pending-handshake slots a connection holds until its handshake ends: the TCP port's
/// total and its address's, or its session socket's.
struct PendingSlots {
    _permit: OwnedSemaphorePermit,
    _addr: Option<AddrSlot>,
}

/// Why a connection was closed before TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// `rpc.max_pending_handshakes` connections are in the handshake.
    #[error("too many connections in the handshake (rpc.max_pending_handshakes = {limit})")]
    TooMany {
        /// The cap.
        limit: usize,
    },
    /// `rpc.max_pending_handshakes_per_ip` connections from this address (or on this
    /// session's Unix socket) are in the handshake.
    #[error("too many connections in the handshake from this address (rpc.max_pending_handshakes_per_ip = {limit})")]
    TooManyFromAddress {
        /// The cap.
        limit: usize,
    },
}

impl Refusal {
    /// A fixed name for the kind of refusal (what the audit trail counts repeats by).
    pub fn class(self) -> &'static str {
        match self {
            Self::TooMany { .. } => "pending_total",
            Self::TooManyFromAddress { .. } => "pending_per_ip",
        }
    }
}

/// Why a handshake failed (logged and audited; never contains a secret). There is no "unknown
/// session": a hello for a session that does not exist or no longer expects a driver fails as
/// [`HandshakeError::BadProof`], so the answer reveals nothing about which ids are live.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// TLS failed (not TLS at all, a bad record, an unsupported version).
    #[error("TLS handshake failed: {0}")]
    Tls(std::io::Error),
    /// The peer closed the connection before the handshake ended.
    #[error("connection closed during the handshake")]
    Closed,
    /// TLS and the handshake took longer than `rpc.handshake_timeout`.
    #[error("handshake timed out")]
    Timeout,
    /// A frame could not be read or written (too long, or the connection failed).
    #[error("frame error: {0}")]
    Frame(std::io::Error),
    /// Not the message the handshake expected, or not one at all.
    #[error("unexpected or malformed message: {0}")]
    Protocol(String),
    /// A protocol version the gateway does not speak.
    #[error("unsupported protocol version {0}")]
    Version(u32),
    /// The proof does not match the secret of the session — or there is no such live session.
    #[error("wrong proof for session {0}")]
    BadProof(u32),
}

impl HandshakeError {
    /// The session the peer named, once it has sent a hello that got that far.
    pub fn session(&self) -> Option<u32> {
        match self {
            Self::BadProof(id) => Some(*id),
            _ => None,
        }
    }

    /// A fixed name for the kind of failure: what the audit trail counts repeats by. The
    /// message itself can vary with what a peer sends, so it is never the key.
    pub fn class(&self) -> &'static str {
        match self {
            Self::Tls(_) => "tls",
            Self::Closed => "closed",
            Self::Timeout => "timeout",
            Self::Frame(_) => "frame",
            Self::Protocol(_) => "protocol",
            Self::Version(_) => "version",
            Self::BadProof(_) => "bad_proof",
        }
    }
}

impl Service {
    fn refuse(&self, peer: Peer, why: Refusal) {
        self.stats.refused.fetch_add(1, Ordering::Relaxed);
        self.registry.connection_refused(peer, why);
    }

    /// TLS, the handshake, then messages both ways until the connection ends: the same for
    /// every listener.
    async fn serve<S>(self: Arc<Self>, stream: S, peer: Peer, slots: PendingSlots)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (settings, registry, stats) = (&self.settings, self.registry.as_ref(), &self.stats);
        let conn_id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        // A session's socket is that session's alone: no other session authenticates there.
        let only_session = match peer {
            Peer::Unix { session } => Some(session),
            Peer::Tcp(_) => None,
        };
        // Until the peer has proven the secret, frames are small: the length header alone must
        // not make the gateway reserve the full frame limit for an anonymous connection.
        let codec =
            LengthDelimitedCodec::builder().length_field_length(4).max_frame_length(HANDSHAKE_MAX_FRAME).new_codec();
        let opened = tokio::time::timeout(settings.handshake_timeout, async {
            let tls = self.acceptor.accept(stream).await.map_err(HandshakeError::Tls)?;
            let mut framed = Framed::new(tls, codec);
            let session_id = handshake(&mut framed, registry, only_session).await?;
            framed.codec_mut().set_max_frame_length(settings.max_frame_bytes);
            Ok::<_, HandshakeError>((framed, session_id))
        })
        .await
        .unwrap_or(Err(HandshakeError::Timeout));
        // The handshake is over either way: the slots go to the next peer.
        drop(slots);
        let (framed, session_id) = match opened {
            Ok(pair) => pair,
            Err(e) => {
                stats.auth_failures.fetch_add(1, Ordering::Relaxed);
                registry.auth_failed(peer, &e);
                return; // dropping the stream closes the connection without a reason
            }
        };
        stats.authenticated.fetch_add(1, Ordering::Relaxed);
        tracing::info!(session_id, %peer, conn_id, "driver authenticated");
        let (link, outbox) = link::channel(conn_id, peer.transport(), settings.max_queued);
        registry.attach(session_id, link);
        let reason = pump(framed, outbox, settings, session_id, conn_id, registry).await;
        if let Ended::Overflow(limits) = reason {
            stats.queue_overflows.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                session_id,
                conn_id,
                max_messages = limits.messages,
                max_bytes = limits.bytes,
                "driver connection closed: the driver does not read its messages"
            );
        } else {
            tracing::info!(session_id, conn_id, reason = %reason, "driver connection closed");
        }
        registry.detach(session_id, conn_id);
    }
}

async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    framed: &mut Framed<S, LengthDelimitedCodec>,
    registry: &dyn DriverRegistry,
    only_session: Option<u32>,
) -> Result<u32, HandshakeError> {
    let (session_id, client_nonce) = match next_message(framed).await? {
        FromDriver::Hello { protocol_version, session_id, client_nonce } => {
            if protocol_version != PROTOCOL_VERSION {
                return Err(HandshakeError::Version(protocol_version));
            }
            if !valid_nonce(&client_nonce) {
                return Err(HandshakeError::Protocol("client nonce is not 32 hex-encoded bytes".into()));
            }
            (session_id, client_nonce)
        }
        other => return Err(HandshakeError::Protocol(format!("expected hello, got {}", kind_of(&other)))),
    };
    // A session that does not exist (or no longer expects a driver) is answered exactly like a
    // live one: a challenge, then a proof checked against a throwaway secret nobody knows, so
    // it fails as a wrong proof does. Refusing at once would tell any peer which session ids
    // are live. The throwaway secret is drawn on both paths and the MAC computed on both, so
    // the two take the same work. Another session's id on a session's own socket is answered
    // the same way.
    let decoy = SessionSecret::generate();
    let secret = only_session.is_none_or(|only| only == session_id).then(|| registry.secret(session_id)).flatten();
    let (secret, live) = match secret {
        Some(secret) => (secret, true),
        None => (decoy, false),
    };
    let server_nonce = fresh_nonce();
    send_message(framed, &ToDriver::Challenge { server_nonce: server_nonce.clone() }).await?;
    match next_message(framed).await? {
        FromDriver::Proof { mac } => {
            let proven = secret.verify(Role::Driver, session_id, &client_nonce, &server_nonce, &mac);
            if !(proven && live) {
                return Err(HandshakeError::BadProof(session_id));
            }
        }
        other => return Err(HandshakeError::Protocol(format!("expected proof, got {}", kind_of(&other)))),
    }
    let mac = secret.mac(Role::Gateway, session_id, &client_nonce, &server_nonce);
    send_message(framed, &ToDriver::Ok { mac }).await?;
    Ok(session_id)
}

async fn next_message<S: AsyncRead + AsyncWrite + Unpin>(
    framed: &mut Framed<S, LengthDelimitedCodec>,
) -> Result<FromDriver, HandshakeError> {
    let frame = framed.next().await.ok_or(HandshakeError::Closed)?.map_err(HandshakeError::Frame)?;
    // serde's message quotes what the peer sent (an unknown `type`, say), and an anonymous peer
    // must not write its own text into the audit trail or the log: the category only.
    serde_json::from_slice(&frame).map_err(|e| HandshakeError::Protocol(malformed(&e).into()))
}

/// What is wrong with a frame that is not a message, in fixed words (never the peer's text).
fn malformed(err: &serde_json::Error) -> &'static str {
    use serde_json::error::Category;
    match err.classify() {
        Category::Syntax | Category::Eof => "not a JSON object",
        Category::Data => "not a message of this protocol (unknown type, or a field missing or of the wrong type)",
        Category::Io => "unreadable",
    }
}

async fn send_message<S: AsyncRead + AsyncWrite + Unpin>(
    framed: &mut Framed<S, LengthDelimitedCodec>,
    msg: &ToDriver,
) -> Result<(), HandshakeError> {
    let bytes = serde_json::to_vec(msg).map_err(|e| HandshakeError::Protocol(e.to_string()))?;
    framed.send(Bytes::from(bytes)).await.map_err(HandshakeError::Frame)
}

fn kind_of(msg: &FromDriver) -> &'static str {
    match msg {
        FromDriver::Hello { .. } => "hello",
        FromDriver::Proof { .. } => "proof",
        FromDriver::State { .. } => "state",
        FromDriver::AppInfo { .. } => "app_info",
        FromDriver::StatementUpdate { .. } => "statement_update",
        FromDriver::StatementResult { .. } => "statement_result",
        FromDriver::Completion { .. } => "completion",
        FromDriver::AddFileResult { .. } => "add_file_result",
        FromDriver::Pong => "pong",
    }
}

/// Why a connection ended.
enum Ended {
    /// The driver did not read what it was sent: its queue overflowed.
    Overflow(QueueLimits),
    /// Anything else, in words for the log.
    Other(String),
}

impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Overflow(_) => f.write_str("the driver did not read its messages"),
            Self::Other(why) => f.write_str(why),
        }
    }
}

/// Moves messages both ways until either side closes, or the driver stops reading; returns why
/// it ended. Reading and writing run concurrently, so a large frame in one direction never
/// blocks the other.
async fn pump<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    framed: Framed<S, LengthDelimitedCodec>,
    outbox: Outbox,
    settings: &RpcSettings,
    session_id: u32,
    conn_id: u64,
    registry: &dyn DriverRegistry,
) -> Ended {
    let (sink, stream) = framed.split();
    let (overflowed, limits) = (outbox.overflowed(), outbox.limits());
    let mut writer = tokio::spawn(write_loop(sink, outbox, settings.ping_interval));
    // The overflow ends the connection even while the writer waits on a peer that does not
    // read: that wait is exactly what filled the queue.
    let reason = tokio::select! {
        reason = read_loop(stream, settings.ping_interval * 3, session_id, conn_id, registry) => Ended::Other(reason),
        reason = &mut writer => Ended::Other(reason.unwrap_or_else(|e| format!("writer failed: {e}"))),
        () = overflowed => Ended::Overflow(limits),
    };
    writer.abort();
    reason
}

async fn read_loop<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: futures_util::stream::SplitStream<Framed<S, LengthDelimitedCodec>>,
    silence_limit: std::time::Duration,
    session_id: u32,
    conn_id: u64,
    registry: &dyn DriverRegistry,
) -> String {
    loop {
        // The driver answers every ping, so three ping intervals of silence mean it is gone.
        let frame = match tokio::time::timeout(silence_limit, stream.next()).await {
            Err(_) if registry.statement_running(session_id) => continue,
            Err(_) => return "driver stopped answering pings".into(),
            Ok(None) => return "closed by the driver".into(),
            Ok(Some(Err(e))) => return format!("frame error: {e}"),
            Ok(Some(Ok(frame))) => frame,
        };
        match serde_json::from_slice::<FromDriver>(&frame) {
            Ok(FromDriver::Hello { .. } | FromDriver::Proof { .. }) => {
                return "handshake message after the handshake".into();
            }
            Ok(FromDriver::Pong) => {}
            Ok(msg) => registry.deliver(session_id, conn_id, msg),
            Err(e) => return format!("malformed message: {}", malformed(&e)),
        }
    }
}

async fn write_loop<S: AsyncRead + AsyncWrite + Unpin>(
    mut sink: futures_util::stream::SplitSink<Framed<S, LengthDelimitedCodec>, Bytes>,
    mut outbox: Outbox,
    ping_interval: std::time::Duration,
) -> String {
    let mut ping = tokio::time::interval(ping_interval);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let msg = tokio::select! {
            out = outbox.recv() => match out {
                Some(msg) => msg,
                None => return "replaced or closed by the gateway".into(),
            },
            _ = ping.tick() => ToDriver::Ping,
        };
        let bytes = match serde_json::to_vec(&msg) {
            Ok(b) => b,
            Err(e) => return format!("cannot encode a message: {e}"),
        };
        if let Err(e) = sink.send(Bytes::from(bytes)).await {
            return format!("write failed: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_malformed_frame_is_described_without_the_peers_text() {
        for frame in [
            &br#"{"type":"hello\nINFO forged log line"}"#[..],
            br#"{"type":"hello","protocol_version":"s3cr3t"}"#,
            b"s3cr3t not json",
        ] {
            let err = serde_json::from_slice::<FromDriver>(frame).unwrap_err();
            let text = HandshakeError::Protocol(malformed(&err).into()).to_string();
            assert!(!text.contains("forged") && !text.contains("s3cr3t") && !text.contains('\n'), "{text}");
        }
    }
}
