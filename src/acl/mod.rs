//! The AccessManager: decisions from `policies/*.toml`, deny by default, hot-reloaded (a bad
//! file keeps the old policy and says why). Every decision carries a reason for the audit log.

pub mod conf;
pub mod policy;

use crate::identity::Principal;
use policy::{PolicyFile, Quota};
use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

/// What a decision is about: every message and audit reason names the right kind, so no
/// caller ever rewrites one kind's text into another's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResourceKind {
    /// An interactive session.
    Session,
    /// A batch.
    Batch,
}

impl ResourceKind {
    /// `session` or `batch`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Session => "session",
            Self::Batch => "batch",
        }
    }

    /// `sessions` or `batches`.
    pub fn plural(self) -> &'static str {
        match self {
            Self::Session => "sessions",
            Self::Batch => "batches",
        }
    }
}

/// What a caller wants to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Use the gateway at all.
    UseGateway,
    /// Create a session or batch.
    Create(ResourceKind),
    /// Read a session: statements, log, full info.
    View,
    /// Change a session: statements, cancel, completion, delete.
    Modify,
    /// Administer the gateway.
    Admin,
}

impl Action {
    /// Name for messages and the audit trail.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::UseGateway => "use the gateway",
            Self::Create(ResourceKind::Session) => "create sessions",
            Self::Create(ResourceKind::Batch) => "create batches",
            Self::View => "view",
            Self::Modify => "modify",
            Self::Admin => "administer the gateway",
        }
    }
}

/// Who owns a session or batch, for per-resource checks.
#[derive(Debug, Clone, Copy)]
pub struct Ownership<'a> {
    /// A session or a batch.
    pub kind: ResourceKind,
    /// The authenticated creator.
    pub owner: &'a str,
    /// The user it runs as.
    pub effective_user: &'a str,
    /// For messages: `session 3`, `batch 3`.
    pub id: u32,
}

/// The outcome of a check, with the reason recorded in the audit trail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Allowed or not.
    pub allowed: bool,
    /// Why.
    pub reason: String,
}

impl Decision {
    fn allow(reason: impl Into<String>) -> Self {
        Self { allowed: true, reason: reason.into() }
    }
    fn deny(reason: impl Into<String>) -> Self {
        Self { allowed: false, reason: reason.into() }
    }
}

/// The OS account the gateway runs under (None if it has no name).
pub fn gateway_account() -> Option<String> {
    static NAME: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    NAME.get_or_init(|| nix::unistd::User::from_uid(nix::unistd::getuid()).ok().flatten().map(|u| u.name)).clone()
}

/// An IP address or CIDR block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostPattern {
    net: IpAddr,
    bits: u8,
}

impl HostPattern {
    /// Parses `10.0.0.1`, `10.0.0.0/8`, `::1`, `fd00::/8`.
    pub fn parse(text: &str) -> Option<Self> {
        let (addr, bits) = match text.split_once('/') {
            Some((a, b)) => (a.parse::<IpAddr>().ok()?, b.parse::<u8>().ok()?),
            None => {
                let a = text.parse::<IpAddr>().ok()?;
                (a, if a.is_ipv4() { 32 } else { 128 })
            }
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        (bits <= max).then_some(Self { net: addr, bits })
    }

    /// Whether `ip` is inside.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        };
        match (self.net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = if self.bits == 0 { 0 } else { u32::MAX << (32 - u32::from(self.bits)) };
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = if self.bits == 0 { 0 } else { u128::MAX << (128 - u32::from(self.bits)) };
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

#[derive(Debug)]
struct Loaded {
    policy: PolicyFile,
    stamps: Vec<(PathBuf, Option<SystemTime>, u64)>,
}

/// Decides who may do what.
#[derive(Debug)]
pub struct AccessManager {
    dir: PathBuf,
    groups_file: Option<PathBuf>,
    current: RwLock<Arc<Loaded>>,
    reload_lock: Mutex<()>,
}

fn stamps(files: &[PathBuf], dir: &Path) -> Vec<(PathBuf, Option<SystemTime>, u64)> {
    let mut out: Vec<_> = files
        .iter()
        .map(|f| {
            let meta = std::fs::metadata(f).ok();
            (f.clone(), meta.as_ref().and_then(|m| m.modified().ok()), meta.map_or(0, |m| m.len()))
        })
        .collect();
    // The directory's own mtime changes when files are added or removed.
    let meta = std::fs::metadata(dir).ok();
    out.push((dir.to_path_buf(), meta.as_ref().and_then(|m| m.modified().ok()), 0));
    out
}

impl AccessManager {
    /// Loads the policy directory; an error names the file and the problem.
    pub fn load(dir: &Path, groups_file: Option<&Path>) -> Result<Arc<Self>, String> {
        let (policy, files) = policy::load_dir(dir, groups_file)?;
        let loaded = Loaded { policy, stamps: stamps(&files, dir) };
        Ok(Arc::new(Self {
            dir: dir.to_path_buf(),
            groups_file: groups_file.map(Path::to_path_buf),
            current: RwLock::new(Arc::new(loaded)),
            reload_lock: Mutex::new(()),
        }))
    }

    /// A manager over an in-memory policy (tests).
    pub fn from_policy(policy: PolicyFile) -> Arc<Self> {
        Arc::new(Self {
            dir: PathBuf::new(),
            groups_file: None,
            current: RwLock::new(Arc::new(Loaded { policy, stamps: Vec::new() })),
            reload_lock: Mutex::new(()),
        })
    }

    fn policy(&self) -> Arc<Loaded> {
        self.current.read().map(|p| p.clone()).unwrap_or_else(|p| p.into_inner().clone())
    }

    /// Reloads when any policy file changed. `None`: nothing changed; `Some(Ok)`: reloaded;
    /// `Some(Err)`: the new files are invalid and the old policy stays.
    pub fn reload_if_changed(&self) -> Option<Result<(), String>> {
        let _guard = self.reload_lock.lock().ok()?;
        let current = self.policy();
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .map(|rd| rd.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "toml")).collect())
            .unwrap_or_default();
        files.sort();
        if let Some(g) = &self.groups_file {
            files.push(g.clone());
        }
        if stamps(&files, &self.dir) == current.stamps {
            return None;
        }
        match policy::load_dir(&self.dir, self.groups_file.as_deref()) {
            Ok((policy, files)) => {
                let loaded = Loaded { policy, stamps: stamps(&files, &self.dir) };
                if let Ok(mut slot) = self.current.write() {
                    *slot = Arc::new(loaded);
                }
                Some(Ok(()))
            }
            Err(e) => {
                // Keep the old policy, but remember these stamps so the error is reported once.
                if let Ok(mut slot) = self.current.write() {
                    *slot = Arc::new(Loaded { policy: current.policy.clone(), stamps: stamps(&files, &self.dir) });
                }
                Some(Err(e))
            }
        }
    }

    /// The groups of a principal: its own (token claims, certificate rules) plus the policy's.
    fn groups_of(policy: &PolicyFile, principal: &Principal) -> BTreeSet<String> {
        let mut groups: BTreeSet<String> = principal.groups.iter().cloned().collect();
        for (group, members) in &policy.groups {
            if members.contains(&principal.name) {
                groups.insert(group.clone());
            }
        }
        groups
    }

    /// Whether the principal is a superuser.
    pub fn is_superuser(&self, principal: &Principal) -> bool {
        let loaded = self.policy();
        let groups = Self::groups_of(&loaded.policy, principal);
        loaded.policy.superusers.contains(&principal.name, &groups)
    }

    /// Decides an action, optionally on one session or batch.
    pub fn check(&self, principal: &Principal, action: Action, session: Option<Ownership<'_>>) -> Decision {
        let loaded = self.policy();
        let p = &loaded.policy;
        let user = principal.name.as_str();
        let groups = Self::groups_of(p, principal);
        if p.superusers.contains(user, &groups) {
            return Decision::allow(format!("{user} is a superuser"));
        }
        let what = |a: Action| match session {
            Some(s) => format!("{} {} {}", a.as_str(), s.kind.as_str(), s.id),
            None => a.as_str().to_string(),
        };
        if let Some(s) = session {
            if matches!(action, Action::View | Action::Modify) {
                if s.owner == user {
                    return Decision::allow(format!("{user} owns {} {}", s.kind.as_str(), s.id));
                }
                if s.effective_user == user {
                    return Decision::allow(format!("{} {} runs as {user}", s.kind.as_str(), s.id));
                }
            }
        }
        let granted = match action {
            Action::UseGateway => {
                [&p.gateway, &p.create, &p.view, &p.modify, &p.admin].iter().any(|set| set.contains(user, &groups))
            }
            Action::Create(_) => p.create.contains(user, &groups),
            Action::View => p.view.contains(user, &groups) || p.modify.contains(user, &groups),
            Action::Modify => p.modify.contains(user, &groups),
            Action::Admin => p.admin.contains(user, &groups),
        };
        if granted {
            Decision::allow(format!("policy grants {user} the right to {}", what(action)))
        } else {
            Decision::deny(format!("{user} is not allowed to {}", what(action)))
        }
    }

    /// Whether `caller` may act as `target` from `peer` (Hadoop's proxyuser model). Acting as
    /// oneself is always allowed; otherwise any one rule that matches caller, target and host
    /// allows it. A superuser is a target only of rules naming them in `targets.users`.
    pub fn check_impersonation(&self, principal: &Principal, target: &str, peer: Option<IpAddr>) -> Decision {
        let user = principal.name.as_str();
        if target == user {
            return Decision::allow(format!("{user} acts as themself"));
        }
        let loaded = self.policy();
        let p = &loaded.policy;
        let caller_groups = Self::groups_of(p, principal);
        // The target's groups come from the policy only, as for the acting principal later.
        let target_principal = Principal { name: target.to_string(), groups: Vec::new(), method: principal.method };
        let target_groups = Self::groups_of(p, &target_principal);
        let target_is_superuser = p.superusers.contains(target, &target_groups);
        // Acting as the gateway's own OS account launches without --proxy-user, i.e. with the
        // gateway's own (Kerberos) identity: as privileged as a superuser.
        let target_is_gateway = gateway_account().as_deref() == Some(target);
        // What the rules that came close said, for the reason of a denial.
        let (mut wrong_host, mut superuser_not_named) = (false, false);
        for rule in &p.impersonation {
            if !rule.callers.contains(user, &caller_groups) || !rule.targets.contains(target, &target_groups) {
                continue;
            }
            // `"*"` or a group must not hand out a superuser's (or the gateway's) rights by accident.
            if (target_is_superuser || target_is_gateway) && !rule.targets.users.contains(target) {
                superuser_not_named = true;
                continue;
            }
            let host_ok = rule.hosts.iter().any(|h| {
                h == "*" || (peer.is_some_and(|ip| HostPattern::parse(h).is_some_and(|pat| pat.contains(ip))))
            });
            if host_ok {
                return Decision::allow(format!("{user} may impersonate {target} by policy"));
            }
            // Not decisive: a later rule, perhaps from another file, may allow this host.
            wrong_host = true;
        }
        if wrong_host {
            Decision::deny(format!(
                "{user} may impersonate {target} only from the hosts the policy lists, not from {}",
                peer.map_or_else(|| "an unknown address".to_string(), |ip| ip.to_string())
            ))
        } else if superuser_not_named {
            let what = if target_is_superuser { "a superuser" } else { "the gateway's own account" };
            Decision::deny(format!(
                "{user} is not allowed to impersonate {target}: {target} is {what}, and only a rule naming \
                 them in `targets.users` allows that"
            ))
        } else {
            Decision::deny(format!("{user} is not allowed to impersonate {target}"))
        }
    }

    /// The Spark conf keys among `keys` that the principal may not set, with why (empty =
    /// fine): anything not on the allow-list, and anything on the deny list. Superusers may set
    /// any key.
    pub fn refused_conf_keys<'k>(
        &self,
        principal: &Principal,
        keys: impl IntoIterator<Item = &'k str>,
    ) -> Vec<(String, conf::Refusal)> {
        if self.is_superuser(principal) {
            return Vec::new();
        }
        let loaded = self.policy();
        keys.into_iter()
            .filter_map(|key| conf::refusal(&loaded.policy.conf, key).map(|why| (key.to_string(), why)))
            .collect()
    }

    /// The quota for a user.
    pub fn quota(&self, user: &str) -> Quota {
        let loaded = self.policy();
        match loaded.policy.quotas.users.get(user) {
            Some(own) => Quota { explicit: true, ..*own },
            None => loaded.policy.quotas.default,
        }
    }
}

#[cfg(test)]
mod tests;
