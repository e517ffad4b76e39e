//! The benchmarks' floor: the least a Rust HTTPS server can do for a request, built from the
//! same parts as the gateway (tokio, hyper's HTTP/1.1 + h2 server, axum, rustls with the ring
//! provider and the gateway's own TLS settings) and nothing else: no authentication, access
//! control, audit or metrics. It answers `GET /` with a fixed JSON body, so a benchmark can
//! make it as large as the gateway answer it compares against.
//!
//! `bench_floor CERT_PEM KEY_PEM PORT BODY_JSON` — serves until killed.

use axum::routing::get;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use std::path::Path;
use tower::ServiceExt;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [cert, key, port, body] = args.as_slice() else {
        anyhow::bail!("usage: bench_floor CERT_PEM KEY_PEM PORT BODY_JSON");
    };
    let pair = sparkgate::tls::read_pem_files(Path::new(cert), Path::new(key))?;
    let acceptor = tokio_rustls::TlsAcceptor::from(sparkgate::tls::server_config(&pair, sparkgate::tls::HTTP_ALPN)?);
    let body: &'static str = Box::leak(body.clone().into_boxed_str());
    let app = Router::new()
        .fallback(get(move || async move { ([(axum::http::header::CONTENT_TYPE, "application/json")], body) }));
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port.parse::<u16>()?)).await?;
    loop {
        let (tcp, _) = listener.accept().await?;
        let _ = tcp.set_nodelay(true);
        let (acceptor, app) = (acceptor.clone(), app.clone());
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else { return };
            let service = hyper::service::service_fn(move |req| app.clone().oneshot(req));
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(tls), service)
                .await;
        });
    }
}
