use super::directory::first_rdn_value;
use super::throttle::Throttle;
use super::*;
use axum::http::Request;

fn parts(authorization: &[&str]) -> Parts {
    let mut b = Request::builder();
    for value in authorization {
        b = b.header(AUTHORIZATION, *value);
    }
    b.body(()).unwrap().into_parts().0
}

fn basic(user_password: &str) -> String {
    format!("Basic {}", STANDARD.encode(user_password))
}

#[test]
fn basic_credentials_are_read_and_malformed_ones_refused_without_echoing_them() {
    assert!(basic_credentials(&parts(&[])).is_none());
    assert!(basic_credentials(&parts(&["Bearer abc"])).is_none());
    let (user, password) = basic_credentials(&parts(&[&basic("alice:pa:ss")])).unwrap().unwrap();
    assert_eq!((user.as_str(), password.expose().as_str()), ("alice", "pa:ss"));
    // The scheme is case-insensitive; the first Basic header counts.
    let (user, _) =
        basic_credentials(&parts(&["Negotiate xyz", &basic("bob:x").replace("Basic", "bAsIc")])).unwrap().unwrap();
    assert_eq!(user, "bob");
    let secret = "hunter2-secret";
    for bad in [
        "Basic !!!notbase64".to_string(),
        basic(&format!("alice{secret}")),
        format!("Basic {}", STANDARD.encode([0xff, 0xfe, b':', b'x'])),
        format!("Basic {}", STANDARD.encode(format!("alice:{}", "x".repeat(5000)))),
    ] {
        let reason = basic_credentials(&parts(&[&bad])).unwrap().unwrap_err();
        assert!(!reason.contains(secret) && !reason.contains("alice"), "{reason}");
    }
}

fn addr(ip: &str) -> Option<AddrKey> {
    Some(AddrKey::of(ip.parse().unwrap()))
}

#[test]
fn a_name_is_locked_after_max_failures_until_its_window_ends() {
    let window = Duration::from_secs(300);
    let mut t = Throttle::new(3, 100, window);
    let start = Instant::now();
    for i in 0..3 {
        // Each failure from another address: the name alone locks.
        let _failed = t.attempt(Some("alice"), addr(&format!("192.0.2.{}", 10 + i)), start).unwrap();
    }
    let retry = t.attempt(Some("alice"), addr("198.51.100.7"), start + Duration::from_secs(60)).unwrap_err();
    assert_eq!(retry, Duration::from_secs(240));
    // Other names are not affected.
    assert!(t.attempt(Some("bob"), addr("198.51.100.7"), start).is_ok());
    // The window ends: free again, and counting starts afresh.
    let _failed = t.attempt(Some("alice"), None, start + window).unwrap();
    assert!(t.attempt(Some("alice"), None, start + window).is_ok());
}

#[test]
fn attempts_under_way_count_so_parallel_guesses_cannot_pass_the_limit() {
    // Before the fix, failures were counted when the directory answered: 100 guesses sent at
    // once all reached it.
    let mut t = Throttle::new(5, 100, Duration::from_secs(300));
    let now = Instant::now();
    let in_flight: Vec<_> = (0..100).filter_map(|_| t.attempt(Some("bob"), addr("192.0.2.1"), now).ok()).collect();
    assert_eq!(in_flight.len(), 5);
    // Attempts the directory could not judge are given back; a success clears the name.
    let mut in_flight = in_flight.into_iter();
    t.give_back(in_flight.next().unwrap());
    assert!(t.attempt(Some("bob"), None, now).is_ok(), "one given back, one more allowed");
    assert!(t.attempt(Some("bob"), None, now).is_err());
    t.succeed(in_flight.next().unwrap());
    assert!(t.attempt(Some("bob"), None, now).is_ok());
}

#[test]
fn an_address_is_locked_whatever_names_it_tries_and_success_does_not_unlock_it() {
    let mut t = Throttle::new(100, 3, Duration::from_secs(60));
    let now = Instant::now();
    let _a = t.attempt(Some("a"), addr("192.0.2.1"), now).unwrap();
    let good = t.attempt(Some("carol"), addr("192.0.2.1"), now).unwrap();
    // Names that are not user names count against the address too.
    let _c = t.attempt(None, addr("192.0.2.1"), now).unwrap();
    assert!(t.attempt(Some("dave"), addr("192.0.2.1"), now).is_err());
    // carol's success gives back only her own attempt.
    t.succeed(good);
    let _d = t.attempt(Some("dave"), addr("192.0.2.1"), now).unwrap();
    assert!(t.attempt(Some("erin"), addr("192.0.2.1"), now).is_err());
    // Another address may still log in; an IPv6 client counts by its /64.
    assert!(t.attempt(Some("carol"), addr("192.0.2.2"), now).is_ok());
    for host in 1..=3 {
        let _f = t.attempt(Some(&format!("u{host}")), addr(&format!("2001:db8:1:2::{host}")), now).unwrap();
    }
    assert!(t.attempt(Some("dave"), addr("2001:db8:1:2::99"), now).is_err());
    assert!(t.attempt(Some("dave"), addr("2001:db8:1:3::1"), now).is_ok());
}

#[test]
fn retry_after_is_rounded_up() {
    let secs = |d: Duration| match throttled(d) {
        AuthOutcome::Failed(ApiError::TooManyRequests { retry_after, .. }) => retry_after,
        other => panic!("{other:?}"),
    };
    assert_eq!(secs(Duration::from_millis(3700)), 4);
    assert_eq!(secs(Duration::from_secs(3)), 3);
    assert_eq!(secs(Duration::from_millis(10)), 1);
}

#[test]
fn group_names_are_the_first_rdn_value_of_plain_dns_only() {
    assert_eq!(first_rdn_value("cn=analysts,ou=groups,dc=example,dc=org").as_deref(), Some("analysts"));
    assert_eq!(first_rdn_value("CN=Ops Team,OU=Groups").as_deref(), Some("Ops Team"));
    assert_eq!(first_rdn_value("cn=a\\,b,ou=groups"), None);
    assert_eq!(first_rdn_value("cn=a+uid=b,ou=groups"), None);
    assert_eq!(first_rdn_value("cn=,ou=groups"), None);
    assert_eq!(first_rdn_value("nonsense"), None);
}

#[test]
fn ldap_cookies_say_how_the_user_logged_in() {
    let signer = CookieSigner::with_key([7u8; 32], Duration::from_secs(60));
    let now = SystemTime::now();
    let ldap = Principal { name: "alice".into(), groups: vec!["analysts".into()], method: AuthMethod::Ldap };
    let back = signer.verify(&signer.sign(&ldap, now).unwrap(), now).unwrap();
    // A cookie the gateway itself would refuse (very many groups) is not issued.
    let crowd = Principal { groups: (0..400).map(|i| format!("group-number-{i}")).collect(), ..ldap.clone() };
    assert!(matches!(signer.sign(&crowd, now), Err(crate::auth::cookie::CookieError::TooLarge)));
    assert_eq!(back.method, AuthMethod::LdapCookie);
    assert_eq!((back.name.as_str(), back.groups.clone()), ("alice", vec!["analysts".to_string()]));
    let spnego = Principal { method: AuthMethod::Spnego, ..ldap };
    assert_eq!(signer.verify(&signer.sign(&spnego, now).unwrap(), now).unwrap().method, AuthMethod::SpnegoCookie);
}
