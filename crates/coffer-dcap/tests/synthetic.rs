//! A test PKI beside Intel's: the real SGX quote re-certified by a generated root, PCK CA and PCK
//! certificate (carrying the real PCK's SGX extension), and the real TCB info and QE identity
//! texts re-signed, with CRLs made here. It exercises what real Intel material cannot: revoked
//! serials, a chain ending at a root that is not pinned, CRL signatures and windows.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use coffer_dcap::{
    Collateral, Quote, Roots, TcbStatus, Verified, Verifier, VerifyError, VerifyOptions,
};
use coffer_testkit::Need;
use der::asn1::{BitString, ObjectIdentifier};
use der::{Decode, Encode};
use openssl::asn1::{Asn1Integer, Asn1Object, Asn1OctetString, Asn1Time};
use openssl::bn::BigNum;
use openssl::ec::{EcGroup, EcKey};
use openssl::ecdsa::EcdsaSig;
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::x509::extension::BasicConstraints;
use openssl::x509::{X509Builder, X509Extension, X509NameBuilder, X509};

const SGX_NOW: u64 = 1752919277;
const SGX_EXT: &str = "1.2.840.113741.1.13.1";

fn key() -> PKey<Private> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
    PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap()
}

struct Issued {
    cert: X509,
    key: PKey<Private>,
}

fn issue(cn: &str, serial: u32, issuer: Option<&Issued>, ca: bool, ext: Option<&[u8]>) -> Issued {
    let key = key();
    let mut name = X509NameBuilder::new().unwrap();
    name.append_entry_by_text("CN", cn).unwrap();
    name.append_entry_by_text("O", "Coffer test").unwrap();
    let name = name.build();
    let mut b = X509Builder::new().unwrap();
    b.set_version(2).unwrap();
    b.set_serial_number(&Asn1Integer::from_bn(&BigNum::from_u32(serial).unwrap()).unwrap())
        .unwrap();
    b.set_subject_name(&name).unwrap();
    match issuer {
        Some(i) => b.set_issuer_name(i.cert.subject_name()).unwrap(),
        None => b.set_issuer_name(&name).unwrap(),
    }
    b.set_pubkey(&key).unwrap();
    // 2020-01-01 .. 2040-01-01.
    b.set_not_before(&Asn1Time::from_unix(1_577_836_800).unwrap())
        .unwrap();
    b.set_not_after(&Asn1Time::from_unix(2_208_988_800).unwrap())
        .unwrap();
    if ca {
        b.append_extension(BasicConstraints::new().critical().ca().build().unwrap())
            .unwrap();
    }
    if let Some(ext) = ext {
        let oid = Asn1Object::from_str(SGX_EXT).unwrap();
        let value = Asn1OctetString::new_from_bytes(ext).unwrap();
        b.append_extension(X509Extension::new_from_der(&oid, false, &value).unwrap())
            .unwrap();
    }
    let signer = issuer.map(|i| &i.key).unwrap_or(&key);
    b.sign(signer, MessageDigest::sha256()).unwrap();
    Issued {
        cert: b.build(),
        key,
    }
}

fn sign_raw(key: &PKey<Private>, data: &[u8]) -> [u8; 64] {
    let sig = EcdsaSig::sign(&openssl::sha::sha256(data), &key.ec_key().unwrap()).unwrap();
    let mut out = [0u8; 64];
    out[..32].copy_from_slice(&sig.r().to_vec_padded(32).unwrap());
    out[32..].copy_from_slice(&sig.s().to_vec_padded(32).unwrap());
    out
}

fn pem(certs: &[&X509]) -> String {
    certs
        .iter()
        .map(|c| String::from_utf8(c.to_pem().unwrap()).unwrap())
        .collect()
}

/// A CRL by `issuer` listing `serials`, valid `this..next` (Unix seconds).
fn crl(issuer: &Issued, serials: &[u32], this: u64, next: u64) -> Vec<u8> {
    use x509_cert::crl::{CertificateList, RevokedCert, TbsCertList};
    use x509_cert::time::Time;
    let ecdsa = x509_cert::spki::AlgorithmIdentifierOwned {
        oid: ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2"),
        parameters: None,
    };
    let time =
        |t: u64| Time::try_from(std::time::UNIX_EPOCH + std::time::Duration::from_secs(t)).unwrap();
    let issuer_cert = x509_cert::Certificate::from_der(&issuer.cert.to_der().unwrap()).unwrap();
    let revoked: Vec<RevokedCert> = serials
        .iter()
        .map(|s| RevokedCert {
            serial_number: x509_cert::serial_number::SerialNumber::new(&s.to_be_bytes()).unwrap(),
            revocation_date: time(this),
            crl_entry_extensions: None,
        })
        .collect();
    let tbs = TbsCertList {
        version: x509_cert::Version::V2,
        signature: ecdsa.clone(),
        issuer: issuer_cert.tbs_certificate.subject.clone(),
        this_update: time(this),
        next_update: Some(time(next)),
        revoked_certificates: (!revoked.is_empty()).then_some(revoked),
        crl_extensions: None,
    };
    let tbs_der = tbs.to_der().unwrap();
    let sig = EcdsaSig::sign(
        &openssl::sha::sha256(&tbs_der),
        &issuer.key.ec_key().unwrap(),
    )
    .unwrap()
    .to_der()
    .unwrap();
    CertificateList {
        tbs_cert_list: tbs,
        signature_algorithm: ecdsa,
        signature: BitString::from_bytes(&sig).unwrap(),
    }
    .to_der()
    .unwrap()
}

/// Replace the quote's PCK chain and QE report signature (v3 layout).
fn recertify(quote: &[u8], chain_pem: &[u8], leaf_key: &PKey<Private>) -> Vec<u8> {
    let q = Quote::from_bytes(quote.to_vec()).unwrap();
    let qe = q.qe_report_range();
    let pem_start = q.pck_chain_pem().as_ptr() as usize - q.bytes().as_ptr() as usize;
    let mut out = quote[..pem_start - 4].to_vec();
    out[qe.end..qe.end + 64].copy_from_slice(&sign_raw(leaf_key, &quote[qe.clone()]));
    out.extend((chain_pem.len() as u32).to_le_bytes());
    out.extend(chain_pem);
    let signed_end = q.signed_range().end;
    let sig_len = (out.len() - signed_end - 4) as u32;
    out[signed_end..signed_end + 4].copy_from_slice(&sig_len.to_le_bytes());
    out
}

struct World {
    root: Issued,
    pck_ca: Issued,
    pck: Issued,
    signing: Issued,
    quote: Vec<u8>,
    collateral: serde_json::Value,
}

const PCK_CA_SERIAL: u32 = 0x20;
const PCK_SERIAL: u32 = 0x300;

fn world() -> World {
    let dir = coffer_testkit::vectors();
    let quote = coffer_testkit::read(&dir, "intel-dcap/dcap-qvl-sgx-v3/quote.bin");
    let collateral: serde_json::Value = serde_json::from_slice(&coffer_testkit::read(
        &dir,
        "intel-dcap/dcap-qvl-sgx-v3/collateral.json",
    ))
    .unwrap();
    // The real PCK certificate's SGX extension (FMSPC, TCB components, PCE-ID, ...).
    let q = Quote::from_bytes(quote.clone()).unwrap();
    let leaf = &coffer_dcap::Certificate::pem_chain(q.pck_chain_pem(), "real").unwrap()[0];
    let real = x509_cert::Certificate::from_der(leaf.der()).unwrap();
    let ext = real
        .tbs_certificate
        .extensions
        .unwrap()
        .into_iter()
        .find(|e| e.extn_id.to_string() == SGX_EXT)
        .unwrap()
        .extn_value
        .into_bytes();

    let root = issue("Test SGX Root CA", 1, None, true, None);
    let pck_ca = issue(
        "Test SGX PCK Processor CA",
        PCK_CA_SERIAL,
        Some(&root),
        true,
        None,
    );
    let pck = issue(
        "Test SGX PCK Certificate",
        PCK_SERIAL,
        Some(&pck_ca),
        false,
        Some(&ext),
    );
    let signing = issue("Test SGX TCB Signing", 0x21, Some(&root), false, None);
    let chain = pem(&[&pck.cert, &pck_ca.cert, &root.cert]);
    let quote = recertify(&quote, chain.as_bytes(), &pck.key);
    World {
        root,
        pck_ca,
        pck,
        signing,
        quote,
        collateral,
    }
}

impl World {
    /// The real TCB info and QE identity re-signed, CRLs revoking `root_revokes` / `pck_revokes`.
    fn collateral(
        &self,
        root_revokes: &[u32],
        pck_revokes: &[u32],
        crl_window: (u64, u64),
    ) -> Vec<u8> {
        let text = |k: &str| self.collateral[k].as_str().unwrap().to_string();
        let signing_chain = pem(&[&self.signing.cert, &self.root.cert]);
        let j = serde_json::json!({
            "pck_crl_issuer_chain": pem(&[&self.pck_ca.cert, &self.root.cert]),
            "root_ca_crl": hex::encode(crl(&self.root, root_revokes, crl_window.0, crl_window.1)),
            "pck_crl": hex::encode(crl(&self.pck_ca, pck_revokes, crl_window.0, crl_window.1)),
            "tcb_info_issuer_chain": signing_chain,
            "tcb_info": text("tcb_info"),
            "tcb_info_signature": hex::encode(sign_raw(&self.signing.key, text("tcb_info").as_bytes())),
            "qe_identity_issuer_chain": signing_chain,
            "qe_identity": text("qe_identity"),
            "qe_identity_signature": hex::encode(sign_raw(&self.signing.key, text("qe_identity").as_bytes())),
        });
        serde_json::to_vec(&j).unwrap()
    }

    fn verifier(&self) -> Verifier {
        let root =
            coffer_dcap::Certificate::from_der(&self.root.cert.to_der().unwrap(), "test root")
                .unwrap();
        Verifier::new(Roots::intel().unwrap().with_root(root).unwrap())
    }
}

const WIDE: (u64, u64) = (1_700_000_000, 1_800_000_000);

fn run(v: &Verifier, quote: &[u8], collateral: &[u8], at: u64) -> Result<Verified, VerifyError> {
    let q = Quote::from_bytes(quote.to_vec())?;
    let c = Collateral::from_qvl_json(collateral)?;
    v.verify(
        &q,
        &c,
        &VerifyOptions {
            at,
            check_crl: true,
        },
    )
}

fn check_of(r: Result<Verified, VerifyError>) -> String {
    match r {
        Ok(_) => "valid".into(),
        Err(e) => format!("{}: {e}", e.check()),
    }
}

fn main() -> std::process::ExitCode {
    coffer_testkit::run(coffer_testkit::tests![
        the_test_pki_verifies_like_intel_s: Need::Vectors;
        a_chain_ending_at_a_root_that_is_not_pinned_is_unknown_root: Need::Vectors, Need::Vectors;
        revoked_serials_are_refused: Need::Vectors;
        crl_signatures_and_windows_are_checked: Need::Vectors;
    ])
}

fn the_test_pki_verifies_like_intel_s() {
    let w = world();
    let v = w.verifier();
    let r = run(
        &v,
        &w.quote,
        &w.collateral(&[0x99], &[0x77, 0x301], WIDE),
        SGX_NOW,
    )
    .unwrap();
    assert_eq!(r.tcb_status, TcbStatus::ConfigurationAndSWHardeningNeeded);
    assert_eq!(r.advisory_ids, ["INTEL-SA-00289", "INTEL-SA-00615"]);
    assert_eq!(r.pck.issuer, "Test SGX PCK Processor CA");
    assert_eq!(r.crl, "checked");
}

fn a_chain_ending_at_a_root_that_is_not_pinned_is_unknown_root() {
    let w = world();
    let intel_only = Verifier::intel().unwrap();
    let col = w.collateral(&[], &[], WIDE);
    assert!(check_of(run(&intel_only, &w.quote, &col, SGX_NOW)).starts_with("unknown-root"));
    // Without the root in the quote: the PCK CA's issuer is no pinned root either.
    let chain = pem(&[&w.pck.cert, &w.pck_ca.cert]);
    let short = recertify(&w.quote, chain.as_bytes(), &w.pck.key);
    assert!(check_of(run(&intel_only, &short, &col, SGX_NOW)).starts_with("unknown-root"));
    assert_eq!(check_of(run(&w.verifier(), &short, &col, SGX_NOW)), "valid");
    // Real quote, collateral signed under the test root: the TCB info chain is unknown to Intel.
    let dir = coffer_testkit::vectors();
    let real = coffer_testkit::read(&dir, "intel-dcap/dcap-qvl-sgx-v3/quote.bin");
    assert!(check_of(run(&intel_only, &real, &col, SGX_NOW)).starts_with("unknown-root"));
    // Trusting both roots: an Intel PCK chain with collateral signed under the test root is not
    // one chain of trust.
    let got = check_of(run(&w.verifier(), &real, &col, SGX_NOW));
    assert!(got.starts_with("chain"), "{got}");
}

fn revoked_serials_are_refused() {
    let w = world();
    let v = w.verifier();
    let cases: [(&[u32], &[u32], &str); 3] = [
        (&[], &[PCK_SERIAL], "crl"),
        (&[PCK_CA_SERIAL], &[], "crl"),
        (&[0x21], &[], "crl"), // the TCB signing certificate
    ];
    for (root_revokes, pck_revokes, check) in cases {
        let col = w.collateral(root_revokes, pck_revokes, WIDE);
        let got = check_of(run(&v, &w.quote, &col, SGX_NOW));
        assert!(
            got.starts_with(check),
            "{root_revokes:?} {pck_revokes:?}: {got}"
        );
    }
    // The same serial under another issuer revokes nothing.
    let col = w.collateral(&[PCK_SERIAL], &[PCK_CA_SERIAL], WIDE);
    assert_eq!(check_of(run(&v, &w.quote, &col, SGX_NOW)), "valid");
    // With --no-crl the revoked PCK passes (and the output says CRLs were skipped).
    let col = w.collateral(&[], &[PCK_SERIAL], WIDE);
    let q = Quote::from_bytes(w.quote.clone()).unwrap();
    let c = Collateral::from_qvl_json(&col).unwrap();
    let r = v
        .verify(
            &q,
            &c,
            &VerifyOptions {
                at: SGX_NOW,
                check_crl: false,
            },
        )
        .unwrap();
    assert_eq!(r.crl, "skipped");
}

fn crl_signatures_and_windows_are_checked() {
    let w = world();
    let v = w.verifier();
    // A PCK CRL signed by the root instead of the PCK CA.
    let mut j: serde_json::Value = serde_json::from_slice(&w.collateral(&[], &[], WIDE)).unwrap();
    let forged = Issued {
        cert: w.pck_ca.cert.clone(),
        key: w.root.key.clone(),
    };
    j["pck_crl"] = hex::encode(crl(&forged, &[], WIDE.0, WIDE.1)).into();
    let got = check_of(run(&v, &w.quote, &serde_json::to_vec(&j).unwrap(), SGX_NOW));
    assert!(got.starts_with("crl"), "{got}");
    // CRLs whose window ends before the verification time, or starts after it.
    for window in [(WIDE.0, SGX_NOW - 1), (SGX_NOW + 1, WIDE.1)] {
        let got = check_of(run(&v, &w.quote, &w.collateral(&[], &[], window), SGX_NOW));
        assert!(got.starts_with("expired"), "{window:?}: {got}");
    }
}
