//! The key broker's release response, signed so that the TEE can tell it came from the broker.
//!
//! A group reaches its key broker only through the host's egress relay, and the host is the
//! attacker: it sees the TEE's ephemeral wrapping key in the attestation request, so without a
//! signature it could answer the release itself with a key of its own choosing, wrapped to that
//! key. The broker therefore signs every release (a JWS, ES256) over the wrapped key (a JWE), the
//! key's name, the request's nonce, the token's `jti` and the thumbprint of the wrapping key; the
//! TEE accepts it only when the signing key's RFC 7638 thumbprint is the one its measured policy
//! names, and every bound field is the one of the request it made.
//!
//! Azure's Key Vault answers a release in the same shape: `{"value": "<JWS>"}`, signed by the
//! vault, reached over TLS. Coffer pins the broker's signing key instead of a TLS certificate: the
//! pin is one short string in the policy, independent of host names and certificate renewals.
//!
//! This crate also parses the endpoints a group may talk to (attestation service, key broker),
//! strictly: they end up in a `CONNECT` line and a `Host` header.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use josekit::jwk::alg::ec::{EcCurve, EcKeyPair};
use josekit::jwk::{Jwk, KeyPair as _};
use josekit::jws::{JwsHeader, ES256};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The JWS `typ` of a release response.
pub const RESPONSE_TYPE: &str = "coffer-release+jws";

/// Largest release response a TEE reads (a JWS over a JWE of an RSA-4096 private JWK is ~10 KiB).
pub const MAX_RESPONSE: usize = 64 * 1024;

/// Why a release response or an endpoint is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReleaseError {
    /// Not a compact JWS of the expected shape.
    #[error("the release response is malformed: {0}")]
    Malformed(String),
    /// Signed by a key other than the one the policy names.
    #[error("the release response is signed by key {found}, not by the key broker the policy names ({pinned})")]
    UnknownSigner {
        /// Thumbprint of the key in the response.
        found: String,
        /// Thumbprint the policy names.
        pinned: String,
    },
    /// The signature does not verify.
    #[error("the release response's signature does not verify")]
    Signature,
    /// A bound field differs from the request's.
    #[error("the release response answers another request: its {field} differs")]
    Mismatch {
        /// `key`, `nonce`, `jti` or `wrapping_key`.
        field: &'static str,
    },
    /// An endpoint that is not a plain `http://host:port`.
    #[error("endpoint '{0}' is not of the form http://HOST[:PORT]")]
    Endpoint(String),
    /// Key or signature machinery failed.
    #[error("release signing: {0}")]
    Crypto(String),
}

fn crypto(e: impl std::fmt::Display) -> ReleaseError {
    ReleaseError::Crypto(e.to_string())
}

/// What the broker signs: the wrapped key and everything that ties it to one request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleasePayload {
    /// The key's name.
    pub key: String,
    /// The nonce of the release request (empty when the request had none).
    pub nonce: String,
    /// The `jti` of the token the release was decided on (empty when it had none).
    pub jti: String,
    /// RFC 7638 thumbprint of the RSA key the key is wrapped to.
    pub wrapping_key: String,
    /// Seconds since the epoch at signing.
    pub iat: u64,
    /// The key, wrapped: JWE compact (RSA-OAEP-256, A256GCM).
    pub value: String,
}

/// The fields a TEE expects in the answer to its own request.
#[derive(Debug, Clone, Copy)]
pub struct Expected<'a> {
    /// The key it asked for.
    pub key: &'a str,
    /// The nonce it sent.
    pub nonce: &'a str,
    /// The `jti` of the token it presented.
    pub jti: &'a str,
    /// Thumbprint of its fresh wrapping key.
    pub wrapping_key: &'a str,
}

/// The broker's signing key (P-256).
pub struct BrokerSigner {
    signer: josekit::jws::alg::ecdsa::EcdsaJwsSigner,
    public: Jwk,
    thumbprint: String,
}

impl BrokerSigner {
    /// A new key as PKCS#8 PEM.
    pub fn generate_pem() -> Result<Vec<u8>, ReleaseError> {
        Ok(EcKeyPair::generate(EcCurve::P256)
            .map_err(crypto)?
            .to_pem_private_key())
    }

    /// From a PKCS#8 PEM P-256 private key.
    pub fn from_pem(pem: &[u8]) -> Result<Self, ReleaseError> {
        let pair = EcKeyPair::from_pem(pem, Some(EcCurve::P256)).map_err(crypto)?;
        let public = pair.to_jwk_public_key();
        let thumbprint = thumbprint(public.as_ref())?;
        let signer = ES256.signer_from_pem(pem).map_err(crypto)?;
        Ok(BrokerSigner {
            signer,
            public,
            thumbprint,
        })
    }

    /// RFC 7638 thumbprint of the public key: what a policy pins.
    pub fn thumbprint(&self) -> &str {
        &self.thumbprint
    }

    /// The public key as a JWK.
    pub fn public_jwk(&self) -> Value {
        Value::Object(self.public.as_ref().clone())
    }

    /// Sign a release: JWS compact with the public key in the header.
    pub fn sign(&self, payload: &ReleasePayload) -> Result<String, ReleaseError> {
        let mut header = JwsHeader::new();
        header.set_token_type(RESPONSE_TYPE);
        header.set_jwk(self.public.clone());
        let bytes = serde_json::to_vec(payload).map_err(crypto)?;
        josekit::jws::serialize_compact(&bytes, &header, &self.signer).map_err(crypto)
    }
}

/// Check a release response against the pinned broker key and the request it answers; returns
/// the wrapped key (JWE compact).
pub fn verify(response: &str, pinned: &str, expect: &Expected<'_>) -> Result<String, ReleaseError> {
    let malformed = |m: &str| ReleaseError::Malformed(m.to_string());
    if response.len() > MAX_RESPONSE {
        return Err(malformed("longer than 64 KiB"));
    }
    let header_b64 = response
        .split('.')
        .next()
        .ok_or_else(|| malformed("not a JWS"))?;
    let header: Map<String, Value> = URL_SAFE_NO_PAD
        .decode(header_b64)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| malformed("the JWS header is not base64url JSON"))?;
    if header.get("alg").and_then(Value::as_str) != Some("ES256") {
        return Err(malformed("the JWS is not ES256"));
    }
    if header.get("typ").and_then(Value::as_str) != Some(RESPONSE_TYPE) {
        return Err(malformed("the JWS is not a release response (typ)"));
    }
    let jwk = header
        .get("jwk")
        .and_then(Value::as_object)
        .ok_or_else(|| malformed("the JWS header carries no jwk"))?;
    let found = thumbprint(jwk)?;
    // Thumbprints are public; constant time anyway, as for every comparison of pinned values.
    if found.len() != pinned.len() || !openssl::memcmp::eq(found.as_bytes(), pinned.as_bytes()) {
        return Err(ReleaseError::UnknownSigner {
            found,
            pinned: pinned.to_string(),
        });
    }
    let jwk = Jwk::from_map(jwk.clone()).map_err(|_| malformed("the header's jwk"))?;
    let verifier = ES256
        .verifier_from_jwk(&jwk)
        .map_err(|_| malformed("the header's jwk is not a P-256 key"))?;
    let (bytes, _) = josekit::jws::deserialize_compact(response, &verifier)
        .map_err(|_| ReleaseError::Signature)?;
    let p: ReleasePayload = serde_json::from_slice(&bytes)
        .map_err(|e| ReleaseError::Malformed(format!("payload: {e}")))?;
    for (field, got, want) in [
        ("key", &p.key, expect.key),
        ("nonce", &p.nonce, expect.nonce),
        ("jti", &p.jti, expect.jti),
        ("wrapping_key", &p.wrapping_key, expect.wrapping_key),
    ] {
        if got != want {
            return Err(ReleaseError::Mismatch { field });
        }
    }
    Ok(p.value)
}

/// RFC 7638 thumbprint (SHA-256, base64url) of an EC or RSA public JWK, over its required members.
pub fn thumbprint(jwk: &Map<String, Value>) -> Result<String, ReleaseError> {
    let member = |k: &str| {
        jwk.get(k)
            .and_then(Value::as_str)
            .filter(|v| {
                v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            })
            .ok_or_else(|| ReleaseError::Malformed(format!("the JWK has no valid '{k}'")))
    };
    let canonical = match jwk.get("kty").and_then(Value::as_str) {
        Some("EC") => format!(
            r#"{{"crv":"{}","kty":"EC","x":"{}","y":"{}"}}"#,
            jwk.get("crv")
                .and_then(Value::as_str)
                .filter(|c| *c == "P-256")
                .ok_or_else(|| ReleaseError::Malformed("the JWK is not on P-256".into()))?,
            member("x")?,
            member("y")?
        ),
        Some("RSA") => format!(
            r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#,
            member("e")?,
            member("n")?
        ),
        _ => {
            return Err(ReleaseError::Malformed(
                "the JWK is neither EC nor RSA".into(),
            ))
        }
    };
    Ok(URL_SAFE_NO_PAD.encode(openssl::sha::sha256(canonical.as_bytes())))
}

/// Thumbprint of an RSA public key given as big-endian bytes (leading zeros ignored, as a JWK
/// encodes them).
pub fn rsa_thumbprint(n: &[u8], e: &[u8]) -> String {
    let strip = |b: &[u8]| {
        let i = b.iter().position(|x| *x != 0).unwrap_or(b.len());
        URL_SAFE_NO_PAD.encode(&b[i..])
    };
    let canonical = format!(r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#, strip(e), strip(n));
    URL_SAFE_NO_PAD.encode(openssl::sha::sha256(canonical.as_bytes()))
}

/// Is `s` shaped like a thumbprint (43 base64url characters: 32 bytes)?
pub fn is_thumbprint(s: &str) -> bool {
    s.len() == 43 && URL_SAFE_NO_PAD.decode(s).is_ok_and(|b| b.len() == 32)
}

/// An endpoint a group may call: `http://HOST[:PORT]`, nothing else (no user info, path, query,
/// whitespace or control characters). HOST is a DNS name or an IPv4 address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    host: String,
    port: u16,
}

impl Endpoint {
    /// Parse strictly; a trailing `/` is allowed.
    pub fn parse(s: &str) -> Result<Self, ReleaseError> {
        let bad = || ReleaseError::Endpoint(s.escape_debug().to_string());
        let rest = s.strip_prefix("http://").ok_or_else(bad)?;
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) => {
                if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(bad());
                }
                (h, p.parse::<u16>().map_err(|_| bad())?)
            }
            None => (rest, 80),
        };
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if port == 0 || host.is_empty() || host.len() > 253 || !host.split('.').all(label_ok) {
            return Err(bad());
        }
        Ok(Endpoint {
            host: host.to_ascii_lowercase(),
            port,
        })
    }

    /// `host:port`, for a `CONNECT` line and the `Host` header.
    pub fn host_port(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "http://{}:{}", self.host, self.port)
    }
}

/// Base64 in any of its four common spellings (URL-safe or standard, padded or not), as Azure's
/// APIs accept them; `None` when it is none of them.
pub fn decode_b64(s: &str) -> Option<Vec<u8>> {
    let s = s.trim();
    let engines = [
        &base64::engine::general_purpose::URL_SAFE,
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        &base64::engine::general_purpose::STANDARD,
        &base64::engine::general_purpose::STANDARD_NO_PAD,
    ];
    engines.iter().find_map(|e| e.decode(s).ok())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn payload() -> ReleasePayload {
        ReleasePayload {
            key: "k1".into(),
            nonce: "n1".into(),
            jti: "j1".into(),
            wrapping_key: "w1".into(),
            iat: 1,
            value: "a.b.c.d.e".into(),
        }
    }

    fn expected() -> Expected<'static> {
        Expected {
            key: "k1",
            nonce: "n1",
            jti: "j1",
            wrapping_key: "w1",
        }
    }

    fn signer() -> BrokerSigner {
        BrokerSigner::from_pem(&BrokerSigner::generate_pem().unwrap()).unwrap()
    }

    #[test]
    fn a_signed_release_verifies_under_its_pinned_key() {
        let s = signer();
        let jws = s.sign(&payload()).unwrap();
        assert_eq!(
            verify(&jws, s.thumbprint(), &expected()).unwrap(),
            "a.b.c.d.e"
        );
    }

    #[test]
    fn another_brokers_key_is_refused() {
        let (s, other) = (signer(), signer());
        let jws = other.sign(&payload()).unwrap();
        assert!(matches!(
            verify(&jws, s.thumbprint(), &expected()),
            Err(ReleaseError::UnknownSigner { .. })
        ));
    }

    #[test]
    fn a_pinned_key_in_the_header_with_another_signature_is_refused() {
        // The attacker copies the broker's public key into the header and signs with its own.
        let (s, other) = (signer(), signer());
        let mut header = JwsHeader::new();
        header.set_token_type(RESPONSE_TYPE);
        header.set_jwk(Jwk::from_map(s.public_jwk().as_object().unwrap().clone()).unwrap());
        let forged = josekit::jws::serialize_compact(
            &serde_json::to_vec(&payload()).unwrap(),
            &header,
            &other.signer,
        )
        .unwrap();
        assert_eq!(
            verify(&forged, s.thumbprint(), &expected()),
            Err(ReleaseError::Signature)
        );
    }

    #[test]
    fn every_bound_field_must_match_the_request() {
        let s = signer();
        let jws = s.sign(&payload()).unwrap();
        for (field, e) in [
            (
                "key",
                Expected {
                    key: "k2",
                    ..expected()
                },
            ),
            (
                "nonce",
                Expected {
                    nonce: "n2",
                    ..expected()
                },
            ),
            (
                "jti",
                Expected {
                    jti: "j2",
                    ..expected()
                },
            ),
            (
                "wrapping_key",
                Expected {
                    wrapping_key: "w2",
                    ..expected()
                },
            ),
        ] {
            assert_eq!(
                verify(&jws, s.thumbprint(), &e),
                Err(ReleaseError::Mismatch { field })
            );
        }
    }

    #[test]
    fn a_tampered_payload_is_refused() {
        let s = signer();
        let jws = s.sign(&payload()).unwrap();
        let parts: Vec<&str> = jws.split('.').collect();
        let mut p = payload();
        p.value = "other".into();
        let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&p).unwrap());
        let tampered = format!("{}.{}.{}", parts[0], body, parts[2]);
        assert_eq!(
            verify(&tampered, s.thumbprint(), &expected()),
            Err(ReleaseError::Signature)
        );
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        let s = signer();
        for r in ["", ".", "a.b.c", "e30.e30.", &"A".repeat(MAX_RESPONSE + 1)] {
            assert!(matches!(
                verify(r, s.thumbprint(), &expected()),
                Err(ReleaseError::Malformed(_))
            ));
        }
    }

    #[test]
    fn rsa_thumbprints_match_rfc7638_example() {
        // RFC 7638 section 3.1.
        let n = "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw";
        let jwk = serde_json::json!({"kty": "RSA", "n": n, "e": "AQAB", "alg": "RS256"});
        let t = thumbprint(jwk.as_object().unwrap()).unwrap();
        assert_eq!(t, "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs");
        let n = URL_SAFE_NO_PAD.decode(n).unwrap();
        let mut padded = vec![0u8];
        padded.extend_from_slice(&n);
        assert_eq!(rsa_thumbprint(&padded, &[1, 0, 1]), t);
        assert!(is_thumbprint(&t));
        assert!(!is_thumbprint("short"));
    }

    #[test]
    fn endpoints_are_parsed_strictly() {
        let e = Endpoint::parse("http://127.0.0.1:7070/").unwrap();
        assert_eq!(e.host_port(), "127.0.0.1:7070");
        assert_eq!(
            Endpoint::parse("http://Broker.example")
                .unwrap()
                .host_port(),
            "broker.example:80"
        );
        for bad in [
            "https://a:1",
            "http://a:1\r\nX: y",
            "http://a:1/path",
            "http://u@a:1",
            "http://a:0",
            "http://a:99999",
            "http://:80",
            "http://a b:1",
            "http://[::1]:80",
            "127.0.0.1:7070",
        ] {
            assert!(Endpoint::parse(bad).is_err(), "{bad:?}");
        }
    }
}
