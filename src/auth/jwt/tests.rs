use super::*;
use crate::config::{self, Sources};
use base64::Engine;
use jsonwebtoken::{EncodingKey, Header};
use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
use rsa::traits::PublicKeyParts;
use serde_json::json;
use std::sync::OnceLock;

struct TestKey {
    private_pem: String,
    public_pem: String,
    n: String,
    e: String,
}

/// RSA key generation is slow in debug builds: two keys for the whole module.
fn keys() -> &'static [TestKey; 2] {
    static KEYS: OnceLock<[TestKey; 2]> = OnceLock::new();
    KEYS.get_or_init(|| {
        let make = || {
            let key = rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048).unwrap();
            let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
            TestKey {
                private_pem: key.to_pkcs8_pem(LineEnding::LF).unwrap().to_string(),
                public_pem: key.to_public_key().to_public_key_pem(LineEnding::LF).unwrap(),
                n: b64.encode(key.n().to_bytes_be()),
                e: b64.encode(key.e().to_bytes_be()),
            }
        };
        [make(), make()]
    })
}

fn now() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs()
}

fn claims(exp_offset: i64) -> Value {
    json!({
        "sub": "alice", "groups": ["analysts", "etl"], "iss": "sparkgate", "aud": "sparkgate",
        "exp": (now() as i64 + exp_offset), "nbf": now() - 10,
    })
}

fn sign(key: &TestKey, kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = kid.map(str::to_string);
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_rsa_pem(key.private_pem.as_bytes()).unwrap()).unwrap()
}

struct Fixture {
    auth: JwtAuthenticator,
    dir: tempfile::TempDir,
}

fn with_source(write: impl FnOnce(&Path) -> String, extra: &[&str]) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let key_setting = write(dir.path());
    let mut overrides = vec![format!("server.data_dir=\"{}\"", dir.path().join("data").display()), key_setting];
    overrides.push("auth.jwt.reload_interval=\"1ms\"".into());
    overrides.extend(extra.iter().map(|s| s.to_string()));
    let cfg = config::load(&Sources { file: None, env: vec![], overrides }).unwrap();
    Fixture { auth: JwtAuthenticator::from_config(&cfg).unwrap(), dir }
}

fn pem_fixture() -> Fixture {
    with_source(
        |dir| {
            let path = dir.join("pub.pem");
            std::fs::write(&path, &keys()[0].public_pem).unwrap();
            format!("auth.jwt.public_key=\"{}\"", path.display())
        },
        &[],
    )
}

fn jwks(entries: &[(&str, &TestKey)]) -> String {
    let keys: Vec<Value> = entries
        .iter()
        .map(|(kid, k)| json!({"kty": "RSA", "kid": kid, "alg": "RS256", "use": "sig", "n": k.n, "e": k.e}))
        .collect();
    json!({ "keys": keys }).to_string()
}

fn jwks_fixture() -> Fixture {
    with_source(
        |dir| {
            let path = dir.join("keys.jwks");
            std::fs::write(&path, jwks(&[("k1", &keys()[0]), ("k2", &keys()[1])])).unwrap();
            format!("auth.jwt.jwks=\"{}\"", path.display())
        },
        &[],
    )
}

#[test]
fn a_valid_token_gives_user_and_groups() {
    let f = pem_fixture();
    let p = f.auth.verify(&sign(&keys()[0], None, &claims(300))).unwrap();
    assert_eq!(p.name, "alice");
    assert_eq!(p.groups, vec!["analysts", "etl"]);
    assert_eq!(p.method, AuthMethod::Jwt);
}

#[test]
fn the_negative_matrix() {
    let f = pem_fixture();
    let k = &keys()[0];
    let reject = |token: &str| f.auth.verify(token).unwrap_err();

    assert!(reject(&sign(k, None, &claims(-3600))).contains("expired"));
    let mut c = claims(300);
    c["nbf"] = json!(now() + 3600);
    assert!(reject(&sign(k, None, &c)).contains("not valid yet"));
    let mut c = claims(300);
    c["aud"] = json!("someone-else");
    assert!(reject(&sign(k, None, &c)).contains("audience"));
    let mut c = claims(300);
    c["iss"] = json!("evil");
    assert!(reject(&sign(k, None, &c)).contains("issuer"));
    let mut c = claims(300);
    c.as_object_mut().unwrap().remove("exp");
    assert!(reject(&sign(k, None, &c)).contains("exp"));
    let mut c = claims(300);
    c.as_object_mut().unwrap().remove("sub");
    assert!(reject(&sign(k, None, &c)).contains("user claim"));
    // Signed by a key the gateway does not trust.
    assert!(reject(&sign(&keys()[1], None, &claims(300))).contains("signature"));

    // alg "none": no signature at all.
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let none = format!("{}.{}.", b64.encode(br#"{"alg":"none","typ":"JWT"}"#), b64.encode(claims(300).to_string()));
    assert!(!reject(&none).is_empty());

    // HS256 "signed" with the public key as the HMAC secret (the classic confusion attack).
    let hs = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims(300),
        &EncodingKey::from_secret(k.public_pem.as_bytes()),
    )
    .unwrap();
    assert!(reject(&hs).contains("not accepted"));

    // A valid token whose payload was edited afterwards.
    let good = sign(k, None, &claims(300));
    let parts: Vec<&str> = good.split('.').collect();
    let mut c = claims(300);
    c["sub"] = json!("root");
    let tampered = format!("{}.{}.{}", parts[0], b64.encode(c.to_string()), parts[2]);
    assert!(reject(&tampered).contains("signature"));

    assert!(reject("not-a-jwt").contains("malformed"));
}

#[test]
fn leeway_tolerates_small_clock_skew_only() {
    let f = pem_fixture(); // leeway 30s by default
    assert!(f.auth.verify(&sign(&keys()[0], None, &claims(-10))).is_ok(), "expired 10s ago, inside the leeway");
    assert!(f.auth.verify(&sign(&keys()[0], None, &claims(-120))).is_err());
}

#[test]
fn jwks_keys_are_picked_by_kid_and_reloaded() {
    let f = jwks_fixture();
    assert_eq!(f.auth.verify(&sign(&keys()[0], Some("k1"), &claims(300))).unwrap().name, "alice");
    assert!(f.auth.verify(&sign(&keys()[1], Some("k2"), &claims(300))).is_ok());
    // A kid that is not in the set, and a key presented under the wrong kid.
    assert!(f.auth.verify(&sign(&keys()[0], Some("k9"), &claims(300))).unwrap_err().contains("unknown key"));
    assert!(f.auth.verify(&sign(&keys()[1], Some("k1"), &claims(300))).unwrap_err().contains("signature"));
    // k2 is removed from the JWKS: its tokens stop working without a restart.
    let path = f.dir.path().join("keys.jwks");
    std::fs::write(&path, jwks(&[("k1", &keys()[0])])).unwrap();
    bump_mtime(&path);
    std::thread::sleep(Duration::from_millis(5));
    assert!(f.auth.verify(&sign(&keys()[1], Some("k2"), &claims(300))).unwrap_err().contains("unknown key"));
    assert!(f.auth.verify(&sign(&keys()[0], Some("k1"), &claims(300))).is_ok());
    // A broken file keeps the previous keys.
    std::fs::write(&path, "{ not json").unwrap();
    bump_mtime(&path);
    std::thread::sleep(Duration::from_millis(5));
    assert!(f.auth.verify(&sign(&keys()[0], Some("k1"), &claims(300))).is_ok());
}

fn bump_mtime(path: &Path) {
    let later = SystemTime::now() + Duration::from_secs(2);
    std::fs::File::options().write(true).open(path).unwrap().set_modified(later).unwrap();
}

#[test]
fn groups_may_be_a_comma_separated_string() {
    let f = pem_fixture();
    let mut c = claims(300);
    c["groups"] = json!("a, b,,c");
    assert_eq!(f.auth.verify(&sign(&keys()[0], None, &c)).unwrap().groups, vec!["a", "b", "c"]);
}

#[test]
fn the_header_decides_whether_this_scheme_applies() {
    let f = pem_fixture();
    let parts = |value: Option<&str>| {
        let mut b = axum::http::Request::builder();
        if let Some(v) = value {
            b = b.header("authorization", v);
        }
        b.body(()).unwrap().into_parts().0
    };
    assert!(matches!(f.auth.authenticate(&parts(None), None), AuthOutcome::NotApplicable));
    assert!(matches!(f.auth.authenticate(&parts(Some("Negotiate abc")), None), AuthOutcome::NotApplicable));
    assert!(matches!(f.auth.authenticate(&parts(Some("Bearer junk")), None), AuthOutcome::Rejected(_)));
    let good = format!("Bearer {}", sign(&keys()[0], None, &claims(300)));
    assert!(matches!(f.auth.authenticate(&parts(Some(&good)), None), AuthOutcome::Authenticated { .. }));
}

#[test]
fn development_keys_and_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config::load(&Sources {
        file: None,
        env: vec![],
        overrides: vec![format!("server.data_dir=\"{}\"", dir.path().display())],
    })
    .unwrap();
    let auth = JwtAuthenticator::from_config(&cfg).unwrap();
    let (private, _) = dev_key_paths(dir.path());
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&private).unwrap().permissions().mode() & 0o777, 0o600);
    let token = mint_dev_token(&cfg, "bob", &["ops".into()], Duration::from_secs(60)).unwrap();
    let p = auth.verify(&token).unwrap();
    assert_eq!((p.name.as_str(), p.groups.as_slice()), ("bob", ["ops".to_string()].as_slice()));
}

#[test]
fn verified_tokens_are_remembered_until_exp_and_forgotten_when_the_keys_change() {
    let f = pem_fixture();
    let token = sign(&keys()[0], None, &claims(300));
    assert_eq!(f.auth.verify(&token).unwrap().groups, vec!["analysts", "etl"]);
    assert_eq!(f.auth.verified.len(), 1);
    assert_eq!(f.auth.verify(&token).unwrap().name, "alice", "answered from the cache");
    assert_eq!(f.auth.verified.len(), 1);
    // Past exp but inside the leeway: accepted by the full check, never remembered.
    assert!(f.auth.verify(&sign(&keys()[0], None, &claims(-10))).is_ok());
    assert_eq!(f.auth.verified.len(), 1);
    // A refused token is not remembered either.
    assert!(f.auth.verify(&sign(&keys()[1], None, &claims(300))).is_err());
    assert_eq!(f.auth.verified.len(), 1);
    // The key is rotated: the remembered token of the old key is refused at once.
    let path = f.dir.path().join("pub.pem");
    std::fs::write(&path, &keys()[1].public_pem).unwrap();
    bump_mtime(&path);
    std::thread::sleep(Duration::from_millis(5));
    assert!(f.auth.verify(&token).unwrap_err().contains("signature"));
    assert!(f.auth.verify(&sign(&keys()[1], None, &claims(300))).is_ok());
}

#[test]
fn a_zero_sized_cache_checks_every_signature() {
    let f = with_source(
        |dir| {
            let path = dir.join("pub.pem");
            std::fs::write(&path, &keys()[0].public_pem).unwrap();
            format!("auth.jwt.public_key=\"{}\"", path.display())
        },
        &["auth.jwt.verified_cache_size=0"],
    );
    let token = sign(&keys()[0], None, &claims(300));
    assert!(f.auth.verify(&token).is_ok());
    assert!(f.auth.verify(&token).is_ok());
    assert_eq!(f.auth.verified.len(), 0);
}

#[test]
fn a_key_swapped_in_with_the_same_size_and_mtime_is_still_seen() {
    let f = pem_fixture();
    let path = f.dir.path().join("pub.pem");
    let old = keys()[0].public_pem.clone();
    let new = keys()[1].public_pem.clone();
    assert_eq!(old.len(), new.len(), "two 2048-bit keys in PEM have the same size");
    let token = sign(&keys()[0], None, &claims(300));
    assert!(f.auth.verify(&token).is_ok());
    let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
    std::fs::write(&path, &new).unwrap();
    std::fs::File::options().write(true).open(&path).unwrap().set_modified(mtime).unwrap();
    std::thread::sleep(Duration::from_millis(5));
    assert!(f.auth.verify(&token).unwrap_err().contains("signature"), "the old key's token, even cached");
    assert!(f.auth.verify(&sign(&keys()[1], None, &claims(300))).is_ok());
}
