use super::*;
use crate::identity::AuthMethod;

fn who(name: &str, groups: &[&str]) -> Principal {
    Principal { name: name.into(), groups: groups.iter().map(|g| g.to_string()).collect(), method: AuthMethod::Jwt }
}

const POLICY: &str = r#"
[superusers]
users = ["root"]

[create]
groups = ["analysts"]

[view]
users = ["auditor"]

[modify]
groups = ["operators"]

[groups]
analysts = ["alice", "bob"]
operators = ["olga"]

[[impersonation]]
callers = { users = ["hue"] }
targets = { groups = ["analysts"] }
hosts = ["10.1.0.0/16", "127.0.0.1"]

[conf]
deny = ["spark.sql.warehouse.dir"]
deny_prefixes = ["spark.hadoop."]

[quotas]
default = { max_sessions = 2, max_concurrent_launches = 1 }
users.alice = { max_sessions = 5 }
"#;

fn manager() -> (Arc<AccessManager>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("acl.toml"), POLICY).unwrap();
    (AccessManager::load(dir.path(), None).unwrap(), dir)
}

#[test]
fn an_empty_policy_denies_everyone() {
    let dir = tempfile::tempdir().unwrap();
    let m = AccessManager::load(dir.path(), None).unwrap();
    for action in
        [Action::UseGateway, Action::Create(ResourceKind::Session), Action::View, Action::Modify, Action::Admin]
    {
        assert!(!m.check(&who("alice", &["admins"]), action, None).allowed, "{action:?}");
    }
}

#[test]
fn rights_from_users_and_groups() {
    let (m, _d) = manager();
    let alice = who("alice", &[]);
    assert!(m.check(&alice, Action::UseGateway, None).allowed);
    assert!(
        m.check(&alice, Action::Create(ResourceKind::Session), None).allowed,
        "alice is an analyst through the policy's groups"
    );
    assert!(
        m.check(&who("carol", &["analysts"]), Action::Create(ResourceKind::Session), None).allowed,
        "…or through the token's groups"
    );
    let stranger = who("mallory", &[]);
    let d = m.check(&stranger, Action::UseGateway, None);
    assert!(!d.allowed);
    assert!(d.reason.contains("mallory"), "{}", d.reason);
    assert!(!m.check(&who("auditor", &[]), Action::Create(ResourceKind::Session), None).allowed);
    assert!(m.check(&who("auditor", &[]), Action::UseGateway, None).allowed);
}

#[test]
fn session_rights_for_owner_effective_user_viewers_and_modifiers() {
    let (m, _d) = manager();
    let s = Ownership { kind: ResourceKind::Session, owner: "hue", effective_user: "alice", id: 3 };
    assert!(m.check(&who("hue", &[]), Action::Modify, Some(s)).allowed, "owner");
    assert!(m.check(&who("alice", &[]), Action::Modify, Some(s)).allowed, "effective user");
    assert!(!m.check(&who("bob", &[]), Action::View, Some(s)).allowed, "another analyst");
    assert!(!m.check(&who("bob", &[]), Action::Modify, Some(s)).allowed);
    assert!(m.check(&who("auditor", &[]), Action::View, Some(s)).allowed, "view-only user views");
    assert!(!m.check(&who("auditor", &[]), Action::Modify, Some(s)).allowed, "…but does not modify");
    assert!(m.check(&who("olga", &[]), Action::Modify, Some(s)).allowed, "operators modify");
    assert!(m.check(&who("olga", &[]), Action::View, Some(s)).allowed, "…and so view");
    assert!(m.check(&who("root", &[]), Action::Admin, None).allowed, "superuser");
    assert!(m.check(&who("root", &[]), Action::Modify, Some(s)).allowed);
    assert!(!m.check(&who("olga", &[]), Action::Admin, None).allowed);
}

#[test]
fn impersonation_follows_proxy_rules() {
    let (m, _d) = manager();
    let hue = who("hue", &[]);
    let inside: IpAddr = "10.1.2.3".parse().unwrap();
    let outside: IpAddr = "10.2.0.1".parse().unwrap();
    assert!(m.check_impersonation(&hue, "alice", Some(inside)).allowed);
    let d = m.check_impersonation(&hue, "alice", Some(outside));
    assert!(!d.allowed && d.reason.contains("hosts"), "{}", d.reason);
    assert!(!m.check_impersonation(&hue, "olga", Some(inside)).allowed, "olga is not an analyst");
    assert!(!m.check_impersonation(&who("alice", &[]), "bob", Some(inside)).allowed, "alice is no proxy");
    assert!(m.check_impersonation(&who("alice", &[]), "alice", None).allowed, "acting as oneself");
    let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
    assert!(m.check_impersonation(&hue, "bob", Some(mapped)).allowed, "IPv4-mapped loopback");
}

/// The keys of `conf` the principal may not set, with the reason.
fn refused(m: &AccessManager, user: &str, keys: &[&str]) -> Vec<(String, conf::Refusal)> {
    m.refused_conf_keys(&who(user, &[]), keys.iter().copied())
}

#[test]
fn conf_keys_are_allow_listed_with_the_deny_list_on_top() {
    let (m, _d) = manager();
    let keys = [
        "spark.master",
        "spark.executor.memory",
        "spark.driver.extraJavaOptions",
        "spark.executorEnv.LD_PRELOAD",
        "spark.sql.warehouse.dir",
        "spark.hadoop.fs.defaultFS",
        "spark.sql.shuffle.partitions",
        "spark.jars.packages",
    ];
    use conf::Refusal::{Denied, NotAllowed};
    assert_eq!(
        refused(&m, "alice", &keys),
        vec![
            ("spark.master".to_string(), Denied),
            ("spark.driver.extraJavaOptions".to_string(), Denied),
            ("spark.executorEnv.LD_PRELOAD".to_string(), Denied),
            ("spark.sql.warehouse.dir".to_string(), Denied),
            ("spark.hadoop.fs.defaultFS".to_string(), Denied),
            ("spark.jars.packages".to_string(), NotAllowed),
        ]
    );
    assert!(refused(&m, "root", &keys).is_empty(), "superusers are trusted");
}

#[test]
fn conf_deny_list_covers_identity_secrets_host_files_and_binaries() {
    let (m, _d) = manager();
    let denied = [
        "spark.kubernetes.authenticate.driver.serviceAccountName",
        "spark.kubernetes.authenticate.submission.oauthTokenFile",
        "spark.kubernetes.driver.secrets.gateway-keytab",
        "spark.kubernetes.executor.secrets.gateway-keytab",
        "spark.kubernetes.driver.secretKeyRef.TOKEN",
        "spark.kubernetes.executor.secretKeyRef.TOKEN",
        "spark.kubernetes.driver.podTemplateFile",
        "spark.kubernetes.executor.podTemplateFile",
        "spark.kubernetes.file.upload.path",
        "spark.jars.ivySettings",
        "spark.jars.ivy",
        "spark.r.command",
        "spark.r.driver.command",
        "spark.yarn.am.extraJavaOptions",
        "spark.yarn.am.extraLibraryPath",
        "spark.driver.resource.gpu.discoveryScript",
        "spark.executor.resource.fpga.discoveryScript",
        "spark.worker.resource.gpu.discoveryScript",
    ];
    let allowed = [
        "spark.driver.resource.gpu.amount",
        "spark.executor.resource.gpu.vendor",
        "spark.kubernetes.executor.request.cores",
        "spark.sql.shuffle.partitions",
    ];
    // Not refused by the deny list, but not on the allow-list either: an operator decides.
    let unlisted = ["spark.jars.packages", "spark.jars.repositories", "spark.kubernetes.driver.label.team"];
    let all: Vec<&str> = denied.iter().chain(&allowed).chain(&unlisted).copied().collect();
    let got = refused(&m, "alice", &all);
    let expected: Vec<(String, conf::Refusal)> = denied
        .iter()
        .map(|k| (k.to_string(), conf::Refusal::Denied))
        .chain(unlisted.iter().map(|k| (k.to_string(), conf::Refusal::NotAllowed)))
        .collect();
    assert_eq!(got, expected);
    assert!(refused(&m, "root", &all).is_empty(), "superusers stay exempt");
    // An operator's allow-list in a second policy file lets users set what it names.
    let (m, _d) = manager_of(&[
        ("a.toml", POLICY),
        (
            "b.toml",
            "[conf]\nallow = [\"spark.jars.packages\"]\nallow_prefixes = [\"spark.kubernetes.driver.label.\"]\n",
        ),
    ]);
    assert_eq!(
        refused(&m, "alice", &unlisted),
        vec![("spark.jars.repositories".to_string(), conf::Refusal::NotAllowed)]
    );
}

/// A manager over several policy files, loaded and merged as in production.
fn manager_of(files: &[(&str, &str)]) -> (Arc<AccessManager>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    (AccessManager::load(dir.path(), None).unwrap(), dir)
}

#[test]
fn a_rule_for_other_hosts_does_not_hide_a_later_rule_that_allows() {
    let (m, _d) = manager_of(&[
        (
            "a.toml",
            "[groups]\nanalysts = [\"alice\"]\n[[impersonation]]\ncallers = { users = [\"hue\"] }\n\
             targets = { groups = [\"analysts\"] }\nhosts = [\"10.1.0.0/16\"]\n",
        ),
        (
            "b.toml",
            "[[impersonation]]\ncallers = { users = [\"hue\"] }\ntargets = { users = [\"alice\"] }\n\
             hosts = [\"192.168.0.0/16\"]\n",
        ),
    ]);
    let hue = who("hue", &[]);
    let d = m.check_impersonation(&hue, "alice", Some("192.168.4.5".parse().unwrap()));
    assert!(d.allowed, "the second file's rule allows this host: {}", d.reason);
    assert!(m.check_impersonation(&hue, "alice", Some("10.1.2.3".parse().unwrap())).allowed);
    let d = m.check_impersonation(&hue, "alice", Some("172.16.0.1".parse().unwrap()));
    assert!(!d.allowed && d.reason.contains("hosts") && d.reason.contains("172.16.0.1"), "{}", d.reason);
    let d = m.check_impersonation(&hue, "alice", None);
    assert!(!d.allowed && d.reason.contains("unknown address"), "{}", d.reason);
}

#[test]
fn a_wildcard_or_group_target_does_not_cover_superusers() {
    let policy = r#"
[superusers]
users = ["root"]
groups = ["admins"]

[groups]
admins = ["ada"]

[[impersonation]]
callers = { users = ["hue", "ops"] }
targets = { users = ["*"], groups = ["admins"] }
hosts = ["*"]

[[impersonation]]
callers = { users = ["ops"] }
targets = { users = ["root"] }
hosts = ["*"]
"#;
    let (m, _d) = manager_of(&[("acl.toml", policy)]);
    let (hue, ops) = (who("hue", &[]), who("ops", &[]));
    assert!(m.check_impersonation(&hue, "alice", None).allowed, "\"*\" covers ordinary users");
    for superuser in ["root", "ada"] {
        let d = m.check_impersonation(&hue, superuser, None);
        assert!(!d.allowed && d.reason.contains("superuser"), "{superuser}: {}", d.reason);
    }
    assert!(m.check_impersonation(&ops, "root", None).allowed, "a rule naming root allows it");
    assert!(!m.check_impersonation(&ops, "ada", None).allowed, "ada is a superuser through a group only");
}

#[test]
fn the_gateways_own_account_is_a_target_only_when_named() {
    let me = gateway_account().expect("the test runs under a named account");
    let policy = format!(
        "[[impersonation]]\ncallers = {{ users = [\"hue\"] }}\ntargets = {{ users = [\"*\"] }}\nhosts = [\"*\"]\n\n\
         [[impersonation]]\ncallers = {{ users = [\"ops\"] }}\ntargets = {{ users = [\"{me}\"] }}\nhosts = [\"*\"]\n"
    );
    let (m, _d) = manager_of(&[("acl.toml", &policy)]);
    let d = m.check_impersonation(&who("hue", &[]), &me, None);
    assert!(!d.allowed && d.reason.contains("gateway's own account"), "{}", d.reason);
    assert!(m.check_impersonation(&who("hue", &[]), "alice", None).allowed);
    assert!(m.check_impersonation(&who("ops", &[]), &me, None).allowed, "a rule naming it allows it");
}

#[test]
fn quotas_default_and_per_user() {
    let (m, _d) = manager();
    assert_eq!(m.quota("bob"), Quota { max_sessions: Some(2), max_concurrent_launches: Some(1), ..Quota::default() });
    assert_eq!(m.quota("alice"), Quota { max_sessions: Some(5), explicit: true, ..Quota::default() });
}

#[test]
fn reload_applies_valid_files_and_keeps_the_old_policy_on_errors() {
    let (m, dir) = manager();
    assert_eq!(m.reload_if_changed(), None);
    let path = dir.path().join("acl.toml");
    std::fs::write(&path, POLICY.replace("users = [\"auditor\"]", "users = [\"auditor\", \"eve\"]")).unwrap();
    bump(&path);
    assert_eq!(m.reload_if_changed(), Some(Ok(())));
    assert!(m.check(&who("eve", &[]), Action::UseGateway, None).allowed);
    // A broken file: the error names it, and eve keeps her rights.
    std::fs::write(&path, "[superusers\nusers = [").unwrap();
    bump(&path);
    let err = m.reload_if_changed().unwrap().unwrap_err();
    assert!(err.contains("acl.toml"), "{err}");
    assert!(m.check(&who("eve", &[]), Action::UseGateway, None).allowed);
    assert_eq!(m.reload_if_changed(), None, "reported once");
    std::fs::write(&path, POLICY).unwrap();
    bump(&path);
    assert_eq!(m.reload_if_changed(), Some(Ok(())));
    // Unknown keys are errors too (a typo must not silently open or close access).
    std::fs::write(dir.path().join("more.toml"), "[supreusers]\nusers = [\"x\"]\n").unwrap();
    let err = m.reload_if_changed().unwrap().unwrap_err();
    assert!(err.contains("more.toml"), "{err}");
}

fn bump(path: &Path) {
    let later = SystemTime::now() + std::time::Duration::from_secs(2);
    std::fs::File::options().write(true).open(path).unwrap().set_modified(later).unwrap();
}

#[test]
fn host_patterns() {
    let p = HostPattern::parse("192.168.0.0/16").unwrap();
    assert!(p.contains("192.168.4.5".parse().unwrap()));
    assert!(!p.contains("192.169.0.1".parse().unwrap()));
    assert!(HostPattern::parse("::1").unwrap().contains("::1".parse().unwrap()));
    assert!(HostPattern::parse("10.0.0.0/33").is_none());
    assert!(HostPattern::parse("example.com").is_none());
}

#[test]
fn the_shipped_policy_loads_and_denies_by_default() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let m = AccessManager::load(&dir, None).unwrap();
    assert!(!m.check(&who("mallory", &[]), Action::UseGateway, None).allowed);
    assert!(!m.is_superuser(&who("root", &[])));
    assert!(m.check(&who("dev", &["sparkgate-users"]), Action::Create(ResourceKind::Session), None).allowed);
    let other = Ownership { kind: ResourceKind::Session, owner: "x", effective_user: "x", id: 1 };
    assert!(!m.check(&who("dev", &["sparkgate-users"]), Action::View, Some(other)).allowed);
}
