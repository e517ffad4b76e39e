//! The listener: accepts TCP, terminates TLS (rustls) under a handshake timeout, records the
//! connection's facts in request extensions and serves HTTP/1.1 and h2 with hyper; requests
//! hyper refuses by itself are audited here ([`refusals`]).

mod linger;
mod refusals;

use crate::audit::AuditLog;
use crate::identity::ConnInfo;
use crate::net::PerAddr;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower::ServiceExt;

/// `AsyncWrite` for a reading wrapper (`$ty<S>` with an `inner: S`): every write goes straight
/// to `inner`, so only the reading side is the wrapper's own.
macro_rules! forward_async_write {
    ($ty:ident) => {
        impl<S: AsyncWrite + Unpin> AsyncWrite for $ty<S> {
            fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
                Pin::new(&mut self.inner).poll_write(cx, buf)
            }
            fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
                Pin::new(&mut self.inner).poll_flush(cx)
            }
            fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
                Pin::new(&mut self.inner).poll_shutdown(cx)
            }
            fn poll_write_vectored(
                mut self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                bufs: &[std::io::IoSlice<'_>],
            ) -> Poll<std::io::Result<usize>> {
                Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
            }
            fn is_write_vectored(&self) -> bool {
                self.inner.is_write_vectored()
            }
        }
    };
}
pub(crate) use forward_async_write;

/// How the listener talks to clients.
#[derive(Clone)]
pub enum Transport {
    /// HTTPS.
    Tls(Arc<rustls::ServerConfig>),
    /// `server.dangerous_plain_http`.
    DangerousPlain,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Tls(_) => "Tls",
            Self::DangerousPlain => "DangerousPlain",
        })
    }
}

/// Limits on client connections.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    /// Connections open at once; at the cap the accept loop waits for one to close.
    pub max: usize,
    /// Connections open at once from one client (an IPv6 client by its /64, see
    /// [`crate::net::AddrKey`]); beyond it a new one is closed at once.
    pub per_ip: usize,
    /// Time for the TLS handshake.
    pub handshake_timeout: Duration,
    /// Time for a request's headers: after the handshake, and between requests.
    pub header_timeout: Duration,
    /// hyper's HTTP/1 read buffer: a request head beyond it is refused (431) by hyper itself.
    pub h1_max_buf: usize,
    /// h2's header list ceiling: a larger one is refused (431) by h2 itself.
    pub h2_max_header_list: u32,
}

/// A stream with some bytes already read from it put back in front.
struct Prefixed<S> {
    prefix: Vec<u8>,
    read: usize,
    inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        if self.read < self.prefix.len() {
            let n = buf.remaining().min(self.prefix.len() - self.read);
            let start = self.read;
            buf.put_slice(&self.prefix[start..start + n]);
            self.read += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

forward_async_write!(Prefixed);

impl<S> Prefixed<S> {
    /// Whether the client started with the HTTP/2 preface.
    fn is_h2(&self) -> bool {
        self.prefix.starts_with(H2_PREFACE)
    }
}

/// The bytes an HTTP/2 connection starts with.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Waits (up to `limit`) for enough of the client's first bytes to tell HTTP/1 from h2, as
/// hyper then does with no time limit of its own: a client that connects and sends nothing,
/// or part of the h2 preface, would hold its connection for ever. None: not in time, or the
/// client closed.
async fn first_bytes<S: AsyncRead + Unpin>(mut stream: S, limit: Duration) -> Option<Prefixed<S>> {
    let mut prefix = Vec::with_capacity(64);
    let read = async {
        let mut buf = [0u8; 64];
        loop {
            let n = stream.read(&mut buf).await.ok()?;
            if n == 0 {
                return None;
            }
            prefix.extend_from_slice(&buf[..n]);
            let seen = prefix.len().min(H2_PREFACE.len());
            // Decided: not h2 (differs from the preface), or the whole preface is here.
            if prefix[..seen] != H2_PREFACE[..seen] || seen == H2_PREFACE.len() {
                return Some(());
            }
        }
    };
    tokio::time::timeout(limit, read).await.ok().flatten()?;
    Some(Prefixed { prefix, read: 0, inner: stream })
}

/// Serves `app` on `listener` until `shutdown` turns true; requests that hyper refuses before
/// `app` sees them are recorded in `audit`.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    transport: Transport,
    limits: ConnLimits,
    audit: Arc<AuditLog>,
    mut shutdown: watch::Receiver<bool>,
) {
    let (handshake_timeout, header_timeout) = (limits.handshake_timeout, limits.header_timeout);
    // Each connection holds a permit until it closes; at the cap the loop stops accepting.
    let permits = Arc::new(tokio::sync::Semaphore::new(limits.max));
    let per_ip = Arc::new(PerAddr::default());
    let acceptor = match &transport {
        Transport::Tls(config) => Some(tokio_rustls::TlsAcceptor::from(config.clone())),
        Transport::DangerousPlain => None,
    };
    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
            _ = shutdown.changed() => return,
        };
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Typically EMFILE: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        // One address cannot take every connection slot.
        let Some(ip_slot) = per_ip.enter(peer.ip(), limits.per_ip) else {
            tracing::warn!(%peer, limit = limits.per_ip, "connection refused: too many from this address");
            continue; // dropping the stream closes it
        };
        let _ = tcp.set_nodelay(true);
        let app = app.clone();
        let acceptor = acceptor.clone();
        let audit = audit.clone();
        tokio::spawn(async move {
            let _slots = (permit, ip_slot);
            // On h2, counts the requests the service receives against the streams the client
            // opened; recorded when dropped, after the connection.
            let h2_tally =
                |h2: bool| h2.then(|| refusals::H2Tally::new(audit.clone(), peer, limits.h2_max_header_list));
            let service_for = |info: ConnInfo, served: Option<Arc<std::sync::atomic::AtomicU64>>| {
                hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                    if let Some(served) = &served {
                        served.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                    req.extensions_mut().insert(info.clone());
                    app.clone().oneshot(req)
                })
            };
            let mut builder = auto::Builder::new(TokioExecutor::new());
            // Without a timer hyper applies no header timeout at all: a client trickling its
            // headers would hold the connection for ever. The timer also closes HTTP/1
            // connections idle between requests for that long. The read buffer is hyper's
            // ceiling on a request head; heads over server.max_header_bytes but under it are
            // refused inside the audit layer.
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .max_buf_size(limits.h1_max_buf);
            // HTTP/2 peers that stop answering pings are dropped.
            builder
                .http2()
                .timer(TokioTimer::new())
                .keep_alive_interval(Duration::from_secs(30))
                .keep_alive_timeout(Duration::from_secs(20))
                .max_header_list_size(limits.h2_max_header_list);
            let (result, tally, lingering) = match acceptor {
                Some(acceptor) => match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let client_cert =
                            tls.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| Arc::new(c.to_vec()));
                        let Some(io) = first_bytes(tls, header_timeout).await else {
                            tracing::debug!(%peer, "no request after the TLS handshake");
                            return;
                        };
                        let tally = h2_tally(io.is_h2());
                        let service =
                            service_for(ConnInfo::new(peer, client_cert), tally.as_ref().map(|t| t.served.clone()));
                        let io = refusals::StreamCounter::new(io, tally.as_ref().map(|t| t.opened.clone()));
                        let (io, back) = linger::HandBack::new(io);
                        let result = builder.serve_connection_with_upgrades(TokioIo::new(io), service).await;
                        (result, tally, linger::after(back))
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake timed out");
                        return;
                    }
                },
                None => {
                    let Some(io) = first_bytes(tcp, header_timeout).await else { return };
                    let tally = h2_tally(io.is_h2());
                    let service = service_for(ConnInfo::new(peer, None), tally.as_ref().map(|t| t.served.clone()));
                    let io = refusals::StreamCounter::new(io, tally.as_ref().map(|t| t.opened.clone()));
                    let (io, back) = linger::HandBack::new(io);
                    let result = builder.serve_connection_with_upgrades(TokioIo::new(io), service).await;
                    (result, tally, linger::after(back))
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
                if let Some(event) = refusals::h1_refusal(peer, e.as_ref()) {
                    audit.record(event);
                }
            }
            // Records the h2 streams that never became requests, if any.
            drop(tally);
            // What the client still sends is read before the connection is closed.
            if let Some(lingering) = lingering {
                lingering.await;
            }
        });
    }
}
