//! The configuration tree: defaults → `conf/sparkgate.toml` → `SPARKGATE_*` environment →
//! command-line `--set`, validated once at start-up with every problem reported together.

mod duration;
mod secret;

pub use duration::parse_duration;
pub use secret::Secret;

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

impl Default for TlsConfig {
    fn default() -> Self {
        Self { cert: None, key: None, reload_interval: "5s".into() }
    }
}

/// Everything that can go wrong while loading the configuration; each names the culprit.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read configuration file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file or an override is not valid TOML, or a value has the wrong type.
    #[error("invalid configuration: {0}")]
    Syntax(String),
    /// Keys that sparkgate does not know (typos are refused, not ignored).
    #[error("unknown configuration key(s): {}", .0.join(", "))]
    UnknownKeys(Vec<String>),
    /// Values that are individually well-typed but not acceptable.
    #[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
    Invalid(Vec<String>),
}

/// The whole configuration. Field docs are the reference; `conf/sparkgate.toml` repeats them.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// The HTTPS listener.
    pub server: ServerConfig,
    /// Server certificate and key.
    pub tls: TlsConfig,
    /// Authentication.
    pub auth: AuthConfig,
    /// How Spark is found and launched.
    pub spark: SparkConfig,
    /// Interactive session limits and timeouts.
    pub sessions: SessionsConfig,
    /// Batch limits.
    pub batches: BatchesConfig,
    /// The gateway ⇄ driver channel.
    pub rpc: RpcConfig,
    /// The access manager.
    pub acl: AclConfig,
    /// CSRF protection.
    pub csrf: CsrfConfig,
    /// The audit trail.
    pub audit: AuditConfig,
    /// Where session and batch records are kept.
    pub store: StoreConfig,
    /// What a restart keeps.
    pub recovery: RecoveryConfig,
}

/// What a restart of the gateway keeps (see `crate::engine::recovery`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct RecoveryConfig {
    /// On (the default, with the SQLite store): sessions and batches outlive a stop or a crash
    /// of the gateway and are taken back when it starts again. Off: a stop stops them, and
    /// start-up stops what an earlier run left and forgets its records.
    pub enabled: bool,
}

impl Default for RecoveryConfig {
    fn default() -> Self {
        Self { enabled: true }
    }
}

/// Which store keeps session and batch records (see `crate::store`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// The embedded SQLite database (the default): records survive a restart.
    #[default]
    Sqlite,
    /// In the gateway's memory only: nothing but the id counters survives a restart.
    Memory,
}

/// Where session and batch records are kept.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct StoreConfig {
    /// `sqlite` (default) or `memory`.
    pub kind: StoreKind,
    /// The SQLite database file (0600, its directory 0700); default
    /// `<server.data_dir>/state/store.db`.
    pub path: Option<PathBuf>,
}

/// The HTTPS listener.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ServerConfig {
    /// Address and port to listen on.
    pub bind: SocketAddr,
    /// Where sparkgate keeps its state: generated certificates, session logs, the driver program.
    pub data_dir: PathBuf,
    /// A request that takes longer is answered 408.
    pub request_timeout: String,
    /// Largest accepted request body, in bytes (413 above it).
    pub max_body_bytes: usize,
    /// Largest accepted upload (`upload-jar`, `upload-pyfile`, `upload-file`), in bytes.
    pub max_upload_bytes: usize,
    /// Requests served at once; more are shed with 503.
    pub max_concurrent_requests: usize,
    /// Client connections open at once; further ones wait in the kernel's backlog.
    pub max_connections: usize,
    /// Client connections open at once from one address (an IPv6 client counts by its /64
    /// prefix); beyond it new ones are closed.
    pub max_connections_per_ip: usize,
    /// A client that has not finished the TLS handshake by then is dropped.
    pub tls_handshake_timeout: String,
    /// Time for a client to send a request's headers (from the end of the TLS handshake, or
    /// from the previous response on a kept-alive connection); then the connection is closed.
    pub header_timeout: String,
    /// Largest request head (the header fields, counted as HTTP/2 does: name + value + 32
    /// bytes each); a larger one is refused with 431 and audited.
    pub max_header_bytes: usize,
    /// Longest request target (path and query); a longer one is refused with 414 and audited.
    pub max_uri_bytes: usize,
    /// Serve plain HTTP instead of HTTPS. Never use outside a test on loopback.
    pub dangerous_plain_http: bool,
    /// Let `sparkgate serve` run as root. Off, it refuses: drivers in local and client mode run
    /// as the gateway's account, so user code would run as root (scripts/run.sh runs the
    /// gateway as the `sparkgate` system account instead).
    pub dangerous_run_as_root: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 8998)),
            data_dir: PathBuf::from("data"),
            request_timeout: "120s".into(),
            max_body_bytes: 10 * 1024 * 1024,
            max_upload_bytes: 100 * 1024 * 1024,
            max_concurrent_requests: 512,
            max_connections: 4096,
            max_connections_per_ip: 256,
            tls_handshake_timeout: "10s".into(),
            header_timeout: "60s".into(),
            max_header_bytes: 64 * 1024,
            max_uri_bytes: 8 * 1024,
            dangerous_plain_http: false,
            dangerous_run_as_root: false,
        }
    }
}

/// Server certificate and key (PEM). Both empty: development certificates are generated into
/// `<data_dir>/tls/` on first start.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct TlsConfig {
    /// Certificate chain, PEM.
    pub cert: Option<PathBuf>,
    /// Private key, PEM.
    pub key: Option<PathBuf>,
    /// How often the certificate and key files are checked for changes (reloaded without a
    /// restart or dropped connections).
    pub reload_interval: String,
}

/// Authentication.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct AuthConfig {
    /// The schemes tried, in order: any of `client_cert`, `spnego`, `jwt`, `ldap`.
    pub methods: Vec<String>,
    /// Accept every request from a loopback address as the user `anonymous`. Development only:
    /// an unauthenticated Spark gateway is a remote-code-execution endpoint.
    pub dangerous_allow_anonymous: bool,
    /// JWT bearer tokens.
    pub jwt: JwtConfig,
    /// SPNEGO / Kerberos.
    pub spnego: SpnegoConfig,
    /// Client certificates (mTLS).
    pub client_cert: ClientCertConfig,
    /// LDAP login (HTTP Basic and the web UI's form).
    pub ldap: LdapConfig,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            methods: vec!["jwt".into()],
            dangerous_allow_anonymous: false,
            jwt: JwtConfig::default(),
            spnego: SpnegoConfig::default(),
            client_cert: ClientCertConfig::default(),
            ldap: LdapConfig::default(),
        }
    }
}

/// JWT bearer authentication.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct JwtConfig {
    /// A PEM public key that verifies tokens. With neither this nor `jwks`, a development RSA
    /// key pair is generated into `<data_dir>/jwt/` on first start (`sparkgate token` signs
    /// with it).
    pub public_key: Option<PathBuf>,
    /// A JWKS document (file); keys are picked by the token's `kid`.
    pub jwks: Option<PathBuf>,
    /// Accepted algorithms (RS256, RS384, RS512, PS256, ES256, ES384, EdDSA). `none` and HMAC
    /// algorithms are never accepted.
    pub algorithms: Vec<String>,
    /// Required `iss`.
    pub issuer: String,
    /// Required `aud`.
    pub audience: String,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway: String,
    /// The claim that names the user.
    pub user_claim: String,
    /// The claim that lists the user's groups (an array of strings, or a comma-separated string).
    pub groups_claim: String,
    /// How often the key files are checked for changes.
    pub reload_interval: String,
    /// How many verified tokens are remembered (by their SHA-256), each until its `exp` and
    /// only under the keys that verified it; 0 checks every request's signature.
    pub verified_cache_size: usize,
}

impl Default for JwtConfig {
    fn default() -> Self {
        Self {
            public_key: None,
            jwks: None,
            algorithms: vec!["RS256".into(), "ES256".into(), "EdDSA".into()],
            issuer: "sparkgate".into(),
            audience: "sparkgate".into(),
            leeway: "30s".into(),
            user_claim: "sub".into(),
            groups_claim: "groups".into(),
            reload_interval: "2s".into(),
            verified_cache_size: 10_000,
        }
    }
}

/// SPNEGO / Kerberos authentication.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct SpnegoConfig {
    /// The keytab holding the service key (e.g. `HTTP/host@REALM`).
    pub keytab: Option<PathBuf>,
    /// The service principal to accept for; unset: any principal in the keytab.
    pub principal: Option<String>,
    /// Principal → short user name rules, tried in order; a principal no rule maps is refused.
    pub rules: Vec<NameRule>,
    /// Lifetime of the signed cookie issued after a successful handshake ("0" = no cookie).
    pub cookie_ttl: String,
}

impl Default for SpnegoConfig {
    fn default() -> Self {
        Self { keytab: None, principal: None, rules: Vec::new(), cookie_ttl: "10m".into() }
    }
}

/// One auth_to_local-style rule: a regular expression over the whole principal
/// (`user@REALM` or `svc/host@REALM`) and the user it maps to (`$1`… are capture groups).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NameRule {
    /// Regular expression matched against the whole principal.
    #[serde(rename = "match")]
    pub pattern: String,
    /// The short name, with `$1`… for capture groups.
    pub user: String,
}

/// Client certificate (mTLS) authentication.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ClientCertConfig {
    /// PEM CA(s) that issue client certificates. Setting it makes the TLS listener ask for one.
    pub ca: Option<PathBuf>,
    /// Refuse TLS connections without a valid client certificate (otherwise other methods may
    /// still authenticate the request).
    pub required: bool,
    /// Where the user name comes from: `subject_cn`, `san_email`, `san_dns` or `san_uri`.
    pub user_from: String,
    /// Optional regular expression with one capture group applied to that value
    /// (e.g. `^([^@]+)@example\.com$`); a value that does not match is refused.
    pub user_pattern: Option<String>,
}

impl Default for ClientCertConfig {
    fn default() -> Self {
        Self { ca: None, required: false, user_from: "subject_cn".into(), user_pattern: None }
    }
}

/// LDAP login: a user name and password (HTTP Basic, or the web UI's login form) are checked
/// by binding to the directory as that user.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LdapConfig {
    /// `ldaps://host:636`, or `ldap://host:389` with `start_tls = true`.
    pub url: String,
    /// Upgrade an `ldap://` connection with StartTLS before anything is sent.
    pub start_tls: bool,
    /// Allow `ldap://` without StartTLS: passwords cross the network in clear text.
    pub dangerous_plain: bool,
    /// PEM CA(s) that issue the directory's certificate; unset: the system's roots.
    pub ca: Option<PathBuf>,
    /// Bind DN of a user, with `{user}` for the (escaped) user name, e.g.
    /// `uid={user},ou=people,dc=example,dc=com`. Exclusive with `user_search_base`.
    pub user_dn_pattern: String,
    /// Search-then-bind: where users are searched (with the service account).
    pub user_search_base: String,
    /// Search-then-bind: the filter, with `{user}` for the (escaped) user name.
    pub user_search_filter: String,
    /// The service account's DN, for search-then-bind and group searches.
    pub bind_dn: String,
    /// A file (mode 0600) holding only the service account's password.
    pub bind_password_file: Option<PathBuf>,
    /// Where groups are searched; unset: groups come from the user entry's `member_of_attribute`.
    pub group_search_base: String,
    /// The group search's filter, with `{dn}` (the user's DN) and `{user}` (the user name).
    pub group_search_filter: String,
    /// The attribute of a group entry that is its name.
    pub group_name_attribute: String,
    /// The attribute of a user entry that lists the DNs of its groups.
    pub member_of_attribute: String,
    /// The attribute of a user entry that is its user name: the principal is named by the
    /// entry, whatever case the login was typed in.
    pub user_name_attribute: String,
    /// Connecting (TCP and TLS) gives up after this long.
    pub connect_timeout: String,
    /// Each directory operation (bind, search) gives up after this long.
    pub timeout: String,
    /// Connections kept open to the directory, and logins checked at once.
    pub pool_size: usize,
    /// Lifetime of the signed cookie issued after a successful login ("0" = no cookie).
    pub cookie_ttl: String,
    /// How long a user name and password that bound successfully are remembered (as a keyed
    /// hash, in memory), so HTTP Basic clients that keep no cookie do not bind on every
    /// request ("0" = bind every time).
    pub remember: String,
    /// Failed logins within `failure_window` per user name (in any case), after which further
    /// attempts with that name are refused with 429 until the window ends.
    pub max_failures: u32,
    /// The same per client address (an IPv6 client by its /64): higher, since many users may
    /// share one address (a notebook server, a NAT).
    pub max_address_failures: u32,
    /// See `max_failures`.
    pub failure_window: String,
}

impl Default for LdapConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            start_tls: false,
            dangerous_plain: false,
            ca: None,
            user_dn_pattern: String::new(),
            user_search_base: String::new(),
            user_search_filter: "(uid={user})".into(),
            bind_dn: String::new(),
            bind_password_file: None,
            group_search_base: String::new(),
            group_search_filter: "(member={dn})".into(),
            group_name_attribute: "cn".into(),
            member_of_attribute: "memberOf".into(),
            user_name_attribute: "uid".into(),
            connect_timeout: "5s".into(),
            timeout: "5s".into(),
            pool_size: 4,
            cookie_ttl: "10m".into(),
            remember: "2m".into(),
            max_failures: 5,
            max_address_failures: 20,
            failure_window: "5m".into(),
        }
    }
}

/// The access manager.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct AclConfig {
    /// Directory of `*.toml` policy files (policies/README.md is the grammar).
    pub policy_dir: PathBuf,
    /// Optional groups file: `[groups]` table of group = [users].
    pub groups_file: Option<PathBuf>,
    /// How often policy files are checked for changes.
    pub reload_interval: String,
}

impl Default for AclConfig {
    fn default() -> Self {
        Self { policy_dir: PathBuf::from("policies"), groups_file: None, reload_interval: "2s".into() }
    }
}

/// CSRF protection.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct CsrfConfig {
    /// `auto`: `X-Requested-By` is required on unsafe methods for requests that carry the auth
    /// cookie or come from a browser; `strict`: always; `off`: never.
    pub mode: String,
}

impl Default for CsrfConfig {
    fn default() -> Self {
        Self { mode: "auto".into() }
    }
}

/// The audit trail.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct AuditConfig {
    /// The current audit file. Unset: `<data_dir>/audit/audit.log`.
    pub path: Option<PathBuf>,
    /// Size at which the file is rotated (the chain continues in the next file).
    pub max_file_bytes: u64,
    /// Rotated files kept; after a rotation the oldest beyond this are deleted, and a record
    /// in the chain says which sequence numbers went. 0 keeps every file.
    pub max_files: usize,
    /// Rotated files older than this are deleted too (checked at start-up and at each
    /// rotation). "0": no age limit.
    pub max_age: String,
    /// Repeated identical security events (same event, address and kind of failure) are
    /// written once per window, then counted; the count is written when the window ends.
    pub repeat_window: String,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            path: None,
            max_file_bytes: 16 * 1024 * 1024,
            max_files: 100,
            max_age: "0".into(),
            repeat_window: "60s".into(),
        }
    }
}

/// How Spark is found and launched.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct SparkConfig {
    /// SPARK_HOME. Empty: the `pyspark` package inside `venv`.
    pub home: Option<PathBuf>,
    /// The Python virtual environment that holds pyspark (used when `home` or `python` is empty).
    pub venv: PathBuf,
    /// The Python the driver runs with. Empty: `<venv>/bin/python`.
    pub python: Option<PathBuf>,
    /// JAVA_HOME for spark-submit. Empty: inherited, or `java` on PATH.
    pub java_home: Option<PathBuf>,
    /// `--master` for every session.
    pub master: String,
    /// `--deploy-mode` (`client` or `cluster`).
    pub deploy_mode: String,
    /// Spark conf applied to every session and batch. Users cannot override these keys (in
    /// `conf` or through `driverMemory` and the other resource fields) unless they are listed in
    /// `overridable_conf`.
    pub conf: BTreeMap<String, String>,
    /// Keys of `conf` that are only defaults: a request may set its own value.
    pub overridable_conf: Vec<String>,
    /// Environment variables passed through to spark-submit besides the built-in allow-list.
    pub pass_env: Vec<String>,
    /// Directories on the gateway host whose files users may name in `file`, `jars`,
    /// `pyFiles`, `files` and `archives` (like Livy's local-dir whitelist). Empty: no local
    /// path is accepted (remote URIs such as hdfs:// always are).
    pub allowed_local_dirs: Vec<PathBuf>,
    /// URI schemes accepted as remote storage besides the built-in ones (hdfs, webhdfs,
    /// swebhdfs, s3a, s3, s3n, abfs, abfss, wasb, wasbs, adl, gs, oss, cosn, http, https). Every
    /// other scheme (viewfs, har, ...) is treated as a path on this host and refused.
    pub extra_remote_schemes: Vec<String>,
    /// How long `spark-submit --version` may take at the start-up check.
    pub check_timeout: String,
    /// Extra application tags (YARN `spark.yarn.tags`, Kubernetes labels); the gateway always
    /// adds `sparkgate` and `sparkgate-<session|batch>-<id>` so it can find its applications.
    pub application_tags: Vec<String>,
    /// The Kerberos principal the gateway launches applications with: `--principal` for its
    /// own launches, a ticket from `kinit` (in `KRB5CCNAME`) for `--proxy-user` launches.
    pub launch_principal: Option<String>,
    /// The keytab for `launch_principal` (`--keytab`).
    pub launch_keytab: Option<PathBuf>,
    /// A standalone master's web UI (e.g. `http://master:8080`), used to find the application
    /// id of batches whose driver runs in the cluster.
    pub standalone_master_ui: Option<String>,
    /// The `yarn` command that stops YARN cluster-mode applications on DELETE
    /// (`yarn application -kill <id>`); a bare name is looked up on the gateway's PATH.
    pub yarn_command: PathBuf,
    /// Where local and client-mode drivers run: `bwrap` (a bubblewrap sandbox that sees only its
    /// own session's directory and read-only system, Spark, Python and Java files; see
    /// `engine::sandbox`) or `dangerous_off` (as the gateway's account, with everything it can
    /// read and write). Cluster deploy mode runs drivers in the cluster and ignores it.
    pub local_sandbox: String,
    /// More absolute paths the sandbox shows read-only (a Hadoop installation, its
    /// configuration, an NSS socket directory, ...).
    pub sandbox_read_only_paths: Vec<PathBuf>,
    /// The jar of the JVM side of Livy's job API (`scripts/build-livy-api.sh` builds it), copied
    /// into each session's directory for its driver. Empty: sessions run no `spark` jobs.
    pub job_api_jar: Option<PathBuf>,
    /// The `sparkgate` binary every spark-submit runs under (`sparkgate supervise`: it keeps
    /// the launch running and its output and exit status recorded while the gateway is down).
    /// Empty: the running `sparkgate` program itself.
    pub supervisor: Option<PathBuf>,
    /// With `launch_principal` in local or client deploy mode, every driver gets the gateway's
    /// Kerberos credentials (its ticket for `--proxy-user` launches, the keytab for its own),
    /// and user code in the driver can read them and act as the gateway — a Hadoop proxy user,
    /// so as anyone. Refused unless this is set: for a single team that trusts one another.
    /// Cluster deploy mode keeps the credentials on the gateway host.
    pub dangerous_share_launch_credentials: bool,
}

impl Default for SparkConfig {
    fn default() -> Self {
        Self {
            home: None,
            venv: PathBuf::from(".venv"),
            python: None,
            java_home: None,
            master: "local[*]".into(),
            deploy_mode: "client".into(),
            conf: BTreeMap::new(),
            overridable_conf: Vec::new(),
            pass_env: Vec::new(),
            allowed_local_dirs: Vec::new(),
            extra_remote_schemes: Vec::new(),
            check_timeout: "60s".into(),
            application_tags: Vec::new(),
            launch_principal: None,
            launch_keytab: None,
            standalone_master_ui: None,
            yarn_command: PathBuf::from("yarn"),
            local_sandbox: "bwrap".into(),
            supervisor: None,
            dangerous_share_launch_credentials: false,
            sandbox_read_only_paths: Vec::new(),
            job_api_jar: None,
        }
    }
}

/// Interactive session limits and timeouts.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct SessionsConfig {
    /// Live (not finished) sessions at once; more are refused with 429.
    pub max_sessions: usize,
    /// Sessions starting at once (each is a JVM); more are refused with 429.
    pub max_concurrent_launches: usize,
    /// A session whose driver has not connected by then is killed and marked dead.
    pub start_timeout: String,
    /// An idle session (no statement running or queued) is stopped after this long without
    /// activity. A request's `idleTimeout` overrides it. "0" disables it.
    pub idle_timeout: String,
    /// Maximum lifetime of a session since it was created; a request's `ttl` overrides it.
    /// "0" disables it.
    pub ttl: String,
    /// Finished sessions (dead, killed, error) stay visible this long, then are forgotten.
    pub retain_finished: String,
    /// Finished sessions kept visible at once (and, separately, finished batches); beyond it
    /// the oldest are forgotten before `retain_finished` is up.
    pub max_finished_retained: usize,
    /// The same, per effective user.
    pub max_finished_retained_per_user: usize,
    /// Statements kept per session; the oldest finished ones are forgotten beyond this.
    pub statement_retention: usize,
    /// Largest statement output kept (its JSON, in bytes); a larger one is replaced by an error.
    pub max_output_bytes: usize,
    /// Statements waiting to run in one session at once; more are refused with 429.
    pub max_queued_statements: usize,
    /// Bytes of code and output one session's retained statements may hold together; beyond it
    /// the oldest finished statements are forgotten (as beyond `statement_retention`), and code
    /// that could not be held is refused with 429.
    pub max_retained_bytes: usize,
    /// Bytes all uploads to one session may take together (each upload is also limited by
    /// `server.max_upload_bytes`).
    pub max_uploaded_bytes: u64,
    /// Row cap for `sql` statement results.
    pub sql_max_rows: usize,
    /// Lines of spark-submit/driver output kept in memory per session for `/log` (at most 4 MiB).
    pub log_tail_lines: usize,
    /// Largest log file of one session or batch (`session.log`, `batch.log`), in bytes; output
    /// beyond it is not written (a batch's `/log` pages the file).
    pub max_log_file_bytes: u64,
    /// After asking a driver to shut down, how long to wait before killing its process group.
    pub shutdown_grace: String,
    /// How often timeouts are checked and finished sessions collected.
    pub check_interval: String,
    /// How long a client may ask `GET .../statements/{sid}?wait=` to wait for the statement to
    /// finish (a longer wait is cut to this; always below `server.request_timeout`).
    pub max_statement_wait: String,
    /// How long a completion request waits for the driver.
    pub completion_timeout: String,
    /// Warm drivers: started ahead for the requests users keep making (see
    /// [`crate::engine::warm`]).
    pub warm: WarmConfig,
}

/// `[sessions.warm]`: drivers started ahead of time, per (user, conf class), so that a
/// `POST /sessions` like one the user made recently gets a driver that is already up.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WarmConfig {
    /// Warm drivers kept at once, for everyone together (each is a JVM); 0 turns warm drivers
    /// off.
    pub max_drivers: usize,
    /// Warm drivers kept ready per conf class a named user uses.
    pub users: BTreeMap<String, usize>,
    /// Warm drivers kept ready per conf class a member of a named group uses (the largest of
    /// the user's groups and the user's own entry counts).
    pub groups: BTreeMap<String, usize>,
    /// Warm drivers kept ready per conf class for everyone else who creates sessions (0: only
    /// the users and groups named).
    pub others: usize,
    /// A conf class nobody asked for this long has its warm drivers stopped (and none started
    /// again until it is asked for).
    pub idle_evict: String,
}

impl Default for WarmConfig {
    fn default() -> Self {
        Self { max_drivers: 0, users: BTreeMap::new(), groups: BTreeMap::new(), others: 0, idle_evict: "30m".into() }
    }
}

impl Default for SessionsConfig {
    fn default() -> Self {
        Self {
            max_sessions: 32,
            max_concurrent_launches: 4,
            start_timeout: "180s".into(),
            idle_timeout: "1h".into(),
            ttl: "0".into(),
            retain_finished: "10m".into(),
            max_finished_retained: 32,
            max_finished_retained_per_user: 4,
            statement_retention: 100,
            max_output_bytes: 8 * 1024 * 1024,
            max_queued_statements: 20,
            max_retained_bytes: 64 * 1024 * 1024,
            max_uploaded_bytes: 1024 * 1024 * 1024,
            sql_max_rows: 1000,
            log_tail_lines: 1000,
            max_log_file_bytes: 256 * 1024 * 1024,
            shutdown_grace: "5s".into(),
            check_interval: "1s".into(),
            max_statement_wait: "60s".into(),
            completion_timeout: "30s".into(),
            warm: WarmConfig::default(),
        }
    }
}

/// Batch limits (their own caps: batches never take interactive sessions' slots, nor the
/// reverse).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct BatchesConfig {
    /// Live (not finished) batches at once; more are refused with 429.
    pub max_batches: usize,
    /// Batches starting at once (each is a JVM); more are refused with 429.
    pub max_concurrent_launches: usize,
}

impl Default for BatchesConfig {
    fn default() -> Self {
        Self { max_batches: 32, max_concurrent_launches: 4 }
    }
}

/// The gateway ⇄ driver channel (TLS, mutual HMAC handshake; see docs/driver-protocol.md).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct RpcConfig {
    /// Where the RPC server listens. Port 0 picks a free port.
    pub bind: SocketAddr,
    /// The host drivers dial (and the name in the RPC certificate). Must be reachable from where
    /// drivers run; loopback is right only for local and client deploy modes on this host.
    pub advertise_host: String,
    /// Largest frame accepted in either direction, in bytes.
    pub max_frame_bytes: usize,
    /// A connection that has not authenticated by then is closed.
    pub handshake_timeout: String,
    /// Connections still in the TLS + HMAC handshake at once; further ones are closed at once.
    pub max_pending_handshakes: usize,
    /// Connections in the handshake at once from one address (an IPv6 peer counts by its /64
    /// prefix); further ones from there are closed at once.
    pub max_pending_handshakes_per_ip: usize,
    /// How long a driver keeps redialling after losing the connection before it shuts down, and
    /// how long the gateway waits for it.
    pub reconnect_window: String,
    /// How often the gateway pings a connected driver.
    pub ping_interval: String,
}

impl Default for RpcConfig {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            advertise_host: "127.0.0.1".into(),
            max_frame_bytes: 64 * 1024 * 1024,
            handshake_timeout: "10s".into(),
            max_pending_handshakes: 256,
            max_pending_handshakes_per_ip: 32,
            reconnect_window: "10m".into(),
            ping_interval: "10s".into(),
        }
    }
}

/// The longest request target hyper's HTTP/1 parser accepts at all.
pub const MAX_URI_BYTES: usize = 65_534;

/// Durations parsed once, so the rest of the gateway never parses strings.
#[derive(Debug, Clone, Copy)]
pub struct Durations {
    /// `server.request_timeout`
    pub request_timeout: Duration,
    /// `server.tls_handshake_timeout`
    pub tls_handshake_timeout: Duration,
    /// `server.header_timeout`
    pub header_timeout: Duration,
    /// `sessions.start_timeout`
    pub start_timeout: Duration,
    /// `sessions.idle_timeout` (None = off)
    pub idle_timeout: Option<Duration>,
    /// `sessions.ttl` (None = off)
    pub ttl: Option<Duration>,
    /// `sessions.retain_finished`
    pub retain_finished: Duration,
    /// `sessions.shutdown_grace`
    pub shutdown_grace: Duration,
    /// `sessions.check_interval`
    pub check_interval: Duration,
    /// `sessions.completion_timeout`
    pub completion_timeout: Duration,
    /// `sessions.max_statement_wait`, below `server.request_timeout`
    pub max_statement_wait: Duration,
    /// `sessions.warm.idle_evict`
    pub warm_idle_evict: Duration,
    /// `rpc.handshake_timeout`
    pub rpc_handshake_timeout: Duration,
    /// `rpc.reconnect_window`
    pub reconnect_window: Duration,
    /// `rpc.ping_interval`
    pub ping_interval: Duration,
    /// `spark.check_timeout`
    pub spark_check_timeout: Duration,
    /// `auth.jwt.leeway`
    pub jwt_leeway: Duration,
    /// `auth.jwt.reload_interval`
    pub jwt_reload_interval: Duration,
    /// `auth.spnego.cookie_ttl` (None = no cookie)
    pub spnego_cookie_ttl: Option<Duration>,
    /// `auth.ldap.connect_timeout`
    pub ldap_connect_timeout: Duration,
    /// `auth.ldap.timeout`
    pub ldap_timeout: Duration,
    /// `auth.ldap.cookie_ttl` (None = no cookie)
    pub ldap_cookie_ttl: Option<Duration>,
    /// `auth.ldap.remember` (None = bind every time)
    pub ldap_remember: Option<Duration>,
    /// `auth.ldap.failure_window`
    pub ldap_failure_window: Duration,
    /// `acl.reload_interval`
    pub acl_reload_interval: Duration,
    /// `tls.reload_interval`
    pub tls_reload_interval: Duration,
    /// `audit.max_age` (None = no age limit)
    pub audit_max_age: Option<Duration>,
    /// `audit.repeat_window`
    pub audit_repeat_window: Duration,
}

/// A configuration that passed validation.
#[derive(Debug, Clone)]
pub struct ValidatedConfig {
    /// The raw tree.
    pub config: Config,
    /// Its durations, parsed.
    pub durations: Durations,
}

impl Config {
    /// Whether sessions and batches outlive the gateway and are taken back at start-up:
    /// `recovery.enabled` with a store that keeps records (not `store.kind = "memory"`).
    pub fn recovers(&self) -> bool {
        self.recovery.enabled && self.store.kind == StoreKind::Sqlite
    }
}

impl ValidatedConfig {
    /// The names of every `dangerous_*` option that is on, for start-up warnings and /version.
    pub fn dangerous_options(&self) -> Vec<&'static str> {
        let mut on = Vec::new();
        if self.config.server.dangerous_plain_http {
            on.push("server.dangerous_plain_http");
        }
        if self.config.auth.dangerous_allow_anonymous {
            on.push("auth.dangerous_allow_anonymous");
        }
        if self.config.auth.ldap.dangerous_plain && self.config.auth.methods.iter().any(|m| m == "ldap") {
            on.push("auth.ldap.dangerous_plain");
        }
        if self.config.server.dangerous_run_as_root {
            on.push("server.dangerous_run_as_root");
        }
        if self.config.spark.local_sandbox == "dangerous_off" {
            on.push("spark.local_sandbox");
        }
        if self.config.spark.dangerous_share_launch_credentials {
            on.push("spark.dangerous_share_launch_credentials");
        }
        on
    }
}

/// What is wrong with `[auth.ldap]` when `ldap` is in `auth.methods`.
fn ldap_problems(ldap: &LdapConfig, durations: &Durations) -> Vec<String> {
    let mut problems = Vec::new();
    let url = ldap.url.to_ascii_lowercase();
    if url.starts_with("ldaps://") {
        if ldap.start_tls {
            problems.push("auth.ldap.start_tls: an ldaps:// connection is already TLS".into());
        }
    } else if url.starts_with("ldap://") {
        if !ldap.start_tls && !ldap.dangerous_plain {
            problems.push(
                "auth.ldap.url: ldap:// sends passwords in clear text; use ldaps://, set start_tls = true, or (never \
                 in production) dangerous_plain = true"
                    .into(),
            );
        }
    } else {
        problems.push("auth.ldap.url must start with ldaps:// or ldap://".into());
    }
    let search = !ldap.user_search_base.is_empty();
    match (ldap.user_dn_pattern.is_empty(), search) {
        (true, false) => problems.push("auth.ldap: set user_dn_pattern or user_search_base".into()),
        (false, true) => problems.push("auth.ldap.user_dn_pattern and user_search_base are exclusive: set one".into()),
        (false, false) if !ldap.user_dn_pattern.contains("{user}") => {
            problems.push("auth.ldap.user_dn_pattern must contain {user}".into());
        }
        _ => {}
    }
    if search && !ldap.user_search_filter.contains("{user}") {
        problems.push("auth.ldap.user_search_filter must contain {user}".into());
    }
    if search && ldap.bind_dn.is_empty() {
        problems.push("auth.ldap.bind_dn is required to search users (user_search_base)".into());
    }
    if ldap.bind_dn.is_empty() != ldap.bind_password_file.is_none() {
        problems.push("auth.ldap.bind_dn and bind_password_file go together".into());
    }
    if !ldap.group_search_base.is_empty() && ldap.group_name_attribute.is_empty() {
        problems.push("auth.ldap.group_name_attribute is required with group_search_base".into());
    }
    if ldap.pool_size == 0 {
        problems.push("auth.ldap.pool_size must be at least 1".into());
    }
    if ldap.max_failures == 0 || ldap.max_address_failures == 0 {
        problems.push("auth.ldap.max_failures and max_address_failures must be at least 1".into());
    }
    if ldap.user_name_attribute.is_empty() {
        problems.push("auth.ldap.user_name_attribute must name an attribute (uid, sAMAccountName, ...)".into());
    }
    for (key, d) in [
        ("auth.ldap.connect_timeout", durations.ldap_connect_timeout),
        ("auth.ldap.timeout", durations.ldap_timeout),
        ("auth.ldap.failure_window", durations.ldap_failure_window),
    ] {
        if d.is_zero() {
            problems.push(format!("{key} must be greater than zero"));
        }
    }
    problems
}

/// Where the configuration comes from. The environment is passed in (not read globally) so
/// tests can supply their own.
#[derive(Debug, Default)]
pub struct Sources<'a> {
    /// The TOML file, if any.
    pub file: Option<&'a Path>,
    /// `(name, value)` pairs of the process environment; only `SPARKGATE_*` are used.
    pub env: Vec<(String, String)>,
    /// `section.key=value` overrides from the command line.
    pub overrides: Vec<String>,
}

/// Loads and validates the configuration from its layered sources.
pub fn load(sources: &Sources<'_>) -> Result<ValidatedConfig, ConfigError> {
    let mut tree = toml::Table::new();
    if let Some(path) = sources.file {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        tree = text.parse::<toml::Table>().map_err(|e| ConfigError::Syntax(format!("{}: {e}", path.display())))?;
    }
    for (name, value) in &sources.env {
        // SPARKGATE_SESSIONS__IDLE_TIMEOUT=30m sets sessions.idle_timeout.
        if let Some(rest) = name.strip_prefix("SPARKGATE_") {
            if rest.is_empty() || !rest.contains("__") {
                continue; // not a configuration override (e.g. SPARKGATE_LOG)
            }
            let key = rest.to_ascii_lowercase().replace("__", ".");
            set_path(&mut tree, &key, value)?;
        }
    }
    for item in &sources.overrides {
        let (key, value) =
            item.split_once('=').ok_or_else(|| ConfigError::Syntax(format!("override `{item}` is not key=value")))?;
        set_path(&mut tree, key.trim(), value.trim())?;
    }
    from_table(tree)
}

/// Deserialises a merged table, collecting every unknown key, then validates.
fn from_table(tree: toml::Table) -> Result<ValidatedConfig, ConfigError> {
    let mut unknown = Vec::new();
    let config: Config = serde_ignored::deserialize(toml::Value::Table(tree), |path| {
        unknown.push(path.to_string());
    })
    .map_err(|e| ConfigError::Syntax(e.to_string()))?;
    if !unknown.is_empty() {
        return Err(ConfigError::UnknownKeys(unknown));
    }
    validate(config)
}

/// Sets `a.b.c` in a table. The value is read as a TOML literal when it is one (numbers,
/// booleans, arrays), otherwise taken as a string.
fn set_path(tree: &mut toml::Table, key: &str, raw: &str) -> Result<(), ConfigError> {
    let parts = split_key(key);
    if parts.is_empty() || parts.iter().any(|p| p.is_empty()) {
        return Err(ConfigError::Syntax(format!("bad configuration key `{key}`")));
    }
    let value = format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()));
    let mut table = tree;
    for part in &parts[..parts.len() - 1] {
        let entry = table.entry(part.to_string()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        table =
            entry.as_table_mut().ok_or_else(|| ConfigError::Syntax(format!("`{part}` in `{key}` is not a section")))?;
    }
    if let Some(last) = parts.last() {
        table.insert(last.clone(), value);
    }
    Ok(())
}

/// Splits a dotted key; a quoted part may contain dots (`spark.conf."spark.ui.enabled"`).
fn split_key(key: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    for c in key.trim().chars() {
        match c {
            '"' => quoted = !quoted,
            '.' if !quoted => parts.push(std::mem::take(&mut current)),
            c => current.push(c),
        }
    }
    parts.push(current);
    parts
}

fn validate(config: Config) -> Result<ValidatedConfig, ConfigError> {
    let mut problems = Vec::new();
    let mut dur = |key: &str, value: &str| -> Duration {
        match parse_duration(value) {
            Ok(d) => d,
            Err(e) => {
                problems.push(format!("{key}: {e}"));
                Duration::ZERO
            }
        }
    };
    let optional = |d: Duration| (!d.is_zero()).then_some(d);
    let s = &config.sessions;
    let durations = Durations {
        request_timeout: dur("server.request_timeout", &config.server.request_timeout),
        tls_handshake_timeout: dur("server.tls_handshake_timeout", &config.server.tls_handshake_timeout),
        header_timeout: dur("server.header_timeout", &config.server.header_timeout),
        start_timeout: dur("sessions.start_timeout", &s.start_timeout),
        idle_timeout: optional(dur("sessions.idle_timeout", &s.idle_timeout)),
        ttl: optional(dur("sessions.ttl", &s.ttl)),
        retain_finished: dur("sessions.retain_finished", &s.retain_finished),
        shutdown_grace: dur("sessions.shutdown_grace", &s.shutdown_grace),
        check_interval: dur("sessions.check_interval", &s.check_interval),
        completion_timeout: dur("sessions.completion_timeout", &s.completion_timeout),
        max_statement_wait: dur("sessions.max_statement_wait", &s.max_statement_wait),
        warm_idle_evict: dur("sessions.warm.idle_evict", &s.warm.idle_evict),
        rpc_handshake_timeout: dur("rpc.handshake_timeout", &config.rpc.handshake_timeout),
        reconnect_window: dur("rpc.reconnect_window", &config.rpc.reconnect_window),
        ping_interval: dur("rpc.ping_interval", &config.rpc.ping_interval),
        spark_check_timeout: dur("spark.check_timeout", &config.spark.check_timeout),
        jwt_leeway: dur("auth.jwt.leeway", &config.auth.jwt.leeway),
        jwt_reload_interval: dur("auth.jwt.reload_interval", &config.auth.jwt.reload_interval),
        spnego_cookie_ttl: optional(dur("auth.spnego.cookie_ttl", &config.auth.spnego.cookie_ttl)),
        ldap_connect_timeout: dur("auth.ldap.connect_timeout", &config.auth.ldap.connect_timeout),
        ldap_timeout: dur("auth.ldap.timeout", &config.auth.ldap.timeout),
        ldap_cookie_ttl: optional(dur("auth.ldap.cookie_ttl", &config.auth.ldap.cookie_ttl)),
        ldap_remember: optional(dur("auth.ldap.remember", &config.auth.ldap.remember)),
        ldap_failure_window: dur("auth.ldap.failure_window", &config.auth.ldap.failure_window),
        acl_reload_interval: dur("acl.reload_interval", &config.acl.reload_interval),
        tls_reload_interval: dur("tls.reload_interval", &config.tls.reload_interval),
        audit_max_age: optional(dur("audit.max_age", &config.audit.max_age)),
        audit_repeat_window: dur("audit.repeat_window", &config.audit.repeat_window),
    };
    for (key, d) in [
        ("server.request_timeout", durations.request_timeout),
        ("sessions.start_timeout", durations.start_timeout),
        ("sessions.check_interval", durations.check_interval),
        ("rpc.handshake_timeout", durations.rpc_handshake_timeout),
        ("rpc.ping_interval", durations.ping_interval),
    ] {
        if d.is_zero() {
            problems.push(format!("{key} must be greater than zero"));
        }
    }
    for (key, d) in [
        ("auth.jwt.reload_interval", durations.jwt_reload_interval),
        ("acl.reload_interval", durations.acl_reload_interval),
        ("tls.reload_interval", durations.tls_reload_interval),
        ("audit.repeat_window", durations.audit_repeat_window),
    ] {
        if d.is_zero() {
            problems.push(format!("{key} must be greater than zero"));
        }
    }
    let auth = &config.auth;
    let mut seen = Vec::new();
    for method in &auth.methods {
        if !matches!(method.as_str(), "client_cert" | "spnego" | "jwt" | "ldap") {
            problems.push(format!("auth.methods: unknown method `{method}` (use client_cert, spnego, jwt or ldap)"));
        } else if seen.contains(method) {
            problems.push(format!("auth.methods: `{method}` is listed twice"));
        }
        seen.push(method.clone());
    }
    if auth.methods.is_empty() && !auth.dangerous_allow_anonymous {
        problems.push(
            "auth.methods is empty: nobody could use the gateway (list client_cert, spnego, jwt and/or ldap)".into(),
        );
    }
    if auth.jwt.public_key.is_some() && auth.jwt.jwks.is_some() {
        problems.push("auth.jwt.public_key and auth.jwt.jwks are exclusive: set one".into());
    }
    for alg in &auth.jwt.algorithms {
        if !matches!(
            alg.as_str(),
            "RS256" | "RS384" | "RS512" | "PS256" | "PS384" | "PS512" | "ES256" | "ES384" | "EdDSA"
        ) {
            problems.push(format!(
                "auth.jwt.algorithms: `{alg}` is not accepted (asymmetric algorithms only: RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA)"
            ));
        }
    }
    if auth.methods.iter().any(|m| m == "jwt") && (auth.jwt.issuer.is_empty() || auth.jwt.audience.is_empty()) {
        problems.push("auth.jwt.issuer and auth.jwt.audience must be set: both are required claims".into());
    }
    if auth.methods.iter().any(|m| m == "spnego") {
        if auth.spnego.keytab.is_none() {
            problems.push("auth.spnego.keytab is required when spnego is in auth.methods".into());
        }
        if auth.spnego.rules.is_empty() {
            problems.push("auth.spnego.rules is empty: no principal could be mapped to a user".into());
        }
    }
    if auth.methods.iter().any(|m| m == "ldap") {
        problems.extend(ldap_problems(&auth.ldap, &durations));
    }
    if auth.methods.iter().any(|m| m == "client_cert") && auth.client_cert.ca.is_none() {
        problems.push("auth.client_cert.ca is required when client_cert is in auth.methods".into());
    }
    if !matches!(auth.client_cert.user_from.as_str(), "subject_cn" | "san_email" | "san_dns" | "san_uri") {
        problems.push(format!(
            "auth.client_cert.user_from must be subject_cn, san_email, san_dns or san_uri, not `{}`",
            auth.client_cert.user_from
        ));
    }
    if !matches!(config.csrf.mode.as_str(), "auto" | "strict" | "off") {
        problems.push(format!("csrf.mode must be auto, strict or off, not `{}`", config.csrf.mode));
    }
    if config.audit.max_file_bytes < 4096 {
        problems.push("audit.max_file_bytes must be at least 4096".into());
    }
    if s.max_sessions == 0 {
        problems.push("sessions.max_sessions must be at least 1".into());
    }
    if s.max_concurrent_launches == 0 {
        problems.push("sessions.max_concurrent_launches must be at least 1".into());
    }
    if s.warm.max_drivers > 0 && parse_duration(&s.warm.idle_evict).is_ok_and(|d| d.is_zero()) {
        problems.push("sessions.warm.idle_evict must be more than 0 while warm drivers are on".into());
    }
    if config.batches.max_batches == 0 || config.batches.max_concurrent_launches == 0 {
        problems.push("batches.max_batches and batches.max_concurrent_launches must be at least 1".into());
    }
    if s.max_output_bytes < 1024 {
        problems.push("sessions.max_output_bytes must be at least 1024".into());
    }
    if s.max_retained_bytes < s.max_output_bytes {
        problems.push("sessions.max_retained_bytes must be at least sessions.max_output_bytes".into());
    }
    if s.max_log_file_bytes < 64 * 1024 {
        problems.push("sessions.max_log_file_bytes must be at least 65536".into());
    }
    if s.max_finished_retained == 0 || s.max_finished_retained_per_user == 0 {
        problems.push(
            "sessions.max_finished_retained and sessions.max_finished_retained_per_user must be at least 1".into(),
        );
    }
    if s.max_queued_statements == 0 {
        problems.push("sessions.max_queued_statements must be at least 1".into());
    }
    if config.rpc.max_frame_bytes < config.server.max_body_bytes.saturating_add(64 * 1024) {
        // A statement's code (up to a request body) travels in one frame to the driver.
        problems.push(format!(
            "rpc.max_frame_bytes ({}) must exceed server.max_body_bytes ({}) by at least 64 KiB, or a large \
             statement could never reach its driver",
            config.rpc.max_frame_bytes, config.server.max_body_bytes
        ));
    }
    if s.sql_max_rows == 0 {
        problems.push("sessions.sql_max_rows must be at least 1".into());
    }
    if config.server.max_body_bytes < 1024 {
        problems.push("server.max_body_bytes must be at least 1024".into());
    }
    if config.server.max_concurrent_requests == 0 {
        problems.push("server.max_concurrent_requests must be at least 1".into());
    }
    if config.server.max_connections == 0 || config.server.max_connections_per_ip == 0 {
        problems.push("server.max_connections and server.max_connections_per_ip must be at least 1".into());
    }
    if config.rpc.max_pending_handshakes == 0 || config.rpc.max_pending_handshakes_per_ip == 0 {
        problems.push("rpc.max_pending_handshakes and rpc.max_pending_handshakes_per_ip must be at least 1".into());
    }
    if config.server.max_header_bytes < 4096 {
        problems.push("server.max_header_bytes must be at least 4096".into());
    }
    if !(1024..=MAX_URI_BYTES).contains(&config.server.max_uri_bytes) {
        // hyper refuses longer request targets itself (414), before the limit could apply.
        problems.push(format!("server.max_uri_bytes must be between 1024 and {MAX_URI_BYTES}"));
    }
    if config.rpc.max_frame_bytes < 4096 {
        problems.push("rpc.max_frame_bytes must be at least 4096".into());
    }
    if !matches!(config.spark.deploy_mode.as_str(), "client" | "cluster") {
        problems.push(format!("spark.deploy_mode must be `client` or `cluster`, not `{}`", config.spark.deploy_mode));
    }
    if config.spark.launch_principal.is_some() != config.spark.launch_keytab.is_some() {
        problems.push("spark.launch_principal and spark.launch_keytab must be given together".into());
    }
    if config.spark.launch_principal.is_some()
        && config.spark.deploy_mode != "cluster"
        && !config.spark.dangerous_share_launch_credentials
    {
        problems.push(
            "spark.launch_principal in local or client deploy mode would give every driver, and so every user's \
             code, the gateway's Kerberos credentials (it could act as the gateway, a proxy user: as anyone); use \
             spark.deploy_mode = \"cluster\", or set spark.dangerous_share_launch_credentials = true for a single \
             team that trusts one another"
                .into(),
        );
    }
    if config.spark.application_tags.iter().any(|t| t.is_empty() || t.contains([',', ' '])) {
        problems.push("spark.application_tags must be non-empty and contain no commas or spaces".into());
    }
    for scheme in &config.spark.extra_remote_schemes {
        let well_formed = scheme.len() > 1
            && scheme.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
            && scheme.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
        if !well_formed {
            problems.push(format!("spark.extra_remote_schemes: `{scheme}` is not a URI scheme"));
        } else if crate::engine::paths::LOCAL_SCHEMES.iter().any(|s| scheme.eq_ignore_ascii_case(s)) {
            problems.push(format!("spark.extra_remote_schemes: `{scheme}` names files on this host"));
        }
    }
    match config.spark.local_sandbox.as_str() {
        "bwrap" | "dangerous_off" => {}
        "off" => problems.push(
            "spark.local_sandbox: `off` is spelled `dangerous_off` (user code would run with the gateway's \
             own files); use `bwrap`"
                .into(),
        ),
        other => problems.push(format!("spark.local_sandbox must be `bwrap` or `dangerous_off`, not `{other}`")),
    }
    if let Some(path) = config.spark.sandbox_read_only_paths.iter().find(|p| !p.is_absolute()) {
        problems.push(format!("spark.sandbox_read_only_paths: `{}` is not an absolute path", path.display()));
    }
    if let Some(jar) = &config.spark.job_api_jar {
        if !jar.is_absolute() || !jar.is_file() {
            problems.push(format!(
                "spark.job_api_jar: `{}` is not an absolute path to a file (scripts/build-livy-api.sh builds it)",
                jar.display()
            ));
        }
    }
    if config.spark.master.trim().is_empty() {
        problems.push("spark.master must not be empty".into());
    }
    if config.rpc.advertise_host.trim().is_empty() {
        problems.push("rpc.advertise_host must not be empty".into());
    }
    if config.tls.cert.is_some() != config.tls.key.is_some() {
        problems.push("tls.cert and tls.key must be given together".into());
    }
    if config.auth.dangerous_allow_anonymous && !config.server.bind.ip().is_loopback() {
        problems.push(format!(
            "auth.dangerous_allow_anonymous is only allowed on a loopback address, but server.bind is {}",
            config.server.bind
        ));
    }
    if config.server.dangerous_plain_http && !config.server.bind.ip().is_loopback() {
        problems.push(format!(
            "server.dangerous_plain_http is only allowed on a loopback address, but server.bind is {}",
            config.server.bind
        ));
    }
    if problems.is_empty() {
        Ok(ValidatedConfig { config, durations })
    } else {
        Err(ConfigError::Invalid(problems))
    }
}

#[cfg(test)]
mod tests;
