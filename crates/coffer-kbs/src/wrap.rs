//! Wrapping a released key to the TEE's ephemeral RSA key.

use base64::Engine as _;
use josekit::jwe::{JweHeader, RSA_OAEP_256};
use josekit::jwk::alg::rsa::RsaKeyPair;
use josekit::jwk::{Jwk, KeyPair as _};
use serde_json::{json, Map, Value};

use crate::store::KeyKind;

/// Why a key cannot be wrapped for a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WrapError {
    /// No usable RSA key in `x-ms-runtime.keys`.
    #[error("the token carries no RSA encryption key in x-ms-runtime.keys")]
    NoWrappingKey,
    /// Crypto failure.
    #[error("wrapping: {0}")]
    Crypto(String),
}

/// The key as a JWK (`oct` with `k`, or a private `RSA` JWK).
pub fn key_jwk(kind: KeyKind, material: &[u8], name: &str) -> Result<Value, WrapError> {
    match kind {
        KeyKind::Oct => Ok(json!({
            "kty": "oct",
            "kid": name,
            "k": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(material),
            "key_ops": ["encrypt", "decrypt", "wrapKey", "unwrapKey"],
        })),
        KeyKind::Rsa => {
            let pair =
                RsaKeyPair::from_der(material).map_err(|e| WrapError::Crypto(e.to_string()))?;
            let mut jwk = pair.to_jwk_private_key();
            jwk.set_key_id(name);
            Ok(Value::Object(jwk.as_ref().clone()))
        }
    }
}

/// The first RSA key in `x-ms-runtime.keys` usable for encryption.
fn wrapping_key(claims: &Map<String, Value>) -> Option<Jwk> {
    let keys = claims.get("x-ms-runtime")?.get("keys")?.as_array()?;
    keys.iter().find_map(|k| {
        let m = k.as_object()?;
        if m.get("kty")?.as_str()? != "RSA" {
            return None;
        }
        let ops_ok = m
            .get("key_ops")
            .and_then(Value::as_array)
            .is_some_and(|ops| ops.iter().any(|o| o == "encrypt" || o == "wrapKey"));
        let use_ok = m.get("use").and_then(Value::as_str) == Some("enc");
        let unrestricted = !m.contains_key("key_ops") && !m.contains_key("use");
        if !(ops_ok || use_ok || unrestricted) {
            return None;
        }
        // Only the public part is needed (and trusted): n and e.
        let public = json!({"kty": "RSA", "n": m.get("n")?, "e": m.get("e")?});
        Jwk::from_map(public.as_object()?.clone()).ok()
    })
}

/// JWE compact (RSA-OAEP-256, A256GCM) of `key_jwk` to the token's wrapping key.
pub fn wrap_for_token(claims: &Map<String, Value>, key_jwk: &Value) -> Result<String, WrapError> {
    let jwk = wrapping_key(claims).ok_or(WrapError::NoWrappingKey)?;
    let encrypter = RSA_OAEP_256
        .encrypter_from_jwk(&jwk)
        .map_err(|e| WrapError::Crypto(e.to_string()))?;
    let mut header = JweHeader::new();
    header.set_content_encryption("A256GCM");
    header.set_content_type("application/jwk+json");
    let plaintext = serde_json::to_vec(key_jwk).map_err(|e| WrapError::Crypto(e.to_string()))?;
    josekit::jwe::serialize_compact(&plaintext, &header, &encrypter)
        .map_err(|e| WrapError::Crypto(e.to_string()))
}
