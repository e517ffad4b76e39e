//! Client certificate authentication: the TLS layer has already verified the certificate
//! against the configured client CA (expired or untrusted ones never get this far); this maps
//! it to a user by the configured rule (subject CN or a SAN, optionally through a regex).

use super::{AuthOutcome, AuthSetupError, Authenticator};
use crate::config::ClientCertConfig;
use crate::identity::{AuthMethod, ConnInfo, Principal};
use axum::http::request::Parts;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// Where the user name comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    SubjectCn,
    SanEmail,
    SanDns,
    SanUri,
}

/// Maps a verified client certificate to a principal.
#[derive(Debug)]
pub struct ClientCertAuthenticator {
    source: Source,
    pattern: Option<regex::Regex>,
}

impl ClientCertAuthenticator {
    /// From `auth.client_cert`.
    pub fn from_config(cfg: &ClientCertConfig) -> Result<Self, AuthSetupError> {
        let source = match cfg.user_from.as_str() {
            "subject_cn" => Source::SubjectCn,
            "san_email" => Source::SanEmail,
            "san_dns" => Source::SanDns,
            "san_uri" => Source::SanUri,
            other => return Err(AuthSetupError(format!("auth.client_cert.user_from: unknown `{other}`"))),
        };
        let pattern = match cfg.user_pattern.as_deref().filter(|p| !p.is_empty()) {
            None => None,
            Some(p) => {
                let re =
                    regex::Regex::new(p).map_err(|e| AuthSetupError(format!("auth.client_cert.user_pattern: {e}")))?;
                if re.captures_len() < 2 {
                    return Err(AuthSetupError("auth.client_cert.user_pattern needs one capture group".into()));
                }
                Some(re)
            }
        };
        Ok(Self { source, pattern })
    }

    /// The user a certificate (DER) maps to, or why not.
    pub fn user_of(&self, der: &[u8]) -> Result<String, String> {
        let (_, cert) = X509Certificate::from_der(der).map_err(|e| format!("unreadable client certificate: {e}"))?;
        let candidates: Vec<String> = match self.source {
            Source::SubjectCn => {
                cert.subject().iter_common_name().filter_map(|cn| cn.as_str().ok()).map(str::to_string).collect()
            }
            Source::SanEmail | Source::SanDns | Source::SanUri => {
                let san = cert.subject_alternative_name().ok().flatten();
                san.map(|ext| {
                    ext.value
                        .general_names
                        .iter()
                        .filter_map(|name| match (self.source, name) {
                            (Source::SanEmail, GeneralName::RFC822Name(v))
                            | (Source::SanDns, GeneralName::DNSName(v))
                            | (Source::SanUri, GeneralName::URI(v)) => Some((*v).to_string()),
                            _ => None,
                        })
                        .collect()
                })
                .unwrap_or_default()
            }
        };
        let value =
            candidates.into_iter().next().ok_or_else(|| "the client certificate has no usable name".to_string())?;
        let user = match &self.pattern {
            None => value,
            Some(re) => {
                re.captures(&value).and_then(|c| c.get(1)).map(|m| m.as_str().to_string()).ok_or_else(|| {
                    "the client certificate's name does not match auth.client_cert.user_pattern".to_string()
                })?
            }
        };
        if user.trim().is_empty() {
            return Err("the client certificate maps to an empty user name".into());
        }
        Ok(user)
    }
}

impl Authenticator for ClientCertAuthenticator {
    fn challenge(&self) -> Option<String> {
        None // a TLS-level credential: nothing to put in WWW-Authenticate
    }

    fn authenticate(&self, _parts: &Parts, conn: Option<&ConnInfo>) -> AuthOutcome {
        let Some(conn) = conn else { return AuthOutcome::NotApplicable };
        let Some(der) = conn.client_cert.as_deref() else { return AuthOutcome::NotApplicable };
        // Parsed once per connection, not on each of its requests.
        match conn.client_cert_user.get_or_init(|| self.user_of(der)).clone() {
            Ok(name) => {
                AuthOutcome::authenticated(Principal { name, groups: Vec::new(), method: AuthMethod::ClientCert })
            }
            Err(reason) => AuthOutcome::Rejected(reason),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::{generate_client_pki, ClientCertSpec};

    fn der_of(pem: &str) -> Vec<u8> {
        rustls_pemfile::certs(&mut pem.as_bytes()).next().unwrap().unwrap().to_vec()
    }

    #[test]
    fn names_from_cn_or_san_with_an_optional_pattern() {
        let (_, certs) = generate_client_pki(
            "ca",
            &[ClientCertSpec { common_name: "carol".into(), email: Some("carol@example.com".into()), expired: false }],
        )
        .unwrap();
        let der = der_of(&certs[0].cert_pem);
        let cn = ClientCertAuthenticator::from_config(&ClientCertConfig::default()).unwrap();
        assert_eq!(cn.user_of(&der).unwrap(), "carol");
        let email = ClientCertAuthenticator::from_config(&ClientCertConfig {
            user_from: "san_email".into(),
            user_pattern: Some("^([^@]+)@example\\.com$".into()),
            ..ClientCertConfig::default()
        })
        .unwrap();
        assert_eq!(email.user_of(&der).unwrap(), "carol");
        let other_domain = ClientCertAuthenticator::from_config(&ClientCertConfig {
            user_from: "san_email".into(),
            user_pattern: Some("^([^@]+)@corp\\.example$".into()),
            ..ClientCertConfig::default()
        })
        .unwrap();
        assert!(other_domain.user_of(&der).unwrap_err().contains("does not match"));
        let dns = ClientCertAuthenticator::from_config(&ClientCertConfig {
            user_from: "san_dns".into(),
            ..ClientCertConfig::default()
        })
        .unwrap();
        assert!(dns.user_of(&der).is_err(), "no DNS SAN");
        assert!(cn.user_of(b"garbage").is_err());
    }

    #[test]
    fn the_certificate_is_mapped_once_per_connection() {
        let (_, certs) =
            generate_client_pki("ca", &[ClientCertSpec { common_name: "dave".into(), email: None, expired: false }])
                .unwrap();
        let conn =
            ConnInfo::new("127.0.0.1:4000".parse().unwrap(), Some(std::sync::Arc::new(der_of(&certs[0].cert_pem))));
        let auth = ClientCertAuthenticator::from_config(&ClientCertConfig::default()).unwrap();
        let parts = axum::http::Request::new(()).into_parts().0;
        for _ in 0..2 {
            match auth.authenticate(&parts, Some(&conn.clone())) {
                AuthOutcome::Authenticated { principal, .. } => assert_eq!(principal.name, "dave"),
                _ => panic!("not authenticated"),
            }
        }
        assert_eq!(conn.client_cert_user.get(), Some(&Ok("dave".to_string())), "kept for the connection's clones");
        let other = ConnInfo::new(conn.peer, None);
        assert!(matches!(auth.authenticate(&parts, Some(&other)), AuthOutcome::NotApplicable));
    }

    #[test]
    fn bad_patterns_fail_at_start_up() {
        let cfg = ClientCertConfig { user_pattern: Some("(".into()), ..ClientCertConfig::default() };
        assert!(ClientCertAuthenticator::from_config(&cfg).is_err());
        let cfg = ClientCertConfig { user_pattern: Some("^x$".into()), ..ClientCertConfig::default() };
        assert!(ClientCertAuthenticator::from_config(&cfg).is_err(), "no capture group");
    }
}
