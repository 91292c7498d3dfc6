//! The policy carried by a Pod annotation, as a containerd runtime (the shim) receives it.
//!
//! `coffer.dev/policy` holds the Rego text either as plain standard base64 (padded), or, behind
//! the marker `gzip:`, as the base64 of its gzip compression (Kubernetes caps a Pod's annotations
//! at 256 KiB in all). HOST_DATA is the SHA-256 of the Rego text itself, never of the annotation,
//! so the same policy gives the same HOST_DATA through `coffer run --policy` and through the shim.

use std::io::Read as _;

use base64::Engine as _;

/// The annotation that carries a group's policy.
pub const POLICY_ANNOTATION: &str = "coffer.dev/policy";
/// Marker before the base64 of a gzip-compressed policy.
pub const GZIP_MARKER: &str = "gzip:";
/// Largest policy accepted (decompressed), far above any generated one.
pub const MAX_POLICY: usize = 4 << 20;

/// Why an annotation does not hold a policy.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum AnnotationError {
    /// No annotation at all.
    #[error(
        "no policy: the annotation {POLICY_ANNOTATION} is missing (coffer policy gen --annotate POD.yaml adds it)"
    )]
    Missing,
    /// Not base64.
    #[error("annotation {POLICY_ANNOTATION}: not base64: {0}")]
    Base64(String),
    /// `gzip:` but not a gzip stream.
    #[error("annotation {POLICY_ANNOTATION}: not a gzip stream after '{GZIP_MARKER}': {0}")]
    Gzip(String),
    /// Larger than [`MAX_POLICY`].
    #[error("annotation {POLICY_ANNOTATION}: the policy exceeds {MAX_POLICY} bytes")]
    TooLarge,
    /// Not UTF-8 text.
    #[error("annotation {POLICY_ANNOTATION}: the policy is not UTF-8 text")]
    NotText,
}

/// The annotation's value for `policy` (gzip-compressed when `gzip`).
pub fn encode(policy: &[u8], gzip: bool) -> String {
    let b64 = base64::engine::general_purpose::STANDARD;
    if !gzip {
        return b64.encode(policy);
    }
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    // Writing to a Vec cannot fail.
    let _ = std::io::Write::write_all(&mut enc, policy);
    let bytes = enc.finish().unwrap_or_default();
    format!("{GZIP_MARKER}{}", b64.encode(bytes))
}

/// The policy's exact bytes from the annotation's value (`None`: no annotation).
pub fn decode(value: Option<&str>) -> Result<Vec<u8>, AnnotationError> {
    let value = value.ok_or(AnnotationError::Missing)?.trim();
    let b64 = base64::engine::general_purpose::STANDARD;
    let (gzip, text) = match value.strip_prefix(GZIP_MARKER) {
        Some(rest) => (true, rest),
        None => (false, value),
    };
    if text.len() / 4 * 3 > MAX_POLICY + 3 {
        return Err(AnnotationError::TooLarge);
    }
    let raw = b64
        .decode(text)
        .map_err(|e| AnnotationError::Base64(e.to_string()))?;
    let policy = if gzip {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .take(MAX_POLICY as u64 + 1)
            .read_to_end(&mut out)
            .map_err(|e| AnnotationError::Gzip(e.to_string()))?;
        out
    } else {
        raw
    };
    if policy.len() > MAX_POLICY {
        return Err(AnnotationError::TooLarge);
    }
    if std::str::from_utf8(&policy).is_err() {
        return Err(AnnotationError::NotText);
    }
    Ok(policy)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_forms_round_trip_to_the_same_bytes() {
        let policy = b"package policy\napi_version := \"0.10.0\"\n".repeat(50);
        let plain = encode(&policy, false);
        let gz = encode(&policy, true);
        assert!(gz.starts_with(GZIP_MARKER) && gz.len() < plain.len());
        assert_eq!(decode(Some(&plain)).unwrap(), policy);
        assert_eq!(decode(Some(&gz)).unwrap(), policy);
    }

    #[test]
    fn bad_values_are_refused_by_name() {
        assert_eq!(decode(None), Err(AnnotationError::Missing));
        assert!(matches!(
            decode(Some("not base64!")),
            Err(AnnotationError::Base64(_))
        ));
        let not_gzip = format!("{GZIP_MARKER}{}", encode(b"plain", false));
        assert!(matches!(
            decode(Some(&not_gzip)),
            Err(AnnotationError::Gzip(_))
        ));
        assert_eq!(
            decode(Some(&encode(&[0xff, 0xfe], false))),
            Err(AnnotationError::NotText)
        );
        let bomb = encode(&vec![b'a'; MAX_POLICY + 1], true);
        assert_eq!(decode(Some(&bomb)), Err(AnnotationError::TooLarge));
    }
}
