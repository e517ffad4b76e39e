//! The directory itself: a small pool of connections (LDAPS or StartTLS through rustls), and
//! the one operation the gateway needs — check a user name and password by binding as that
//! user, and read the user's groups.
//!
//! Every use of a pooled connection begins with a bind, so whatever identity a connection had
//! before (the service account, another user) never carries over. A connection that failed
//! (I/O, timeout) is dropped, not returned.

use crate::config::{LdapConfig, Secret, ValidatedConfig};
use ldap3::{
    dn_escape, ldap_escape, Ldap, LdapConnAsync, LdapConnSettings, ResultEntry, Scope, SearchEntry, SearchOptions,
    SearchResult,
};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::Semaphore;

/// Result codes of a bind that mean "not these credentials" (RFC 4511): invalidCredentials,
/// noSuchObject, invalidDNSyntax, inappropriateAuthentication, insufficientAccessRights,
/// unwillingToPerform (disabled or locked accounts on some servers). Everything else is the
/// directory failing, not the user.
const WRONG_CREDENTIALS: [u32; 6] = [49, 32, 34, 48, 50, 53];

/// Groups read for one user at most (a larger answer is cut, and logged).
const MAX_GROUPS: i32 = 1000;

/// How a user's bind DN is found.
#[derive(Debug)]
enum Users {
    /// `uid={user},ou=people,...`
    Pattern(String),
    /// Searched with the service account.
    Search { base: String, filter: String },
}

/// Where a user's groups come from.
#[derive(Debug)]
enum Groups {
    /// The user entry's attribute listing group DNs (`memberOf`).
    MemberOf(String),
    /// A search under `base` with `filter` (`{dn}`, `{user}`), naming each group by `name`.
    Search { base: String, filter: String, name: String },
}

/// How long logins are answered 503 at once after the directory could not be reached, so
/// an outage costs one connection attempt per this long, not one per login.
const DOWN_FOR: Duration = Duration::from_secs(2);

/// The answer to a login.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Login {
    /// The password is right: the user's name as the directory spells it, and groups.
    Valid {
        /// From the entry's `user_name_attribute`.
        name: String,
        /// Group names.
        groups: Vec<String>,
    },
    /// Wrong password, unknown user, or a name that matches several entries.
    Invalid,
}

/// The directory could not answer (down, slow, refused the service account). The message is
/// for the client and the log; it holds no password.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub(crate) struct Unavailable(pub String);

/// See the module documentation.
pub(crate) struct Directory {
    url: String,
    start_tls: bool,
    tls: Option<Arc<rustls::ClientConfig>>,
    connect_timeout: Duration,
    timeout: Duration,
    service: Option<(String, Secret<String>)>,
    users: Users,
    groups: Groups,
    name_attribute: String,
    /// Until when the directory counts as unreachable (see [`DOWN_FOR`]).
    down_until: Mutex<Option<tokio::time::Instant>>,
    /// Idle connections.
    idle: Mutex<Vec<Ldap>>,
    /// One permit per connection in use: at most `pool_size` logins talk to the directory at once.
    slots: Semaphore,
    pool_size: usize,
}

impl std::fmt::Debug for Directory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Directory").field("url", &self.url).field("users", &self.users).finish_non_exhaustive()
    }
}

impl Directory {
    /// The directory of `[auth.ldap]` (validated): reads the service account's password file
    /// (which must be 0600) and the CA file.
    pub(crate) fn from_config(config: &ValidatedConfig) -> Result<Self, String> {
        let ldap: &LdapConfig = &config.config.auth.ldap;
        let service = match (&ldap.bind_password_file, ldap.bind_dn.is_empty()) {
            (Some(file), false) => Some((ldap.bind_dn.clone(), Secret::new(read_password_file(file)?))),
            _ => None,
        };
        let tls = match &ldap.ca {
            Some(ca) => Some(Arc::new(client_config(ca)?)),
            None => None,
        };
        let users = if ldap.user_search_base.is_empty() {
            Users::Pattern(ldap.user_dn_pattern.clone())
        } else {
            Users::Search { base: ldap.user_search_base.clone(), filter: ldap.user_search_filter.clone() }
        };
        let groups = if ldap.group_search_base.is_empty() {
            Groups::MemberOf(ldap.member_of_attribute.clone())
        } else {
            Groups::Search {
                base: ldap.group_search_base.clone(),
                filter: ldap.group_search_filter.clone(),
                name: ldap.group_name_attribute.clone(),
            }
        };
        Ok(Self {
            url: ldap.url.clone(),
            start_tls: ldap.start_tls,
            tls,
            connect_timeout: config.durations.ldap_connect_timeout,
            timeout: config.durations.ldap_timeout,
            service,
            users,
            groups,
            name_attribute: ldap.user_name_attribute.clone(),
            down_until: Mutex::new(None),
            idle: Mutex::new(Vec::new()),
            slots: Semaphore::new(ldap.pool_size.max(1)),
            pool_size: ldap.pool_size.max(1),
        })
    }

    /// Checks `user`'s `password` by binding as the user, and reads the groups. `user` must
    /// already be a valid user name and `password` non-empty (an empty password is an
    /// anonymous bind, which succeeds for any DN).
    pub(crate) async fn login(&self, user: &str, password: &Secret<String>) -> Result<Login, Unavailable> {
        if password.expose().is_empty() {
            return Ok(Login::Invalid);
        }
        let now = tokio::time::Instant::now();
        if self.down_until.lock().unwrap_or_else(PoisonError::into_inner).is_some_and(|until| now < until) {
            return Err(Unavailable("the login directory is not available; try again later".into()));
        }
        // Waiting for a connection counts against the operation timeout: logins queued behind a
        // directory that hangs fail in bounded time instead of holding request slots.
        let _slot = match tokio::time::timeout(self.timeout, self.slots.acquire()).await {
            Ok(Ok(slot)) => slot,
            Ok(Err(_)) => return Err(Unavailable("the directory pool is closed".into())),
            Err(_) => return Err(Unavailable("the login directory is busy; try again later".into())),
        };
        if let Some(ldap) = self.take_idle() {
            // A pooled connection may have died with a directory restart since its last use:
            // a failure on it is tried once more on a fresh one.
            if let Ok(login) = self.login_with(ldap, user, password).await {
                return Ok(login);
            }
        }
        let ldap = match self.connect().await {
            Ok(ldap) => ldap,
            Err(unavailable) => {
                *self.down_until.lock().unwrap_or_else(PoisonError::into_inner) =
                    Some(tokio::time::Instant::now() + DOWN_FOR);
                return Err(unavailable);
            }
        };
        self.login_with(ldap, user, password).await
    }

    async fn login_with(&self, mut ldap: Ldap, user: &str, password: &Secret<String>) -> Result<Login, Unavailable> {
        let answer = self.login_on(&mut ldap, user, password).await;
        match &answer {
            // The connection answered: it can serve the next login.
            Ok(_) => self.put_back(ldap),
            Err(_) => {
                let _ = ldap.unbind().await;
            }
        }
        answer
    }

    async fn login_on(&self, ldap: &mut Ldap, user: &str, password: &Secret<String>) -> Result<Login, Unavailable> {
        let dn = match &self.users {
            Users::Pattern(pattern) => pattern.replace("{user}", &dn_escape(user)),
            Users::Search { base, filter } => {
                self.bind_service(ldap).await?;
                let filter = filter.replace("{user}", &ldap_escape(user));
                let found = ldap
                    .with_search_options(SearchOptions::new().sizelimit(2))
                    .with_timeout(self.timeout)
                    .search(base, Scope::Subtree, &filter, vec!["1.1"])
                    .await;
                let (entries, cut) = entries(found, "searching the user")?;
                let mut entries = entries.into_iter();
                match (entries.next(), entries.next(), cut) {
                    (Some(entry), None, false) => SearchEntry::construct(entry).dn,
                    // No entry, or several (or more than the limit): ambiguous, so nobody.
                    _ => return Ok(Login::Invalid),
                }
            }
        };
        let bound = ldap
            .with_timeout(self.timeout)
            .simple_bind(&dn, password.expose())
            .await
            .map_err(|e| unavailable("binding as the user", &e))?;
        if WRONG_CREDENTIALS.contains(&bound.rc) {
            return Ok(Login::Invalid);
        }
        if bound.rc != 0 {
            return Err(Unavailable(format!("the directory refused the bind with result code {}", bound.rc)));
        }
        // The entry's facts: as the service account if there is one, else as the user.
        if self.service.is_some() {
            self.bind_service(ldap).await?;
        }
        let mut wanted = vec![self.name_attribute.as_str()];
        if let Groups::MemberOf(attribute) = &self.groups {
            wanted.push(attribute.as_str());
        }
        let found = ldap.with_timeout(self.timeout).search(&dn, Scope::Base, "(objectClass=*)", wanted).await;
        let entry = entries(found, "reading the user's entry")?.0.into_iter().next().map(SearchEntry::construct);
        let Some(entry) = entry else {
            return Err(Unavailable("the user's entry cannot be read after the bind".into()));
        };
        let name =
            attribute_values(&entry, &self.name_attribute).into_iter().find(|n| crate::identity::valid_user_name(n));
        let Some(name) = name else {
            tracing::error!(attribute = %self.name_attribute, "a user entry has no usable auth.ldap.user_name_attribute");
            return Err(Unavailable("the user's entry has no user name the gateway can use".into()));
        };
        let groups = self.groups_of(ldap, &entry, &name, &dn).await?;
        Ok(Login::Valid { name, groups })
    }

    /// Binds as the service account (an error: the configuration or the directory is wrong,
    /// not the user).
    async fn bind_service(&self, ldap: &mut Ldap) -> Result<(), Unavailable> {
        let Some((dn, password)) = &self.service else {
            return Err(Unavailable("no service account is configured to search the directory".into()));
        };
        let result = ldap
            .with_timeout(self.timeout)
            .simple_bind(dn, password.expose())
            .await
            .map_err(|e| unavailable("binding as the service account", &e))?;
        if result.rc != 0 {
            tracing::error!(rc = result.rc, "the directory refused the service account's bind (auth.ldap.bind_dn)");
            return Err(Unavailable("the directory refused the gateway's service account".into()));
        }
        Ok(())
    }

    /// The user's group names: the first RDN value of each group DN in the entry's
    /// `memberOf`, or the name attribute of each group found by the group search (bound as
    /// the service account if there is one, else as the user).
    async fn groups_of(
        &self,
        ldap: &mut Ldap,
        entry: &SearchEntry,
        user: &str,
        dn: &str,
    ) -> Result<Vec<String>, Unavailable> {
        let options = SearchOptions::new().sizelimit(MAX_GROUPS);
        let mut names: Vec<String> = match &self.groups {
            Groups::MemberOf(attribute) => {
                attribute_values(entry, attribute).iter().filter_map(|group_dn| first_rdn_value(group_dn)).collect()
            }
            Groups::Search { base, filter, name } => {
                let filter = filter.replace("{dn}", &ldap_escape(dn)).replace("{user}", &ldap_escape(user));
                let found = ldap
                    .with_search_options(options)
                    .with_timeout(self.timeout)
                    .search(base, Scope::Subtree, &filter, vec![name.as_str()])
                    .await;
                let (entries, cut) = entries(found, "searching the user's groups")?;
                if cut {
                    tracing::warn!(user, limit = MAX_GROUPS, "the user's groups were cut at the limit");
                }
                entries
                    .into_iter()
                    .map(SearchEntry::construct)
                    .flat_map(|entry| attribute_values(&entry, name))
                    .collect()
            }
        };
        names.retain(|name| crate::identity::valid_user_name(name));
        names.sort();
        names.dedup();
        Ok(names)
    }

    async fn connect(&self) -> Result<Ldap, Unavailable> {
        let mut settings = LdapConnSettings::new().set_conn_timeout(self.connect_timeout).set_starttls(self.start_tls);
        if let Some(tls) = &self.tls {
            settings = settings.set_config(tls.clone());
        }
        let (conn, ldap) = LdapConnAsync::with_settings(settings, &self.url)
            .await
            .map_err(|e| unavailable("connecting to the directory", &e))?;
        tokio::spawn(async move {
            if let Err(e) = conn.drive().await {
                tracing::debug!(error = %e, "an LDAP connection ended");
            }
        });
        Ok(ldap)
    }

    fn take_idle(&self) -> Option<Ldap> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        while let Some(mut ldap) = idle.pop() {
            if !ldap.is_closed() {
                return Some(ldap);
            }
        }
        None
    }

    fn put_back(&self, ldap: Ldap) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < self.pool_size {
            idle.push(ldap);
        }
    }
}

/// A search's entries, and whether the size limit cut them; no such base is no entries.
fn entries(found: ldap3::result::Result<SearchResult>, doing: &str) -> Result<(Vec<ResultEntry>, bool), Unavailable> {
    let SearchResult(entries, result) = found.map_err(|e| unavailable(doing, &e))?;
    match result.rc {
        // success, sizeLimitExceeded, referral
        0 | 4 | 10 => Ok((entries, result.rc == 4)),
        // noSuchObject
        32 => Ok((Vec::new(), false)),
        _ => Err(unavailable(doing, &ldap3::LdapError::from(result))),
    }
}

fn unavailable(doing: &str, error: &ldap3::LdapError) -> Unavailable {
    // ldap3's errors name the server and the failure, never a password.
    tracing::warn!(error = %error, "LDAP: {doing} failed");
    Unavailable(format!("the login directory is not available ({doing} failed); try again later"))
}

/// Every value of `attribute` (matched without regard to case, as LDAP does).
fn attribute_values(entry: &SearchEntry, attribute: &str) -> Vec<String> {
    entry.attrs.iter().filter(|(name, _)| name.eq_ignore_ascii_case(attribute)).flat_map(|(_, v)| v.clone()).collect()
}

/// `cn=analysts,ou=groups,dc=example` → `analysts`. None for a value with escapes or an
/// empty one (a name that policies could not name anyway).
pub(crate) fn first_rdn_value(dn: &str) -> Option<String> {
    let rdn = dn.split(',').next()?;
    let (_, value) = rdn.split_once('=')?;
    let value = value.trim();
    (!value.is_empty() && !value.contains(['\\', '+', '"'])).then(|| value.to_string())
}

/// The service account's password: the whole file, less one trailing newline. The file must
/// not be readable by group or others.
fn read_password_file(path: &std::path::Path) -> Result<String, String> {
    use std::os::unix::fs::PermissionsExt;
    let shown = path.display();
    let meta = std::fs::metadata(path).map_err(|e| format!("auth.ldap.bind_password_file {shown}: {e}"))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(format!(
            "auth.ldap.bind_password_file {shown} is readable by others (mode {:o}); it must be 0600",
            meta.permissions().mode() & 0o777
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("auth.ldap.bind_password_file {shown}: {e}"))?;
    let password = text.strip_suffix('\n').unwrap_or(&text);
    let password = password.strip_suffix('\r').unwrap_or(password);
    if password.is_empty() {
        return Err(format!("auth.ldap.bind_password_file {shown} is empty"));
    }
    Ok(password.to_string())
}

/// A rustls client configuration (ring, the gateway's provider) trusting the CAs in `ca`.
fn client_config(ca: &std::path::Path) -> Result<rustls::ClientConfig, String> {
    let shown = ca.display();
    let pem = std::fs::read(ca).map_err(|e| format!("auth.ldap.ca {shown}: {e}"))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        let cert = cert.map_err(|e| format!("auth.ldap.ca {shown}: {e}"))?;
        roots.add(cert).map_err(|e| format!("auth.ldap.ca {shown}: {e}"))?;
    }
    if roots.is_empty() {
        return Err(format!("auth.ldap.ca {shown} holds no certificate"));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("auth.ldap: TLS setup: {e}"))
        .map(|builder| builder.with_root_certificates(roots).with_no_client_auth())
}
