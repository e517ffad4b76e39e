//! The benchmarks' load generator: `wrk`-style closed-loop load over HTTPS keep-alive
//! connections, with what `wrk` lacks here: a client certificate, a trusted CA, and one JSON
//! line of figures for the bench scripts to read.
//!
//! `bench_load URL --ca PEM [--connections N] [--seconds S] [--warmup S] [--header 'K: V']...
//! [--cert PEM --key PEM] [--pause-ms MS]`
//!
//! Every connection is opened first (at most 16 handshakes at once, as a polite client),
//! then each sends request after request on its connection, HTTP/1.1, for the warm-up and the
//! measured time (with `--pause-ms`, waiting that long after each answer, as polling clients
//! do); only requests started in the measured window count. Prints
//! `{"requests", "answered" (warm-up included), "rps", "p50_ms", "p90_ms", "p99_ms", "max_ms", "errors", "statuses"}`.

use anyhow::Context;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

struct Args {
    url: http::Uri,
    ca: String,
    client: Option<(String, String)>,
    connections: usize,
    seconds: f64,
    warmup: f64,
    headers: Vec<(String, String)>,
    /// Each connection waits this long after an answer (polling clients); zero: closed loop.
    pause: Duration,
}

fn args() -> anyhow::Result<Args> {
    let mut it = std::env::args().skip(1);
    let url: http::Uri = it.next().context("usage: bench_load URL --ca PEM ...")?.parse()?;
    let (mut ca, mut cert, mut key) = (None, None, None);
    let (mut connections, mut seconds, mut warmup, mut headers) = (64, 10.0, 2.0, Vec::new());
    let mut pause = Duration::ZERO;
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--ca" => ca = Some(value),
            "--cert" => cert = Some(value),
            "--key" => key = Some(value),
            "--connections" => connections = value.parse()?,
            "--seconds" => seconds = value.parse()?,
            "--warmup" => warmup = value.parse()?,
            "--pause-ms" => pause = Duration::from_millis(value.parse()?),
            "--header" => {
                let (k, v) = value.split_once(':').context("--header wants 'Name: value'")?;
                headers.push((k.trim().to_string(), v.trim().to_string()));
            }
            other => anyhow::bail!("unknown flag {other}"),
        }
    }
    let client = match (cert, key) {
        (Some(c), Some(k)) => Some((c, k)),
        (None, None) => None,
        _ => anyhow::bail!("--cert and --key go together"),
    };
    Ok(Args { url, ca: ca.context("--ca is required")?, client, connections, seconds, warmup, headers, pause })
}

fn tls_config(args: &Args) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut std::fs::read(&args.ca)?.as_slice()) {
        roots.add(cert?)?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let mut config = match &args.client {
        Some((cert, key)) => {
            let certs = rustls_pemfile::certs(&mut std::fs::read(cert)?.as_slice()).collect::<Result<Vec<_>, _>>()?;
            let key = rustls_pemfile::private_key(&mut std::fs::read(key)?.as_slice())?.context("no private key")?;
            builder.with_client_auth_cert(certs, key)?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<bytes::Bytes>>;

async fn connect(url: &http::Uri, tls: &tokio_rustls::TlsConnector) -> anyhow::Result<Sender> {
    let host = url.host().context("URL without a host")?;
    let port = url.port_u16().unwrap_or(443);
    let tcp = tokio::net::TcpStream::connect((host, port)).await?;
    tcp.set_nodelay(true)?;
    let name = rustls::pki_types::ServerName::try_from(host.to_string())?;
    let stream = tls.connect(name, tcp).await?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

#[derive(Default)]
struct Tally {
    /// Every answered request, warm-up included.
    answered: u64,
    latencies_us: Vec<u64>,
    statuses: BTreeMap<u16, u64>,
    errors: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Arc::new(args()?);
    let tls = tokio_rustls::TlsConnector::from(tls_config(&args)?);
    let handshakes = Arc::new(tokio::sync::Semaphore::new(16));
    let mut senders = Vec::with_capacity(args.connections);
    let mut opening = tokio::task::JoinSet::new();
    for _ in 0..args.connections {
        let (args, tls, handshakes) = (args.clone(), tls.clone(), handshakes.clone());
        opening.spawn(async move {
            let _permit = handshakes.acquire().await?;
            connect(&args.url, &tls).await
        });
    }
    while let Some(opened) = opening.join_next().await {
        senders.push(opened??);
    }
    let start = Instant::now();
    let measured_from = start + Duration::from_secs_f64(args.warmup);
    let end = measured_from + Duration::from_secs_f64(args.seconds);
    let mut running = tokio::task::JoinSet::new();
    for mut sender in senders {
        let (args, tls) = (args.clone(), tls.clone());
        running.spawn(async move {
            let mut tally = Tally::default();
            loop {
                let sent = Instant::now();
                if sent >= end {
                    return tally;
                }
                let mut request = http::Request::get(args.url.path_and_query().map_or("/", |p| p.as_str()))
                    .header(http::header::HOST, args.url.authority().map_or("", |a| a.as_str()));
                for (k, v) in &args.headers {
                    request = request.header(k.as_str(), v.as_str());
                }
                let outcome = async {
                    sender.ready().await?;
                    let response = sender.send_request(request.body(Empty::new())?).await?;
                    let status = response.status().as_u16();
                    response.into_body().collect().await?;
                    anyhow::Ok(status)
                }
                .await;
                let counted = sent >= measured_from;
                let answered = outcome.is_ok();
                tally.answered += u64::from(outcome.is_ok());
                match outcome {
                    Ok(status) if counted => {
                        tally.latencies_us.push(sent.elapsed().as_micros() as u64);
                        *tally.statuses.entry(status).or_default() += 1;
                    }
                    Ok(_) => {}
                    Err(_) => {
                        if counted {
                            tally.errors += 1;
                        }
                        match connect(&args.url, &tls).await {
                            Ok(fresh) => sender = fresh,
                            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                        }
                    }
                }
                if answered && !args.pause.is_zero() {
                    tokio::time::sleep(args.pause).await;
                }
            }
        });
    }
    let mut all = Tally::default();
    while let Some(done) = running.join_next().await {
        let done = done?;
        all.latencies_us.extend(done.latencies_us);
        for (status, n) in done.statuses {
            *all.statuses.entry(status).or_default() += n;
        }
        all.errors += done.errors;
        all.answered += done.answered;
    }
    all.latencies_us.sort_unstable();
    let pct = |p: f64| -> f64 {
        let v = &all.latencies_us;
        if v.is_empty() {
            return f64::NAN;
        }
        let k = ((p / 100.0 * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
        v[k] as f64 / 1000.0
    };
    let figures = serde_json::json!({
        "requests": all.latencies_us.len(),
        "answered": all.answered,
        "rps": all.latencies_us.len() as f64 / args.seconds,
        "p50_ms": pct(50.0),
        "p90_ms": pct(90.0),
        "p99_ms": pct(99.0),
        "max_ms": pct(100.0),
        "errors": all.errors,
        "statuses": all.statuses,
    });
    println!("{figures}");
    Ok(())
}
