//! The key broker: keys kept in SQLite under a master key, release policies in Azure Key Vault's
//! grammar, attestation tokens checked against trusted authorities, and keys released wrapped to
//! the TEE's ephemeral RSA key (JWE compact, RSA-OAEP-256 + A256GCM).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod authority;
mod group_commit;
mod policy;
mod store;
mod wrap;

pub use authority::{Authority, JwksError, TokenError, Trust};
pub use policy::{Denied, PolicyError, ReleasePolicy, Unmet};
pub use store::{
    audit_text, AuditEntry, KeyInfo, KeyKind, Store, StoreError, AUDIT_MAX_ISSUER, AUDIT_MAX_KEY,
    AUDIT_MAX_REASON,
};
pub use wrap::{key_jwk, wrap_for_token, WrapError, Wrapped};

/// base64url as JOSE writes it (no padding; a stray `=` tolerated).
pub(crate) fn decode_b64url(s: &str) -> Result<Vec<u8>, base64::DecodeError> {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(s.trim_end_matches('='))
}
