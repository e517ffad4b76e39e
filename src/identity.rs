//! Who a caller is: the authenticated [`Principal`], how it proved it ([`AuthMethod`]), the
//! facts of the connection it came on ([`ConnInfo`]) and what a user name may look like. The
//! bottom of the request path: authentication, audit, access control and error mapping all
//! import these, and this module imports none of them.

use std::net::SocketAddr;
use std::sync::Arc;

/// How a principal proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuthMethod {
    /// A JWT bearer token.
    Jwt,
    /// A SPNEGO/Kerberos handshake.
    Spnego,
    /// The signed cookie issued after a SPNEGO handshake.
    SpnegoCookie,
    /// A client certificate.
    ClientCert,
    /// A user name and password checked against the LDAP directory.
    Ldap,
    /// The signed cookie issued after an LDAP login.
    LdapCookie,
    /// `auth.dangerous_allow_anonymous`: nobody proved anything.
    DangerousAnonymous,
}

impl AuthMethod {
    /// Name for logs and the audit trail.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Jwt => "jwt",
            Self::Spnego => "spnego",
            Self::SpnegoCookie => "spnego-cookie",
            Self::ClientCert => "client-cert",
            Self::Ldap => "ldap",
            Self::LdapCookie => "ldap-cookie",
            Self::DangerousAnonymous => "dangerous-anonymous",
        }
    }
}

/// The authenticated caller. Immutable once the auth layer created it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Short user name.
    pub name: String,
    /// Groups, when the method provides them.
    pub groups: Vec<String>,
    /// How it was authenticated.
    pub method: AuthMethod,
}

/// Facts about the connection a request came on.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The client's address.
    pub peer: SocketAddr,
    /// The client certificate (DER), already verified by TLS against the client CA.
    pub client_cert: Option<Arc<Vec<u8>>>,
    /// The user the client certificate maps to (or why none), worked out on the connection's
    /// first request: neither the certificate nor the mapping rules change while it is open.
    pub client_cert_user: Arc<std::sync::OnceLock<Result<String, String>>>,
}

impl ConnInfo {
    /// A connection from `peer`, with the client certificate TLS verified, if any.
    pub fn new(peer: SocketAddr, client_cert: Option<Arc<Vec<u8>>>) -> Self {
        Self { peer, client_cert, client_cert_user: Arc::default() }
    }
}

/// The longest user name the gateway hands on.
pub const MAX_USER_NAME_LEN: usize = 256;

/// Whether `name` is a user name the gateway may hand on — to the audit trail, to
/// `--proxy-user`, into file names and messages: letters, digits, `.`, `_`, `-` and `@`, not
/// starting with `-`, at most [`MAX_USER_NAME_LEN`] bytes.
pub fn valid_user_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_USER_NAME_LEN
        && !name.starts_with('-')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'))
}

/// What a user name field must look like, for the message refusing one.
pub const USER_NAME_RULE: &str =
    "letters, digits, `.`, `_`, `-` and `@`, not starting with `-`, at most 256 characters";
const _: () = assert!(MAX_USER_NAME_LEN == 256, "USER_NAME_RULE states the limit");
