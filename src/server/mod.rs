//! The listener: accepts TCP, terminates TLS (rustls) under a handshake timeout, records the
//! connection's facts in request extensions and serves HTTP/1.1 and h2 with hyper.

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower::ServiceExt;

/// Facts about the connection a request came on.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The client's address.
    pub peer: SocketAddr,
    /// The client certificate (DER), already verified by TLS against the client CA.
    pub client_cert: Option<Arc<Vec<u8>>>,
}

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

/// Serves `app` on `listener` until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    transport: Transport,
    handshake_timeout: Duration,
    max_connections: usize,
    mut shutdown: watch::Receiver<bool>,
) {
    // Each connection holds a permit until it closes; at the cap the loop stops accepting.
    let permits = Arc::new(tokio::sync::Semaphore::new(max_connections));
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
        let _ = tcp.set_nodelay(true);
        let app = app.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let service_for = |info: ConnInfo| {
                hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(info.clone());
                    app.clone().oneshot(req)
                })
            };
            let mut builder = auto::Builder::new(TokioExecutor::new());
            // Without a timer hyper applies no header timeout at all: a client trickling its
            // headers (or sending none) would hold the connection for ever.
            builder.http1().timer(TokioTimer::new()).header_read_timeout(handshake_timeout);
            // HTTP/2 peers that stop answering pings are dropped.
            builder
                .http2()
                .timer(TokioTimer::new())
                .keep_alive_interval(Duration::from_secs(30))
                .keep_alive_timeout(Duration::from_secs(20));
            let result = match acceptor {
                Some(acceptor) => match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let client_cert =
                            tls.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| Arc::new(c.to_vec()));
                        let service = service_for(ConnInfo { peer, client_cert });
                        builder.serve_connection_with_upgrades(TokioIo::new(tls), service).await
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
                    let service = service_for(ConnInfo { peer, client_cert: None });
                    builder.serve_connection_with_upgrades(TokioIo::new(tcp), service).await
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
}
