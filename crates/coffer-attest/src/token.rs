//! The token signing key and JWT issuance.

use josekit::jwk::alg::rsa::RsaKeyPair;
use josekit::jwk::{Jwk, KeyPair as _};
use josekit::jws::{JwsHeader, RS256};
use josekit::jwt::{self, JwtPayload};
use serde_json::{json, Map, Value};

/// Why a signing key could not be loaded or a token could not be signed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SigningError {
    /// The key is not a PKCS#8 PEM RSA private key.
    #[error("token signing key: {0}")]
    Key(josekit::JoseError),
    /// The public JWK lacks a member its thumbprint needs.
    #[error("token signing key: JWK has no '{0}'")]
    JwkMember(&'static str),
    /// OpenSSL failed (key generation, randomness).
    #[error("crypto backend: {0}")]
    Crypto(#[from] openssl::error::ErrorStack),
    /// The claims or header could not be encoded and signed.
    #[error("{0}")]
    Encode(josekit::JoseError),
}

/// Signs tokens (RS256) for one issuer.
pub struct TokenSigner {
    issuer: String,
    kid: String,
    signer: josekit::jws::alg::rsassa::RsassaJwsSigner,
    public_jwk: Jwk,
    lifetime: u64,
}

impl TokenSigner {
    /// From a PKCS#8 PEM RSA private key.
    pub fn from_pem(pem: &[u8], issuer: &str, lifetime: u64) -> Result<Self, SigningError> {
        let pair = RsaKeyPair::from_pem(pem).map_err(SigningError::Key)?;
        let mut public_jwk = pair.to_jwk_public_key();
        let kid = jwk_thumbprint(&public_jwk)?;
        public_jwk.set_key_id(&kid);
        public_jwk.set_algorithm("RS256");
        public_jwk.set_key_use("sig");
        let signer = RS256.signer_from_pem(pem).map_err(SigningError::Key)?;
        Ok(TokenSigner {
            issuer: issuer.trim_end_matches('/').to_string(),
            kid,
            signer,
            public_jwk,
            lifetime,
        })
    }

    /// A new RSA-2048 key as PKCS#8 PEM.
    pub fn generate_pem() -> Result<Vec<u8>, SigningError> {
        let rsa = openssl::rsa::Rsa::generate(2048)?;
        let pkey = openssl::pkey::PKey::from_rsa(rsa)?;
        Ok(pkey.private_key_to_pem_pkcs8()?)
    }

    /// The issuer (`iss`).
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The key id (`kid`): the RFC 7638 thumbprint of the public key.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The JWKS document served at `/certs`.
    pub fn jwks(&self) -> Value {
        json!({ "keys": [Value::Object(self.public_jwk.as_ref().clone())] })
    }

    /// The OpenID Provider metadata served at `/.well-known/openid-configuration`.
    pub fn openid_configuration(&self) -> Value {
        json!({
            "issuer": self.issuer,
            "jwks_uri": format!("{}/certs", self.issuer),
            "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["token"],
            "claims_supported": ["x-ms-attestation-type", "x-ms-sevsnpvm-hostdata", "x-ms-sevsnpvm-launchmeasurement", "x-ms-sgx-mrenclave", "x-ms-sgx-mrsigner", "tdx_mrtd", "attester_tcb_status", "x-ms-runtime", "x-coffer-tee"],
        })
    }

    /// Sign `claims` at `now`, adding iss, iat, nbf, exp and jti.
    pub fn sign(&self, mut claims: Map<String, Value>, now: u64) -> Result<String, SigningError> {
        let mut jti = [0u8; 32];
        openssl::rand::rand_bytes(&mut jti)?;
        claims.insert("iss".into(), json!(self.issuer));
        claims.insert("iat".into(), json!(now));
        claims.insert("nbf".into(), json!(now));
        claims.insert("exp".into(), json!(now + self.lifetime));
        claims.insert("jti".into(), json!(hex::encode(jti)));
        let payload = JwtPayload::from_map(claims).map_err(SigningError::Encode)?;
        let mut header = JwsHeader::new();
        header.set_token_type("JWT");
        header.set_key_id(&self.kid);
        header
            .set_claim("jku", Some(json!(format!("{}/certs", self.issuer))))
            .map_err(SigningError::Encode)?;
        jwt::encode_with_signer(&payload, &header, &self.signer).map_err(SigningError::Encode)
    }
}

/// RFC 7638 thumbprint (SHA-256, base64url) of an RSA public JWK.
pub(crate) fn jwk_thumbprint(jwk: &Jwk) -> Result<String, SigningError> {
    let member = |name: &'static str| {
        jwk.parameter(name)
            .and_then(Value::as_str)
            .ok_or(SigningError::JwkMember(name))
    };
    let (n, e) = (member("n")?, member("e")?);
    let canonical = format!(r#"{{"e":"{e}","kty":"RSA","n":"{n}"}}"#);
    use base64::Engine as _;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(openssl::sha::sha256(canonical.as_bytes())))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_non_key_is_a_key_error() {
        let err = TokenSigner::from_pem(b"not a key", "http://x", 60).err();
        assert!(matches!(err, Some(SigningError::Key(_))), "{err:?}");
    }

    #[test]
    fn signed_tokens_carry_the_kid_and_lifetime() {
        let s =
            TokenSigner::from_pem(&TokenSigner::generate_pem().unwrap(), "http://x/", 60).unwrap();
        assert_eq!(s.issuer(), "http://x");
        let jwt = s.sign(Map::new(), 1000).unwrap();
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3);
        let claims: Value = serde_json::from_slice(&crate::decode_b64(parts[1]).unwrap()).unwrap();
        assert_eq!(claims["exp"], 1060);
        assert_eq!(claims["iss"], "http://x");
        let header: Value = serde_json::from_slice(&crate::decode_b64(parts[0]).unwrap()).unwrap();
        assert_eq!(header["kid"], s.kid());
    }
}
