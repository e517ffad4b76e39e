//! The policy file model (`policies/*.toml`, grammar in policies/README.md) and how several
//! files merge into one policy.

use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A set of users and groups; `"*"` in `users` means everyone.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Subjects {
    /// User names.
    pub users: BTreeSet<String>,
    /// Group names.
    pub groups: BTreeSet<String>,
}

impl Subjects {
    /// Whether the user (with these groups) is in the set.
    pub fn contains(&self, user: &str, groups: &BTreeSet<String>) -> bool {
        self.users.contains("*") || self.users.contains(user) || self.groups.iter().any(|g| groups.contains(g))
    }

    fn merge(&mut self, other: Self) {
        self.users.extend(other.users);
        self.groups.extend(other.groups);
    }
}

/// One proxy-user rule (Hadoop's `hadoop.proxyuser.<user>.{users,groups,hosts}` model).
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyRule {
    /// Who may impersonate.
    pub callers: Subjects,
    /// Whom they may impersonate.
    pub targets: Subjects,
    /// From which source addresses (IPs or CIDR blocks; `"*"` = anywhere). Empty = nowhere.
    pub hosts: Vec<String>,
}

/// Per-user limits.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Quota {
    /// Live sessions per user.
    pub max_sessions: Option<usize>,
    /// Sessions starting at once per user.
    pub max_concurrent_launches: Option<usize>,
    /// Creates refused because the name was taken, per hour (default
    /// [`crate::engine::names::DEFAULT_MAX_NAME_CONFLICTS`]); beyond it named creates get 429.
    pub max_name_conflicts: Option<usize>,
    /// Whether this quota was written for the user by name (`[quotas] users.<name>`): only
    /// those may reach the global caps (see [`crate::engine::limits`]).
    #[serde(skip)]
    pub explicit: bool,
}

/// Quotas: a default and per-user overrides.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Quotas {
    /// For everyone without an override.
    pub default: Quota,
    /// By user name.
    pub users: BTreeMap<String, Quota>,
}

/// Spark conf keys users may set beyond the built-in allow-list, and keys they may not set
/// beyond the built-in deny list (see [`super::conf`]).
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ConfRules {
    /// Exact keys allowed (in addition to the built-in allow-list).
    pub allow: BTreeSet<String>,
    /// Key prefixes allowed (in addition to the built-in allow-list).
    pub allow_prefixes: BTreeSet<String>,
    /// Exact keys refused (in addition to the built-in list).
    pub deny: BTreeSet<String>,
    /// Key prefixes refused (in addition to the built-in list).
    pub deny_prefixes: BTreeSet<String>,
}

/// One policy file, as written.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyFile {
    /// May do everything, on every session.
    pub superusers: Subjects,
    /// May use the gateway at all (anyone with another right may too).
    pub gateway: Subjects,
    /// May create sessions and batches.
    pub create: Subjects,
    /// May view every session (owners and effective users always view their own).
    pub view: Subjects,
    /// May modify every session: statements, cancel, delete (owners and effective users always
    /// modify their own).
    pub modify: Subjects,
    /// May administer the gateway.
    pub admin: Subjects,
    /// Proxy-user rules.
    pub impersonation: Vec<ProxyRule>,
    /// Spark conf restrictions.
    pub conf: ConfRules,
    /// Per-user quotas.
    pub quotas: Quotas,
    /// Group memberships: group = [users].
    pub groups: BTreeMap<String, BTreeSet<String>>,
}

impl PolicyFile {
    /// Folds `other` into `self`: lists are unions; quotas of later files win.
    pub fn merge(&mut self, other: Self) {
        self.superusers.merge(other.superusers);
        self.gateway.merge(other.gateway);
        self.create.merge(other.create);
        self.view.merge(other.view);
        self.modify.merge(other.modify);
        self.admin.merge(other.admin);
        self.impersonation.extend(other.impersonation);
        self.conf.allow.extend(other.conf.allow);
        self.conf.allow_prefixes.extend(other.conf.allow_prefixes);
        self.conf.deny.extend(other.conf.deny);
        self.conf.deny_prefixes.extend(other.conf.deny_prefixes);
        if other.quotas.default != Quota::default() {
            self.quotas.default = other.quotas.default;
        }
        self.quotas.users.extend(other.quotas.users);
        for (group, members) in other.groups {
            self.groups.entry(group).or_default().extend(members);
        }
    }
}

/// Groups file: `[groups]` group = [users].
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupsFile {
    #[serde(default)]
    groups: BTreeMap<String, BTreeSet<String>>,
}

/// Reads every `*.toml` in `dir` (sorted by name) plus the optional groups file into one
/// policy. Any error names the file and the problem; nothing is half-applied.
pub fn load_dir(dir: &Path, groups_file: Option<&Path>) -> Result<(PolicyFile, Vec<PathBuf>), String> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("policy directory {}: {e}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    let mut policy = PolicyFile::default();
    for file in &files {
        let text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
        let parsed: PolicyFile = toml::from_str(&text).map_err(|e| format!("{}: {e}", file.display()))?;
        validate(&parsed).map_err(|e| format!("{}: {e}", file.display()))?;
        policy.merge(parsed);
    }
    if let Some(path) = groups_file {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let parsed: GroupsFile = toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        for (group, members) in parsed.groups {
            policy.groups.entry(group).or_default().extend(members);
        }
        files.push(path.to_path_buf());
    }
    Ok((policy, files))
}

fn validate(policy: &PolicyFile) -> Result<(), String> {
    for (i, rule) in policy.impersonation.iter().enumerate() {
        for host in &rule.hosts {
            if host != "*" && super::HostPattern::parse(host).is_none() {
                return Err(format!("impersonation rule {}: `{host}` is not an IP address or CIDR block", i + 1));
            }
        }
        if rule.callers == Subjects::default() {
            return Err(format!("impersonation rule {} names no callers", i + 1));
        }
    }
    if policy.superusers.users.contains("*") {
        return Err("superusers must not contain \"*\"".into());
    }
    Ok(())
}
