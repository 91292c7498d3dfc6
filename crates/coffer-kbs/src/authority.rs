//! Checking attestation tokens: signature with a trusted authority's key, algorithm, issuer,
//! expiry and not-before, at a time that is an input.

use josekit::jwk::Jwk;
use josekit::jws::alg::ecdsa::EcdsaJwsVerifier;
use josekit::jws::alg::rsassa::RsassaJwsVerifier;
use josekit::jws::{ES384, RS256};
use serde_json::{Map, Value};

/// Why a JWKS document gives no usable authority.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JwksError {
    /// No `keys` array.
    #[error("JWKS has no keys list")]
    NoKeysList,
    /// A member of `keys` is not a JSON object.
    #[error("a JWKS key is not an object")]
    KeyNotObject,
    /// A member of `keys` is not a JWK.
    #[error("a JWKS key is not a JWK: {0}")]
    Jwk(#[source] josekit::JoseError),
    /// `keys` is empty.
    #[error("JWKS has no keys")]
    Empty,
}

/// Why a token is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// Not a JWS compact serialisation.
    #[error("token is malformed: {0}")]
    Malformed(String),
    /// `alg` is not RS256 or ES384 (`none` included).
    #[error("token algorithm '{0}' is not accepted (RS256, ES384)")]
    Algorithm(String),
    /// `iss` is not a trusted authority.
    #[error("token issuer '{0}' is not a trusted authority")]
    UntrustedIssuer(String),
    /// No key of the authority has the token's `kid`.
    #[error("no key '{kid}' for issuer {issuer}")]
    UnknownKey {
        /// The issuer.
        issuer: String,
        /// The key id.
        kid: String,
    },
    /// The signature does not verify.
    #[error("token signature does not verify")]
    Signature,
    /// Expired.
    #[error("token expired at {exp} (now {now})")]
    Expired {
        /// exp claim.
        exp: u64,
        /// verification time.
        now: u64,
    },
    /// Not yet valid.
    #[error("token is not valid before {nbf} (now {now})")]
    NotYetValid {
        /// nbf claim.
        nbf: u64,
        /// verification time.
        now: u64,
    },
}

/// A trusted token issuer and its keys.
#[derive(Clone, Debug)]
pub struct Authority {
    /// `iss` value (compared without a trailing slash).
    pub issuer: String,
    keys: Vec<AuthorityKey>,
}

/// One JWKS key, with its verifiers built once: josekit builds a verifier through OpenSSL 3's DER
/// decoder (~100 us), which per token would cost more than the RS256 check itself.
#[derive(Clone, Debug)]
struct AuthorityKey {
    kid: Option<String>,
    rs256: Option<RsassaJwsVerifier>,
    es384: Option<EcdsaJwsVerifier>,
}

impl Authority {
    /// From a JWKS document.
    pub fn from_jwks(issuer: &str, jwks: &Value) -> Result<Self, JwksError> {
        let keys = jwks
            .get("keys")
            .and_then(Value::as_array)
            .ok_or(JwksError::NoKeysList)?
            .iter()
            .map(|k| {
                let m = k.as_object().cloned().ok_or(JwksError::KeyNotObject)?;
                let jwk = Jwk::from_map(m).map_err(JwksError::Jwk)?;
                Ok(AuthorityKey {
                    kid: jwk.key_id().map(str::to_string),
                    rs256: RS256.verifier_from_jwk(&jwk).ok(),
                    es384: ES384.verifier_from_jwk(&jwk).ok(),
                })
            })
            .collect::<Result<Vec<_>, JwksError>>()?;
        if keys.is_empty() {
            return Err(JwksError::Empty);
        }
        Ok(Authority {
            issuer: issuer.trim_end_matches('/').to_string(),
            keys,
        })
    }
}

/// The set of trusted authorities.
#[derive(Clone, Debug, Default)]
pub struct Trust {
    authorities: Vec<Authority>,
}

fn b64json(part: &str, what: &str) -> Result<Map<String, Value>, TokenError> {
    let bytes = crate::decode_b64url(part)
        .map_err(|e| TokenError::Malformed(format!("{what} is not base64url: {e}")))?;
    let v: Value = serde_json::from_slice(&bytes)
        .map_err(|e| TokenError::Malformed(format!("{what} is not JSON: {e}")))?;
    v.as_object()
        .cloned()
        .ok_or_else(|| TokenError::Malformed(format!("{what} is not a JSON object")))
}

impl Trust {
    /// Trust these authorities.
    pub fn new(authorities: Vec<Authority>) -> Self {
        Trust { authorities }
    }

    /// Add one.
    pub fn add(&mut self, a: Authority) {
        self.authorities.push(a);
    }

    /// Verify `token` at `now`; returns (issuer, claims).
    pub fn verify(
        &self,
        token: &str,
        now: u64,
    ) -> Result<(String, Map<String, Value>), TokenError> {
        let parts: Vec<&str> = token.trim().split('.').collect();
        if parts.len() != 3 {
            return Err(TokenError::Malformed(format!(
                "expected 3 parts, got {}",
                parts.len()
            )));
        }
        let header = b64json(parts[0], "header")?;
        let alg = header
            .get("alg")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if alg != "RS256" && alg != "ES384" {
            return Err(TokenError::Algorithm(alg));
        }
        let unverified = b64json(parts[1], "payload")?;
        let issuer = unverified
            .get("iss")
            .and_then(Value::as_str)
            .unwrap_or("")
            .trim_end_matches('/')
            .to_string();
        let authority = self
            .authorities
            .iter()
            .find(|a| a.issuer == issuer)
            .ok_or_else(|| TokenError::UntrustedIssuer(issuer.clone()))?;
        let kid = header.get("kid").and_then(Value::as_str).unwrap_or("");
        let candidates: Vec<&AuthorityKey> = authority
            .keys
            .iter()
            .filter(|k| kid.is_empty() || k.kid.as_deref() == Some(kid))
            .collect();
        if candidates.is_empty() {
            return Err(TokenError::UnknownKey {
                issuer,
                kid: kid.into(),
            });
        }
        let token = token.trim();
        let verified = candidates.iter().find_map(|k| {
            let payload = match alg.as_str() {
                "RS256" => josekit::jwt::decode_with_verifier(token, k.rs256.as_ref()?),
                _ => josekit::jwt::decode_with_verifier(token, k.es384.as_ref()?),
            };
            payload.ok().map(|(p, _)| p)
        });
        let claims: Map<String, Value> = verified.ok_or(TokenError::Signature)?.into();
        let num = |k: &str| claims.get(k).and_then(Value::as_u64);
        let exp = num("exp").ok_or_else(|| TokenError::Malformed("no exp claim".into()))?;
        if now >= exp {
            return Err(TokenError::Expired { exp, now });
        }
        if let Some(nbf) = num("nbf") {
            if now < nbf {
                return Err(TokenError::NotYetValid { nbf, now });
            }
        }
        Ok((issuer, claims))
    }
}
