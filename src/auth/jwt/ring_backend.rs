//! JWT signatures checked with `ring`, the library rustls already links, instead of the
//! RustCrypto backend `jsonwebtoken` ships with: an RS256 check takes a few dozen
//! microseconds instead of hundreds, and RSA keys under 2048 bits are refused outright
//! (`ring` verifies only 2048–8192-bit moduli). Signing (the development tokens of
//! `sparkgate token`, the Spark UI's HS256 tokens), HMAC and the JWK helpers stay on
//! RustCrypto.
//!
//! `jsonwebtoken` picks its backend once per process; [`install`] must run before the first
//! token is decoded or signed, and the gateway calls it where JWT authentication is built.

use jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER as RUST_CRYPTO;
use jsonwebtoken::crypto::{CryptoProvider, JwkUtils, JwtVerifier};
use jsonwebtoken::errors::{Error, ErrorKind};
use jsonwebtoken::signature::{self, Verifier};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, DecodingKeyKind};
use ring::signature as sig;

/// How a key is checked: its bytes as `ring` wants them, and the scheme.
enum Check {
    /// A DER `RSAPublicKey`, an uncompressed EC point, or a raw Ed25519 key.
    Encoded(Vec<u8>, &'static dyn sig::VerificationAlgorithm),
    /// An RSA key given as its modulus and exponent (from a JWKS).
    RsaParts { n: Vec<u8>, e: Vec<u8>, params: &'static sig::RsaParameters },
}

/// One algorithm with one key.
struct RingVerifier {
    algorithm: Algorithm,
    check: Check,
}

impl Verifier<Vec<u8>> for RingVerifier {
    fn verify(&self, msg: &[u8], signature: &Vec<u8>) -> Result<(), signature::Error> {
        let outcome = match &self.check {
            Check::Encoded(key, scheme) => sig::UnparsedPublicKey::new(*scheme, key).verify(msg, signature),
            Check::RsaParts { n, e, params } => sig::RsaPublicKeyComponents { n, e }.verify(params, msg, signature),
        };
        outcome.map_err(|_| signature::Error::new())
    }
}

impl JwtVerifier for RingVerifier {
    fn algorithm(&self) -> Algorithm {
        self.algorithm
    }
}

fn rsa_params(algorithm: Algorithm) -> Option<&'static sig::RsaParameters> {
    Some(match algorithm {
        Algorithm::RS256 => &sig::RSA_PKCS1_2048_8192_SHA256,
        Algorithm::RS384 => &sig::RSA_PKCS1_2048_8192_SHA384,
        Algorithm::RS512 => &sig::RSA_PKCS1_2048_8192_SHA512,
        Algorithm::PS256 => &sig::RSA_PSS_2048_8192_SHA256,
        Algorithm::PS384 => &sig::RSA_PSS_2048_8192_SHA384,
        Algorithm::PS512 => &sig::RSA_PSS_2048_8192_SHA512,
        _ => return None,
    })
}

/// The verifier for `algorithm` with `key`; a key of another family than the algorithm's is
/// refused (a public key never becomes an HMAC secret). HMAC — which the JWT authenticator
/// never accepts, but the process's other users of `jsonwebtoken` may — stays on RustCrypto.
fn verifier(algorithm: &Algorithm, key: &DecodingKey) -> Result<Box<dyn JwtVerifier>, Error> {
    let algorithm = *algorithm;
    if key.family() != algorithm.family() {
        return Err(ErrorKind::InvalidAlgorithm.into());
    }
    if algorithm.family() == AlgorithmFamily::Hmac {
        return (RUST_CRYPTO.verifier_factory)(&algorithm, key);
    }
    let check = match (algorithm, key.kind()) {
        (_, DecodingKeyKind::RsaModulusExponent { n, e }) => {
            let params = rsa_params(algorithm).ok_or(ErrorKind::InvalidAlgorithm)?;
            // Some issuers write `n` with a leading zero byte (a DER habit); ring wants none.
            let minimal = |v: &[u8]| v[v.iter().position(|b| *b != 0).unwrap_or(v.len())..].to_vec();
            Check::RsaParts { n: minimal(n), e: minimal(e), params }
        }
        (Algorithm::ES256, DecodingKeyKind::SecretOrDer(point)) => {
            Check::Encoded(point.clone(), &sig::ECDSA_P256_SHA256_FIXED)
        }
        (Algorithm::ES384, DecodingKeyKind::SecretOrDer(point)) => {
            Check::Encoded(point.clone(), &sig::ECDSA_P384_SHA384_FIXED)
        }
        (Algorithm::EdDSA, DecodingKeyKind::SecretOrDer(raw)) => Check::Encoded(raw.clone(), &sig::ED25519),
        (_, DecodingKeyKind::SecretOrDer(der)) => {
            let params = rsa_params(algorithm).ok_or(ErrorKind::InvalidAlgorithm)?;
            Check::Encoded(der.clone(), params)
        }
    };
    Ok(Box::new(RingVerifier { algorithm, check }))
}

/// The backend: `ring` verifies, RustCrypto signs development tokens and serves the JWK
/// helpers.
pub(crate) static PROVIDER: CryptoProvider = CryptoProvider {
    signer_factory: RUST_CRYPTO.signer_factory,
    verifier_factory: verifier,
    jwk_utils: JwkUtils {
        extract_rsa_public_key_components: RUST_CRYPTO.jwk_utils.extract_rsa_public_key_components,
        extract_ec_public_key_coordinates: RUST_CRYPTO.jwk_utils.extract_ec_public_key_coordinates,
        compute_digest: RUST_CRYPTO.jwk_utils.compute_digest,
    },
};

/// Makes [`PROVIDER`] the process's JWT backend. Idempotent; if something in the process
/// decoded a token before (so `jsonwebtoken` settled on its default), that backend stays and
/// a warning says so — tokens are still verified, only slower.
pub(crate) fn install() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if PROVIDER.install_default().is_err() {
            tracing::warn!("JWT signatures are verified by RustCrypto: another backend was chosen first");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    use jsonwebtoken::EncodingKey;

    /// Signs `msg` with RustCrypto (jsonwebtoken's own signer) and checks it with ring.
    fn round_trip(algorithm: Algorithm, encoding: &EncodingKey, decoding: &DecodingKey) {
        let signer =
            (jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER.signer_factory)(&algorithm, encoding).unwrap();
        let msg = b"header.claims".to_vec();
        let signature = signer.try_sign(&msg).unwrap();
        let check = verifier(&algorithm, decoding).unwrap();
        assert_eq!(check.algorithm(), algorithm);
        check.verify(&msg, &signature).unwrap();
        assert!(check.verify(b"header.claimz", &signature).is_err(), "{algorithm:?}: another message");
        let mut bent = signature.clone();
        bent[3] ^= 1;
        assert!(check.verify(&msg, &bent).is_err(), "{algorithm:?}: a bent signature");
    }

    fn rsa_pair(bits: usize) -> (EncodingKey, DecodingKey, rsa::RsaPublicKey) {
        use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
        let key = rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, bits).unwrap();
        let public = key.to_public_key();
        let encoding = EncodingKey::from_rsa_pem(key.to_pkcs8_pem(LineEnding::LF).unwrap().as_bytes()).unwrap();
        let decoding = DecodingKey::from_rsa_pem(public.to_public_key_pem(LineEnding::LF).unwrap().as_bytes()).unwrap();
        (encoding, decoding, public)
    }

    #[test]
    fn rsa_pkcs1_and_pss_from_pem_and_from_jwks_components() {
        use rsa::traits::PublicKeyParts;
        let (encoding, decoding, public) = rsa_pair(2048);
        let (n, e) =
            (URL_SAFE_NO_PAD.encode(public.n().to_bytes_be()), URL_SAFE_NO_PAD.encode(public.e().to_bytes_be()));
        let components = DecodingKey::from_rsa_components(&n, &e).unwrap();
        let mut padded = vec![0u8];
        padded.extend(public.n().to_bytes_be());
        let padded = DecodingKey::from_rsa_raw_components(&padded, &public.e().to_bytes_be());
        for algorithm in [Algorithm::RS256, Algorithm::RS384, Algorithm::RS512, Algorithm::PS256, Algorithm::PS512] {
            round_trip(algorithm, &encoding, &decoding);
            round_trip(algorithm, &encoding, &components);
            round_trip(algorithm, &encoding, &padded);
        }
    }

    #[test]
    fn ecdsa_and_ed25519() {
        // Keys made by ring (PKCS#8), read the way a deployment's PEM or JWKS would be.
        let rng = ring::rand::SystemRandom::new();
        for (algorithm, signing) in [
            (Algorithm::ES256, &sig::ECDSA_P256_SHA256_FIXED_SIGNING),
            (Algorithm::ES384, &sig::ECDSA_P384_SHA384_FIXED_SIGNING),
        ] {
            let pkcs8 = sig::EcdsaKeyPair::generate_pkcs8(signing, &rng).unwrap();
            let pair = sig::EcdsaKeyPair::from_pkcs8(signing, pkcs8.as_ref(), &rng).unwrap();
            use sig::KeyPair;
            let point = pair.public_key().as_ref();
            let half = (point.len() - 1) / 2;
            let decoding = DecodingKey::from_ec_components(
                &URL_SAFE_NO_PAD.encode(&point[1..1 + half]),
                &URL_SAFE_NO_PAD.encode(&point[1 + half..]),
            )
            .unwrap();
            round_trip(algorithm, &EncodingKey::from_ec_der(pkcs8.as_ref()), &decoding);
        }
        let pkcs8 = sig::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let pair = sig::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        use sig::KeyPair;
        let decoding = DecodingKey::from_ed_der(pair.public_key().as_ref());
        round_trip(Algorithm::EdDSA, &EncodingKey::from_ed_der(pkcs8.as_ref()), &decoding);
    }

    #[test]
    fn refuses_a_key_of_another_family_and_short_rsa_keys() {
        let (encoding, decoding, _) = rsa_pair(2048);
        assert!(verifier(&Algorithm::HS256, &decoding).is_err(), "a public key must never become an HMAC secret");
        // HMAC with a secret (the Spark UI's tokens) is RustCrypto's, and works.
        let secret = b"the spark ui key";
        round_trip(Algorithm::HS256, &EncodingKey::from_secret(secret), &DecodingKey::from_secret(secret));
        assert!(verifier(&Algorithm::ES256, &decoding).is_err(), "an RSA key for ES256");
        assert!(verifier(&Algorithm::EdDSA, &decoding).is_err(), "an RSA key for EdDSA");
        round_trip(Algorithm::RS256, &encoding, &decoding);
        // 1024-bit RSA is below what ring verifies: refused even with a good signature.
        let (encoding, decoding, _) = rsa_pair(1024);
        let signer =
            (jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER.signer_factory)(&Algorithm::RS256, &encoding).unwrap();
        let signature = signer.try_sign(b"m").unwrap();
        assert!(verifier(&Algorithm::RS256, &decoding).unwrap().verify(b"m", &signature).is_err());
    }
}
