//! TLS for the HTTPS listener and the driver RPC channel: rustls server configurations
//! (TLS 1.2+, ALPN h2 and http/1.1) and generated development certificates.

use crate::fs::FsError;
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub mod reload;

use crate::fs::{create_private_dir, write_file};

/// What can go wrong setting up TLS.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A certificate or key file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The PEM holds no usable certificate or key.
    #[error("{0}")]
    Pem(String),
    /// Certificate generation failed.
    #[error("generating a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// rustls refused the certificate/key pair.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

impl From<FsError> for TlsError {
    fn from(e: FsError) -> Self {
        Self::Io { path: e.path, source: e.source }
    }
}

/// A certificate chain and key as PEM text.
#[derive(Clone)]
pub struct PemPair {
    /// Leaf first, then intermediates.
    pub cert_pem: String,
    /// PKCS#8 private key.
    pub key_pem: crate::config::Secret<String>,
}

impl std::fmt::Debug for PemPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PemPair").field("key_pem", &self.key_pem).finish_non_exhaustive()
    }
}

/// A private CA and a server certificate it signed.
#[derive(Debug, Clone)]
pub struct GeneratedPki {
    /// The CA certificate (what clients trust).
    pub ca_pem: String,
    /// The CA's key (kept to sign more certificates, e.g. client certificates in tests).
    pub ca_key_pem: crate::config::Secret<String>,
    /// The server certificate and key.
    pub server: PemPair,
}

/// Generates a CA and a server certificate for `names` (DNS names or IP literals).
pub fn generate_pki(ca_name: &str, names: &[String]) -> Result<GeneratedPki, TlsError> {
    let now = time::OffsetDateTime::now_utc();
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.distinguished_name.push(DnType::CommonName, ca_name);
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages =
        vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    ca_params.not_before = now - time::Duration::hours(1);
    ca_params.not_after = now + time::Duration::days(825);
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca_params.self_signed(&ca_key)?;

    let mut leaf_params = CertificateParams::new(names.to_vec())?;
    leaf_params.distinguished_name.push(DnType::CommonName, names.first().map(String::as_str).unwrap_or("sparkgate"));
    leaf_params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    leaf_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf_params.not_before = now - time::Duration::hours(1);
    leaf_params.not_after = now + time::Duration::days(397);
    let leaf_key = KeyPair::generate()?;
    let leaf = leaf_params.signed_by(&leaf_key, &ca_cert, &ca_key)?;

    Ok(GeneratedPki {
        ca_pem: ca_cert.pem(),
        ca_key_pem: crate::config::Secret::new(ca_key.serialize_pem()),
        server: PemPair { cert_pem: leaf.pem(), key_pem: crate::config::Secret::new(leaf_key.serialize_pem()) },
    })
}

/// The driver RPC channel's identity: the CA drivers trust and the server certificate and key.
#[derive(Debug, Clone)]
pub struct RpcIdentity {
    /// The CA certificate drivers are given.
    pub ca_pem: String,
    /// The server certificate and key.
    pub server: PemPair,
}

/// A certificate kept is replaced this long before it expires.
const RENEW_BEFORE_DAYS: i64 = 30;

/// The RPC identity kept in `dir` (`ca.pem`, `server.pem`, `server-key.pem` 0600, `names`), so
/// that drivers launched before a restart still trust the gateway after it; made anew when
/// there is none, when it was made for other `names`, or when it expires within 30 days.
/// Returns it and whether it was made now. (The CA's key is not kept: nothing more is signed.)
pub fn rpc_identity(dir: &Path, names: &[String]) -> Result<(RpcIdentity, bool), TlsError> {
    let (ca, cert, key, listed) =
        (dir.join("ca.pem"), dir.join("server.pem"), dir.join("server-key.pem"), dir.join("names"));
    let wanted = names.join("\n");
    let kept = (|| {
        if std::fs::read_to_string(&listed).ok()? != wanted {
            return None;
        }
        let identity = RpcIdentity {
            ca_pem: std::fs::read_to_string(&ca).ok()?,
            server: PemPair {
                cert_pem: std::fs::read_to_string(&cert).ok()?,
                key_pem: crate::config::Secret::new(std::fs::read_to_string(&key).ok()?),
            },
        };
        parse_pair(&identity.server).ok()?;
        let (_, der) = x509_parser::pem::parse_x509_pem(identity.server.cert_pem.as_bytes()).ok()?;
        let leaf = der.parse_x509().ok()?;
        let renew_at = time::OffsetDateTime::now_utc() + time::Duration::days(RENEW_BEFORE_DAYS);
        (leaf.validity().not_after.to_datetime() > renew_at).then_some(identity)
    })();
    if let Some(identity) = kept {
        return Ok((identity, false));
    }
    let pki = generate_pki("sparkgate driver RPC CA", names)?;
    create_private_dir(dir)?;
    write_file(&key, pki.server.key_pem.expose().as_bytes(), 0o600)?;
    write_file(&cert, pki.server.cert_pem.as_bytes(), 0o644)?;
    write_file(&ca, pki.ca_pem.as_bytes(), 0o644)?;
    write_file(&listed, wanted.as_bytes(), 0o644)?;
    Ok((RpcIdentity { ca_pem: pki.ca_pem, server: pki.server }, true))
}

/// Paths of the development certificates inside the data directory.
#[derive(Debug, Clone)]
pub struct DevCertPaths {
    /// The dev CA certificate (give it to clients: `curl --cacert`).
    pub ca: PathBuf,
    /// The server certificate.
    pub cert: PathBuf,
    /// The server key (mode 0600).
    pub key: PathBuf,
}

impl DevCertPaths {
    /// The paths under `<data_dir>/tls/`.
    pub fn in_dir(data_dir: &Path) -> Self {
        let dir = data_dir.join("tls");
        Self { ca: dir.join("dev-ca.pem"), cert: dir.join("server.pem"), key: dir.join("server-key.pem") }
    }
}

/// Creates development certificates for localhost and 127.0.0.1 unless they already exist.
/// Returns true when new files were written.
pub fn ensure_dev_certs(paths: &DevCertPaths) -> Result<bool, TlsError> {
    if paths.cert.exists() && paths.key.exists() {
        return Ok(false);
    }
    let pki = generate_pki("sparkgate development CA", &["localhost".into(), "127.0.0.1".into(), "::1".into()])?;
    if let Some(dir) = paths.cert.parent() {
        create_private_dir(dir)?;
    }
    write_file(&paths.ca, pki.ca_pem.as_bytes(), 0o644)?;
    write_file(&paths.cert, pki.server.cert_pem.as_bytes(), 0o644)?;
    write_file(&paths.key, pki.server.key_pem.expose().as_bytes(), 0o600)?;
    Ok(true)
}

/// Reads a PEM certificate chain and private key from files.
pub fn read_pem_files(cert: &Path, key: &Path) -> Result<PemPair, TlsError> {
    let read =
        |path: &Path| std::fs::read_to_string(path).map_err(|source| TlsError::Io { path: path.to_path_buf(), source });
    Ok(PemPair { cert_pem: read(cert)?, key_pem: crate::config::Secret::new(read(key)?) })
}

fn parse_pair(pair: &PemPair) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let certs = rustls_pemfile::certs(&mut pair.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem(format!("certificate PEM: {e}")))?;
    if certs.is_empty() {
        return Err(TlsError::Pem("the certificate file holds no certificate".into()));
    }
    let key = rustls_pemfile::private_key(&mut pair.key_pem.expose().as_bytes())
        .map_err(|e| TlsError::Pem(format!("key PEM: {e}")))?
        .ok_or_else(|| TlsError::Pem("the key file holds no private key".into()))?;
    Ok((certs, key))
}

/// A rustls server configuration: TLS 1.2 and 1.3 only, with the given ALPN protocols.
pub fn server_config(pair: &PemPair, alpn: &[&[u8]]) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let (certs, key) = parse_pair(pair)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// How the HTTPS listener treats client certificates.
#[derive(Debug, Clone)]
pub enum ClientAuth {
    /// Not asked for.
    None,
    /// Asked for and verified against these CA certificates (PEM); `required` refuses
    /// connections without one. Expired or untrusted certificates always fail the handshake.
    Verify {
        /// Trusted CA certificates.
        ca_pem: String,
        /// Whether a certificate is mandatory.
        required: bool,
    },
}

/// The HTTPS configuration: TLS 1.2+, h2 and http/1.1, a certificate that can be reloaded,
/// and optional client certificate verification.
pub fn https_config(
    resolver: Arc<dyn rustls::server::ResolvesServerCert>,
    client_auth: &ClientAuth,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
    let builder = match client_auth {
        ClientAuth::None => builder.with_no_client_auth(),
        ClientAuth::Verify { ca_pem, required } => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
                let cert = cert.map_err(|e| TlsError::Pem(format!("client CA PEM: {e}")))?;
                roots.add(cert).map_err(TlsError::Rustls)?;
            }
            if roots.is_empty() {
                return Err(TlsError::Pem("the client CA file holds no certificate".into()));
            }
            let mut verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            if !required {
                verifier = verifier.allow_unauthenticated();
            }
            let verifier = verifier.build().map_err(|e| TlsError::Pem(format!("client CA: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_cert_resolver(resolver);
    config.alpn_protocols = HTTP_ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// A client certificate to generate (tests and development).
#[derive(Debug, Clone, Default)]
pub struct ClientCertSpec {
    /// Subject common name.
    pub common_name: String,
    /// An rfc822Name SAN, if any.
    pub email: Option<String>,
    /// Already expired.
    pub expired: bool,
}

/// Generates a client CA and client certificates it signed: `(ca_pem, [(cert_pem, key_pem)])`.
pub fn generate_client_pki(ca_name: &str, clients: &[ClientCertSpec]) -> Result<(String, Vec<PemPair>), TlsError> {
    let now = time::OffsetDateTime::now_utc();
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.distinguished_name.push(DnType::CommonName, ca_name);
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
    ca_params.not_before = now - time::Duration::hours(1);
    ca_params.not_after = now + time::Duration::days(30);
    let ca_key = KeyPair::generate()?;
    let ca = ca_params.self_signed(&ca_key)?;
    let mut out = Vec::new();
    for spec in clients {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, spec.common_name.as_str());
        if let Some(email) = &spec.email {
            params.subject_alt_names.push(rcgen::SanType::Rfc822Name(email.as_str().try_into()?));
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        if spec.expired {
            params.not_before = now - time::Duration::days(10);
            params.not_after = now - time::Duration::days(1);
        } else {
            params.not_before = now - time::Duration::hours(1);
            params.not_after = now + time::Duration::days(30);
        }
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &ca, &ca_key)?;
        out.push(PemPair { cert_pem: cert.pem(), key_pem: crate::config::Secret::new(key.serialize_pem()) });
    }
    Ok((ca.pem(), out))
}

/// ALPN for the HTTPS listener.
pub const HTTP_ALPN: &[&[u8]] = &[b"h2", b"http/1.1"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rpc_identity_is_kept_across_restarts_and_made_anew_for_other_names() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let rpc = dir.path().join("rpc");
        let names = ["gw.example.com".to_string(), "localhost".to_string()];
        let (first, made) = rpc_identity(&rpc, &names).unwrap();
        assert!(made);
        let mode = std::fs::metadata(rpc.join("server-key.pem")).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // A restart: the same CA, so drivers launched before it still trust the gateway.
        let (again, made) = rpc_identity(&rpc, &names).unwrap();
        assert!(!made);
        assert_eq!(again.ca_pem, first.ca_pem);
        assert_eq!(again.server.key_pem.expose(), first.server.key_pem.expose());
        assert!(server_config(&again.server, &[]).is_ok());
        // Another advertised host: a certificate for it.
        let (other, made) = rpc_identity(&rpc, &["gw2.example.com".to_string()]).unwrap();
        assert!(made && other.ca_pem != first.ca_pem);
        // A damaged key: made anew rather than served broken.
        std::fs::write(rpc.join("server-key.pem"), "not a key").unwrap();
        let (fresh, made) = rpc_identity(&rpc, &["gw2.example.com".to_string()]).unwrap();
        assert!(made && fresh.ca_pem != other.ca_pem);
    }

    #[test]
    fn generated_pki_builds_a_server_config() {
        let pki = generate_pki("test CA", &["localhost".into(), "127.0.0.1".into()]).unwrap();
        assert!(pki.ca_pem.contains("BEGIN CERTIFICATE"));
        let config = server_config(&pki.server, HTTP_ALPN).unwrap();
        assert_eq!(config.alpn_protocols, vec![b"h2".to_vec(), b"http/1.1".to_vec()]);
    }

    #[test]
    fn dev_certs_are_created_once_with_a_private_key_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let paths = DevCertPaths::in_dir(dir.path());
        assert!(ensure_dev_certs(&paths).unwrap());
        assert!(!ensure_dev_certs(&paths).unwrap());
        let mode = std::fs::metadata(&paths.key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let pair = read_pem_files(&paths.cert, &paths.key).unwrap();
        server_config(&pair, HTTP_ALPN).unwrap();
    }

    #[test]
    fn garbage_pem_is_refused() {
        let pair = PemPair { cert_pem: "nope".into(), key_pem: crate::config::Secret::new("nope".into()) };
        assert!(matches!(server_config(&pair, HTTP_ALPN), Err(TlsError::Pem(_))));
    }
}
