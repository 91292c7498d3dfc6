//! Wrapping a released key to the TEE's ephemeral RSA key.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use josekit::jwk::alg::rsa::RsaKeyPair;
use josekit::jwk::KeyPair as _;
use openssl::bn::BigNum;
use openssl::encrypt::Encrypter;
use openssl::hash::MessageDigest;
use openssl::pkey::PKey;
use openssl::rand::rand_bytes;
use openssl::rsa::{Padding, Rsa};
use openssl::symm::{encrypt_aead, Cipher};
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
            "k": URL_SAFE_NO_PAD.encode(material),
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

/// The first RSA key in `x-ms-runtime.keys` usable for encryption, as (n, e) bytes.
fn wrapping_key(claims: &Map<String, Value>) -> Option<(Vec<u8>, Vec<u8>)> {
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
        let b64 = |name: &str| {
            let s = m.get(name)?.as_str()?;
            crate::decode_b64url(s).ok()
        };
        Some((b64("n")?, b64("e")?))
    })
}

/// A key wrapped to a token's wrapping key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wrapped {
    /// JWE compact (RSA-OAEP-256, A256GCM).
    pub jwe: String,
    /// RFC 7638 thumbprint of the wrapping key, which the signed release response binds.
    pub wrapping_key: String,
}

/// Smallest wrapping modulus accepted: a released key is never weaker-wrapped than RSA-2048.
const MIN_WRAPPING_BITS: u32 = 2048;

/// JWE compact (RSA-OAEP-256, A256GCM) of `key_jwk` to the token's wrapping key.
///
/// Written on OpenSSL directly rather than through josekit's encrypter: josekit builds every RSA
/// key through OpenSSL 3's DER decoder (~100 us, three times the encryption itself), and the
/// wrapping key is new on every release. josekit still decrypts these in the tests.
pub fn wrap_for_token(claims: &Map<String, Value>, key_jwk: &Value) -> Result<Wrapped, WrapError> {
    let (n, e) = wrapping_key(claims).ok_or(WrapError::NoWrappingKey)?;
    let wrapping_key = coffer_release::rsa_thumbprint(&n, &e);
    let crypto = |e: openssl::error::ErrorStack| WrapError::Crypto(e.to_string());
    let rsa = Rsa::from_public_components(
        BigNum::from_slice(&n).map_err(crypto)?,
        BigNum::from_slice(&e).map_err(crypto)?,
    )
    .map_err(crypto)?;
    if rsa.n().num_bits() < MIN_WRAPPING_BITS as i32 {
        return Err(WrapError::Crypto(format!(
            "the wrapping key has {} bits; at least {MIN_WRAPPING_BITS} are required",
            rsa.n().num_bits()
        )));
    }
    let public = PKey::from_rsa(rsa).map_err(crypto)?;

    let mut cek = [0u8; 32];
    let mut iv = [0u8; 12];
    rand_bytes(&mut cek).map_err(crypto)?;
    rand_bytes(&mut iv).map_err(crypto)?;

    let mut enc = Encrypter::new(&public).map_err(crypto)?;
    enc.set_rsa_padding(Padding::PKCS1_OAEP).map_err(crypto)?;
    enc.set_rsa_oaep_md(MessageDigest::sha256())
        .map_err(crypto)?;
    enc.set_rsa_mgf1_md(MessageDigest::sha256())
        .map_err(crypto)?;
    let mut wrapped = vec![0u8; enc.encrypt_len(&cek).map_err(crypto)?];
    let len = enc.encrypt(&cek, &mut wrapped).map_err(crypto)?;
    wrapped.truncate(len);

    let header = URL_SAFE_NO_PAD.encode(
        json!({"alg": "RSA-OAEP-256", "enc": "A256GCM", "cty": "application/jwk+json"}).to_string(),
    );
    let plaintext = serde_json::to_vec(key_jwk).map_err(|e| WrapError::Crypto(e.to_string()))?;
    let mut tag = [0u8; 16];
    let ciphertext = encrypt_aead(
        Cipher::aes_256_gcm(),
        &cek,
        Some(&iv),
        header.as_bytes(),
        &plaintext,
        &mut tag,
    )
    .map_err(crypto)?;
    let jwe = [
        header,
        URL_SAFE_NO_PAD.encode(wrapped),
        URL_SAFE_NO_PAD.encode(iv),
        URL_SAFE_NO_PAD.encode(ciphertext),
        URL_SAFE_NO_PAD.encode(tag),
    ]
    .join(".");
    Ok(Wrapped { jwe, wrapping_key })
}

#[cfg(test)]
mod tests {
    use super::*;
    use josekit::jwe::RSA_OAEP_256;

    fn runtime_claims(bits: u32) -> (Map<String, Value>, RsaKeyPair) {
        let pair = RSA_OAEP_256.generate_key_pair(bits).unwrap();
        let public = Value::Object(pair.to_jwk_public_key().as_ref().clone());
        let claims = json!({"x-ms-runtime": {"keys": [public]}});
        (claims.as_object().unwrap().clone(), pair)
    }

    #[test]
    fn josekit_decrypts_what_is_wrapped() {
        let (claims, pair) = runtime_claims(2048);
        let key = key_jwk(KeyKind::Oct, &[7u8; 32], "k1").unwrap();
        let jwe = wrap_for_token(&claims, &key).unwrap().jwe;
        let decrypter = RSA_OAEP_256
            .decrypter_from_jwk(&pair.to_jwk_private_key())
            .unwrap();
        let (plain, header) = josekit::jwe::deserialize_compact(&jwe, &decrypter).unwrap();
        assert_eq!(serde_json::from_slice::<Value>(&plain).unwrap(), key);
        assert_eq!(header.content_encryption(), Some("A256GCM"));
        assert_eq!(header.content_type(), Some("application/jwk+json"));
    }

    #[test]
    fn tampered_or_misaddressed_jwe_does_not_decrypt() {
        let (claims, pair) = runtime_claims(2048);
        let (_, other) = runtime_claims(2048);
        let key = key_jwk(KeyKind::Oct, &[7u8; 32], "k1").unwrap();
        let jwe = wrap_for_token(&claims, &key).unwrap().jwe;
        let mine = RSA_OAEP_256
            .decrypter_from_jwk(&pair.to_jwk_private_key())
            .unwrap();
        let theirs = RSA_OAEP_256
            .decrypter_from_jwk(&other.to_jwk_private_key())
            .unwrap();
        assert!(josekit::jwe::deserialize_compact(&jwe, &theirs).is_err());
        // Flip one character of each part in turn: header (AAD), wrapped key, IV, ciphertext, tag.
        let parts: Vec<&str> = jwe.split('.').collect();
        for i in 0..parts.len() {
            let mut p: Vec<String> = parts.iter().map(|s| s.to_string()).collect();
            let c = if p[i].starts_with('A') { "B" } else { "A" };
            p[i].replace_range(0..1, c);
            assert!(
                josekit::jwe::deserialize_compact(&p.join("."), &mine).is_err(),
                "part {i} tampered"
            );
        }
    }

    #[test]
    fn weak_or_missing_wrapping_keys_are_refused() {
        let weak = Rsa::generate(1024).unwrap();
        let b64 = |b: &openssl::bn::BigNumRef| URL_SAFE_NO_PAD.encode(b.to_vec());
        let claims = json!({"x-ms-runtime": {"keys": [{"kty": "RSA", "n": b64(weak.n()), "e": b64(weak.e())}]}});
        let claims = claims.as_object().unwrap().clone();
        let key = key_jwk(KeyKind::Oct, &[7u8; 32], "k1").unwrap();
        assert!(matches!(
            wrap_for_token(&claims, &key),
            Err(WrapError::Crypto(m)) if m.contains("1024 bits")
        ));
        let none = json!({"x-ms-runtime": {"keys": [{"kty": "EC", "crv": "P-384"}]}});
        assert_eq!(
            wrap_for_token(none.as_object().unwrap(), &key),
            Err(WrapError::NoWrappingKey)
        );
    }
}
