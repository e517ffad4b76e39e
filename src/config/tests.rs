use super::*;

fn load_str(text: &str, env: &[(&str, &str)], overrides: &[&str]) -> Result<ValidatedConfig, ConfigError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, text).unwrap();
    load(&Sources {
        file: Some(&path),
        env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        overrides: overrides.iter().map(|s| s.to_string()).collect(),
    })
}

#[test]
fn defaults_are_safe() {
    let c = load(&Sources::default()).unwrap();
    assert!(!c.config.server.dangerous_plain_http);
    assert!(!c.config.auth.dangerous_allow_anonymous);
    assert!(c.config.server.bind.ip().is_loopback());
    assert!(c.dangerous_options().is_empty());
    assert_eq!(c.durations.idle_timeout, Some(Duration::from_secs(3600)));
    assert_eq!(c.durations.ttl, None);
}

#[test]
fn unknown_keys_are_all_named() {
    let err = load_str("[server]\nbnid = \"x\"\n[sesions]\nx = 1\n", &[], &[]).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("server.bnid"), "{msg}");
    assert!(msg.contains("sesions"), "{msg}");
}

#[test]
fn layers_override_in_order() {
    let c = load_str(
        "[sessions]\nmax_sessions = 5\nidle_timeout = \"5m\"\n",
        &[("SPARKGATE_SESSIONS__MAX_SESSIONS", "7"), ("SPARKGATE_LOG", "debug")],
        &["sessions.idle_timeout=30s"],
    )
    .unwrap();
    assert_eq!(c.config.sessions.max_sessions, 7);
    assert_eq!(c.durations.idle_timeout, Some(Duration::from_secs(30)));
}

#[test]
fn unknown_env_keys_are_refused() {
    let err = load_str("", &[("SPARKGATE_SESSIONS__MAX_SESIONS", "7")], &[]).unwrap_err();
    assert!(err.to_string().contains("sessions.max_sesions"), "{err}");
}

#[test]
fn every_problem_is_reported_at_once() {
    let err = load_str(
        "[sessions]\nidle_timeout = \"soon\"\nmax_sessions = 0\n[spark]\ndeploy_mode = \"remote\"\n",
        &[],
        &[],
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("sessions.idle_timeout"), "{err}");
    assert!(err.contains("max_sessions"), "{err}");
    assert!(err.contains("deploy_mode"), "{err}");
}

#[test]
fn frames_must_carry_the_largest_statement_and_outputs_have_a_floor() {
    let err = load_str("[server]\nmax_body_bytes = 10485760\n[rpc]\nmax_frame_bytes = 10485760\n", &[], &[])
        .unwrap_err()
        .to_string();
    assert!(err.contains("rpc.max_frame_bytes") && err.contains("server.max_body_bytes"), "{err}");
    let err = load_str("[sessions]\nmax_output_bytes = 10\n", &[], &[]).unwrap_err().to_string();
    assert!(err.contains("sessions.max_output_bytes"), "{err}");
    assert!(load(&Sources::default()).is_ok(), "the defaults fit together");
}

#[test]
fn anonymous_and_plain_http_only_on_loopback() {
    let err = load_str(
        "[server]\nbind = \"0.0.0.0:8998\"\ndangerous_plain_http = true\n[auth]\ndangerous_allow_anonymous = true\n",
        &[],
        &[],
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("dangerous_allow_anonymous"), "{err}");
    assert!(err.contains("dangerous_plain_http"), "{err}");
    let ok = load_str("[auth]\ndangerous_allow_anonymous = true\n", &[], &[]).unwrap();
    assert_eq!(ok.dangerous_options(), vec!["auth.dangerous_allow_anonymous"]);
}

#[test]
fn wrong_types_are_reported() {
    let err = load_str("[sessions]\nmax_sessions = \"many\"\n", &[], &[]).unwrap_err();
    assert!(err.to_string().contains("max_sessions") || err.to_string().contains("invalid type"), "{err}");
}

#[test]
fn shipped_configuration_file_loads_with_safe_defaults() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/sparkgate.toml");
    let c = load(&Sources { file: Some(&path), ..Sources::default() }).unwrap();
    assert!(c.dangerous_options().is_empty());
    assert_eq!(c.config.server.bind.port(), 8998);
}

#[test]
fn quoted_keys_may_contain_dots() {
    let c = load_str("", &[], &["spark.conf.\"spark.ui.enabled\"=\"false\""]).unwrap();
    assert_eq!(c.config.spark.conf["spark.ui.enabled"], "false");
}

#[test]
fn every_example_configuration_loads() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/examples");
    let mut seen = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            load(&Sources { file: Some(&path), ..Sources::default() })
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            seen += 1;
        }
    }
    assert!(seen >= 4);
}

#[test]
fn caps_retention_and_head_limits_are_checked() {
    let c = load(&Sources::default()).unwrap();
    assert_eq!((c.config.rpc.max_pending_handshakes, c.config.rpc.max_pending_handshakes_per_ip), (256, 32));
    assert_eq!((c.config.audit.max_files, c.durations.audit_max_age), (100, None));
    assert_eq!(c.durations.audit_repeat_window, Duration::from_secs(60));
    assert_eq!((c.config.server.max_header_bytes, c.config.server.max_uri_bytes), (65536, 8192));
    let err = load_str(
        "[rpc]\nmax_pending_handshakes_per_ip = 0\n[audit]\nrepeat_window = \"0\"\nmax_age = \"later\"\n\
         [server]\nmax_header_bytes = 100\nmax_uri_bytes = 70000\n",
        &[],
        &[],
    )
    .unwrap_err()
    .to_string();
    for key in [
        "rpc.max_pending_handshakes_per_ip",
        "audit.repeat_window",
        "audit.max_age",
        "server.max_header_bytes",
        "server.max_uri_bytes",
    ] {
        assert!(err.contains(key), "{key}: {err}");
    }
    let c = load_str("[audit]\nmax_files = 0\nmax_age = \"30d\"\n", &[], &[]).unwrap();
    assert_eq!(c.durations.audit_max_age, Some(Duration::from_secs(30 * 86_400)));
}

#[test]
fn the_gateways_kerberos_credentials_reach_local_drivers_only_when_dangerously_allowed() {
    let kerberized = "[spark]\nlaunch_principal = \"sparkgate/gw@EX\"\nlaunch_keytab = \"/etc/sg.keytab\"\n";
    let err = load_str(kerberized, &[], &[]).unwrap_err().to_string();
    assert!(err.contains("spark.dangerous_share_launch_credentials"), "{err}");
    let cluster = load_str(&format!("{kerberized}deploy_mode = \"cluster\"\n"), &[], &[]).unwrap();
    assert!(cluster.dangerous_options().is_empty());
    let shared = load_str(&format!("{kerberized}dangerous_share_launch_credentials = true\n"), &[], &[]).unwrap();
    assert_eq!(shared.dangerous_options(), vec!["spark.dangerous_share_launch_credentials"]);
}

#[test]
fn the_sandbox_is_on_by_default_and_off_only_by_its_dangerous_name() {
    let c = load(&Sources::default()).unwrap();
    assert_eq!(c.config.spark.local_sandbox, "bwrap");
    assert!(!c.config.server.dangerous_run_as_root);
    let err = load_str("[spark]\nlocal_sandbox = \"off\"\n", &[], &[]).unwrap_err().to_string();
    assert!(err.contains("spark.local_sandbox") && err.contains("dangerous_off"), "{err}");
    let err = load_str("[spark]\nlocal_sandbox = \"firejail\"\n", &[], &[]).unwrap_err().to_string();
    assert!(err.contains("spark.local_sandbox must be `bwrap` or `dangerous_off`"), "{err}");
    let err = load_str("[spark]\nsandbox_read_only_paths = [\"opt/hadoop\"]\n", &[], &[]).unwrap_err().to_string();
    assert!(err.contains("spark.sandbox_read_only_paths") && err.contains("absolute"), "{err}");
    let off =
        load_str("[spark]\nlocal_sandbox = \"dangerous_off\"\n[server]\ndangerous_run_as_root = true\n", &[], &[])
            .unwrap();
    assert_eq!(off.dangerous_options(), vec!["server.dangerous_run_as_root", "spark.local_sandbox"]);
}

#[test]
fn ldap_needs_tls_unless_dangerously_plain_and_one_way_to_find_users() {
    let ldap = |rest: &str| format!("[auth]\nmethods = [\"ldap\"]\n[auth.ldap]\n{rest}");
    let pattern = "user_dn_pattern = \"uid={user},ou=people,dc=x\"\n";
    let err = load_str(&ldap(&format!("url = \"ldap://dir:389\"\n{pattern}")), &[], &[]).unwrap_err().to_string();
    assert!(err.contains("auth.ldap.url") && err.contains("clear text"), "{err}");
    for ok in ["url = \"ldaps://dir:636\"\n", "url = \"ldap://dir:389\"\nstart_tls = true\n"] {
        let c = load_str(&ldap(&format!("{ok}{pattern}")), &[], &[]).unwrap();
        assert!(c.dangerous_options().is_empty(), "{ok}");
        assert_eq!(c.durations.ldap_cookie_ttl, Some(Duration::from_secs(600)));
    }
    let plain = load_str(&ldap(&format!("url = \"ldap://dir\"\ndangerous_plain = true\n{pattern}")), &[], &[]).unwrap();
    assert_eq!(plain.dangerous_options(), vec!["auth.ldap.dangerous_plain"]);
    let err = load_str(&ldap("url = \"ldaps://dir\"\n"), &[], &[]).unwrap_err().to_string();
    assert!(err.contains("set user_dn_pattern or user_search_base"), "{err}");
    let err = load_str(&ldap("url = \"ldaps://dir\"\nuser_dn_pattern = \"uid=x,dc=x\"\n"), &[], &[]).unwrap_err();
    assert!(err.to_string().contains("must contain {user}"), "{err}");
    let both = format!("url = \"ldaps://dir\"\n{pattern}user_search_base = \"dc=x\"\n");
    let err = load_str(&ldap(&both), &[], &[]).unwrap_err().to_string();
    assert!(err.contains("exclusive") && err.contains("bind_dn is required"), "{err}");
    let err = load_str(&ldap(&format!("url = \"ldaps://dir\"\n{pattern}bind_dn = \"cn=gw\"\n")), &[], &[]).unwrap_err();
    assert!(err.to_string().contains("bind_dn and bind_password_file go together"), "{err}");
    let err = load_str(&ldap(&format!("url = \"ldaps://dir\"\n{pattern}pasword = \"x\"\n")), &[], &[]).unwrap_err();
    assert!(err.to_string().contains("pasword"), "{err}");
    // Not checked while ldap is not in auth.methods.
    assert!(load_str("[auth.ldap]\nurl = \"ldap://dir\"\n", &[], &[]).unwrap().dangerous_options().is_empty());
}
