//! The HTTPS certificate, reloaded when its files change: new handshakes get the new
//! certificate, established connections keep theirs (nothing is dropped). A pair that does not
//! load keeps the old one in force and is logged.

use super::{PemPair, TlsError};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

/// Serves the current certificate and swaps it when the files change.
#[derive(Debug)]
pub struct ReloadingResolver {
    current: RwLock<Arc<CertifiedKey>>,
    cert: PathBuf,
    key: PathBuf,
    stamp: RwLock<Stamp>,
}

type Stamp = Option<(Option<SystemTime>, u64, Option<SystemTime>, u64)>;

fn stamp_of(cert: &Path, key: &Path) -> Stamp {
    let c = std::fs::metadata(cert).ok()?;
    let k = std::fs::metadata(key).ok()?;
    Some((c.modified().ok(), c.len(), k.modified().ok(), k.len()))
}

/// Builds a signing key + chain from PEM.
pub fn certified_key(pair: &PemPair) -> Result<Arc<CertifiedKey>, TlsError> {
    let (certs, key) = super::parse_pair(pair)?;
    let provider = rustls::crypto::ring::default_provider();
    let signing = provider.key_provider.load_private_key(key)?;
    let certified = CertifiedKey::new(certs, signing);
    certified.keys_match().map_err(TlsError::Rustls)?;
    Ok(Arc::new(certified))
}

impl ReloadingResolver {
    /// Loads the pair now (an error here stops start-up).
    pub fn new(cert: &Path, key: &Path) -> Result<Arc<Self>, TlsError> {
        let stamp = stamp_of(cert, key);
        let current = certified_key(&super::read_pem_files(cert, key)?)?;
        Ok(Arc::new(Self {
            current: RwLock::new(current),
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            stamp: RwLock::new(stamp),
        }))
    }

    /// Reloads if the files changed. `None`: unchanged; `Some(Err)`: the new files are bad and
    /// the old certificate stays.
    pub fn reload_if_changed(&self) -> Option<Result<(), TlsError>> {
        let now = stamp_of(&self.cert, &self.key);
        if self.stamp.read().map(|s| *s == now).unwrap_or(false) {
            return None;
        }
        if let Ok(mut s) = self.stamp.write() {
            *s = now;
        }
        let loaded = super::read_pem_files(&self.cert, &self.key).and_then(|pair| certified_key(&pair));
        Some(loaded.map(|fresh| {
            if let Ok(mut slot) = self.current.write() {
                *slot = fresh;
            }
        }))
    }

    /// Checks the files every `every` until the resolver is dropped.
    pub fn watch(self: &Arc<Self>, every: Duration) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(resolver) = weak.upgrade() else { return };
                match resolver.reload_if_changed() {
                    None => {}
                    Some(Ok(())) => tracing::info!(cert = %resolver.cert.display(), "TLS certificate reloaded"),
                    Some(Err(e)) => {
                        tracing::error!(error = %e, "TLS certificate NOT reloaded; the previous one stays in use");
                    }
                }
            }
        });
    }
}

impl ResolvesServerCert for ReloadingResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().map(|c| c.clone())
    }
}
