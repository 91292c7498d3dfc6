//! The quote and collateral parsers never panic: on arbitrary bytes, on well-shaped quotes with
//! arbitrary fields, and on real quotes and collateral with bytes mutated.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::OnceLock;

use coffer_dcap::{
    Certificate, Collateral, Crl, PcsFiles, QeIdentity, Quote, SgxExtension, TcbInfo, Verifier,
    VerifyOptions,
};
use coffer_testkit::Need;
use proptest::prelude::*;

/// A quote with the right shape for `version` and arbitrary content.
fn shaped(
    version: u16,
    body_type: u16,
    fill: &[u8],
    auth_len: u16,
    pem: &[u8],
    trailing: usize,
) -> Vec<u8> {
    let mut q = Vec::new();
    q.extend(version.to_le_bytes());
    q.extend(2u16.to_le_bytes());
    let tdx = version == 4 || (version == 5 && body_type != 1);
    q.extend(if tdx { 0x81u32 } else { 0 }.to_le_bytes());
    q.extend([0u8; 4]);
    q.extend(coffer_dcap::quote::INTEL_QE_VENDOR_ID);
    q.extend([0u8; 20]);
    let body_len = match (version, body_type) {
        (3, _) | (5, 1) => 384,
        (5, 3) => 648,
        _ => 584,
    };
    if version == 5 {
        q.extend(body_type.to_le_bytes());
        q.extend((body_len as u32).to_le_bytes());
    }
    q.extend(fill.iter().cycle().take(body_len));
    let mut inner = Vec::new();
    inner.extend(fill.iter().cycle().take(384 + 64));
    inner.extend(auth_len.to_le_bytes());
    inner.extend(fill.iter().cycle().take(auth_len as usize));
    inner.extend(5u16.to_le_bytes());
    inner.extend((pem.len() as u32).to_le_bytes());
    inner.extend(pem);
    let mut sig = Vec::new();
    sig.extend(fill.iter().cycle().take(128));
    if version == 3 {
        sig.extend(inner);
    } else {
        sig.extend(6u16.to_le_bytes());
        sig.extend((inner.len() as u32).to_le_bytes());
        sig.extend(inner);
    }
    q.extend((sig.len() as u32).to_le_bytes());
    q.extend(sig);
    q.extend(vec![0u8; trailing]);
    q
}

struct Real {
    quotes: Vec<Vec<u8>>,
    collateral: Vec<u8>,
}

fn real() -> &'static Real {
    static REAL: OnceLock<Real> = OnceLock::new();
    REAL.get_or_init(|| {
        let dir = coffer_testkit::vectors();
        let quotes = [
            "intel-dcap/dcap-qvl-sgx-v3/quote.bin",
            "intel-dcap/signature-only/trustee_tdx_v4_quote.bin",
            "intel-dcap/signature-only/trustee_tdx_v5_quote.bin",
            "intel-dcap/signature-only/trustee_azure_tdx_v4_quote.bin",
        ]
        .iter()
        .map(|f| coffer_testkit::read(&dir, f))
        .collect();
        Real {
            quotes,
            collateral: coffer_testkit::read(&dir, "intel-dcap/dcap-qvl-sgx-v3/collateral.json"),
        }
    })
}

fn verifier() -> &'static Verifier {
    static V: OnceLock<Verifier> = OnceLock::new();
    V.get_or_init(|| Verifier::intel().unwrap())
}

fn main() -> std::process::ExitCode {
    coffer_testkit::run(coffer_testkit::tests![
        arbitrary_bytes_never_panic;
        shaped_quotes_parse_and_never_panic;
        mutated_real_quotes_never_panic: Need::Vectors;
        mutated_real_collateral_never_panics: Need::Vectors;
    ])
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1500, ..ProptestConfig::default() })]

    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..3000)) {
        let _ = Quote::from_bytes(bytes.clone());
        let _ = Certificate::pem_chain(&bytes, "fuzz");
        let _ = Certificate::from_der_or_pem(&bytes, "fuzz");
        let _ = Crl::decode(&bytes, "fuzz");
        let _ = SgxExtension::from_der(&bytes);
        let _ = Collateral::from_qvl_json(&bytes);
        let _ = Collateral::from_pcs(&PcsFiles {
            tcb_info: &bytes,
            enclave_identity: &bytes,
            tcb_info_issuer_chain: &bytes,
            qe_identity_issuer_chain: &bytes,
            pck_crl: Some(&bytes),
            pck_crl_issuer_chain: Some(&bytes),
            root_ca_crl: Some(&bytes),
        });
        let text = String::from_utf8_lossy(&bytes);
        let _ = TcbInfo::parse(&text);
        let _ = QeIdentity::parse(&text);
    }

    fn shaped_quotes_parse_and_never_panic(
        version in 3u16..=5,
        body_type in 1u16..=3,
        fill in proptest::collection::vec(any::<u8>(), 1..64),
        auth_len in 0u16..100,
        pem in proptest::collection::vec(any::<u8>(), 0..200),
        trailing in 0usize..80,
        cut in any::<prop::sample::Index>(),
    ) {
        let q = shaped(version, body_type, &fill, auth_len, &pem, trailing);
        let parsed = Quote::from_bytes(q.clone());
        prop_assert!(parsed.is_ok(), "{:?}", parsed.err());
        let parsed = parsed.unwrap();
        prop_assert_eq!(parsed.bytes(), &q[..]);
        prop_assert_eq!(parsed.trailing_bytes, trailing);
        prop_assert_eq!(parsed.pck_chain_pem(), &pem[..]);
        prop_assert!(serde_json::to_string(&parsed.fields()).is_ok());
        // Verification of garbage fails without panicking.
        prop_assert!(verifier().verify_evidence(&parsed, 1_750_000_000).is_err());
        // Truncated anywhere inside the signature data: an error, not a panic.
        let end = q.len() - trailing;
        let at = cut.index(end);
        let _ = Quote::from_bytes(q[..at].to_vec());
    }

    fn mutated_real_quotes_never_panic(
        which in any::<prop::sample::Index>(),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in proptest::option::of(any::<prop::sample::Index>()),
    ) {
        let real = real();
        let mut q = real.quotes[which.index(real.quotes.len())].clone();
        for (i, v) in &edits {
            let i = i.index(q.len());
            q[i] = *v;
        }
        if let Some(c) = cut {
            q.truncate(c.index(q.len()));
        }
        if let Ok(parsed) = Quote::from_bytes(q.clone()) {
            let _ = verifier().verify_evidence(&parsed, 1_752_919_277);
            if let Ok(c) = Collateral::from_qvl_json(&real.collateral) {
                let _ = verifier().verify(&parsed, &c, &VerifyOptions { at: 1_752_919_277, check_crl: true });
            }
        }
    }

    fn mutated_real_collateral_never_panics(
        field in 0usize..9,
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let real = real();
        let collateral = &real.collateral;
        let mut json: serde_json::Value = serde_json::from_slice(collateral).unwrap();
        let keys = [
            "pck_crl_issuer_chain", "root_ca_crl", "pck_crl", "tcb_info_issuer_chain", "tcb_info",
            "tcb_info_signature", "qe_identity_issuer_chain", "qe_identity", "qe_identity_signature",
        ];
        let key = keys[field];
        let mut bytes = json[key].as_str().unwrap().as_bytes().to_vec();
        for (i, v) in &edits {
            let i = i.index(bytes.len());
            bytes[i] = *v;
        }
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let _ = TcbInfo::parse(&text);
        let _ = QeIdentity::parse(&text);
        let _ = Crl::decode(&bytes, "fuzz");
        let _ = Certificate::pem_chain(&bytes, "fuzz");
        json[key] = serde_json::Value::String(text);
        let col = serde_json::to_vec(&json).unwrap();
        if let (Ok(c), Ok(q)) = (Collateral::from_qvl_json(&col), Quote::from_bytes(real.quotes[0].clone())) {
            let r = verifier().verify(&q, &c, &VerifyOptions { at: 1_752_919_277, check_crl: true });
            // A changed signed text or signature never verifies.
            // (Signatures are hex: a change of letter case is the same signature.)
            let original = serde_json::from_slice::<serde_json::Value>(collateral).unwrap();
            let norm = |v: &serde_json::Value| {
                let t = v[key].as_str().unwrap().to_string();
                if key.ends_with("signature") { t.to_ascii_lowercase() } else { t }
            };
            if matches!(key, "tcb_info" | "qe_identity" | "tcb_info_signature" | "qe_identity_signature")
                && norm(&json) != norm(&original)
            {
                prop_assert!(r.is_err());
            }
        }
    }
}
