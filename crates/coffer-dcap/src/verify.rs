//! Verification of a quote and its collateral down to a pinned Intel SGX Root CA.
//!
//! Evidence checks, in order: header, quote signature (attestation key over the signed region as
//! received), PCK chain to a pinned root, QE report signature (PCK key), QE report-data binding
//! (SHA-256(attestation key ‖ QE auth data) ‖ 32 zero bytes), certificate validity at the given
//! time. Collateral checks: TCB info and QE identity signatures over their text as received and
//! their signers' chains, CRL signatures and revoked serials (root CRL: intermediates; PCK CRL:
//! the PCK certificate), the window all parts share, FMSPC/PCE-ID, then the TCB levels
//! ([`crate::tcb`]).
//!
//! Why not `dcap-qvl`: its errors are `anyhow` strings (no stable check to report), and it brings
//! its own X.509 and crypto stack (a `webpki` fork, `ring`/RustCrypto, SCALE codecs, `chrono`)
//! beside the workspace's `openssl`, `der` and `x509-cert`. Its algorithm is followed where it
//! agrees with Intel's QVL; where they differ (TDX components 0 and 1 when the module major
//! version is not 0; status convergence) this crate does what Intel's QVL does.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};

use openssl::bn::{BigNum, BigNumContext};
use openssl::ec::{EcGroup, EcKey, EcPoint};
use openssl::ecdsa::EcdsaSig;
use openssl::nid::Nid;
use openssl::pkey::Public;
use serde::Serialize;

use crate::certs::{Certificate, Crl, SgxExtension};
use crate::collateral::{Collateral, QeIdentity, TcbInfo};
use crate::error::{CertError, VerifyError};
use crate::quote::{Quote, QuoteFields, INTEL_QE_VENDOR_ID};
use crate::tcb::{self, Graded, QeMismatch, TcbStatus};
use crate::time::format_rfc3339;

/// Intel SGX Root CA (public; also at Intel's certificate service), PEM.
const INTEL_ROOT_PEM: &str = include_str!("../roots/intel_sgx_root_ca.pem");

/// SHA-256 of the Intel SGX Root CA certificate (DER). The embedded root must match it.
pub const INTEL_ROOT_SHA256: &str =
    "44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3";

/// Which TEE a quote is from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Tee {
    /// Intel SGX enclave.
    #[serde(rename = "sgx")]
    Sgx,
    /// Intel TDX trust domain.
    #[serde(rename = "tdx")]
    Tdx,
}

impl Tee {
    /// The JSON name.
    pub fn name(self) -> &'static str {
        match self {
            Tee::Sgx => "sgx",
            Tee::Tdx => "tdx",
        }
    }
}

/// The roots a verifier accepts, each pinned by its SHA-256.
#[derive(Clone, Debug)]
pub struct Roots {
    roots: Vec<Certificate>,
}

impl Roots {
    /// The Intel SGX Root CA, embedded and checked against [`INTEL_ROOT_SHA256`].
    pub fn intel() -> Result<Self, CertError> {
        let root =
            Certificate::from_der_or_pem(INTEL_ROOT_PEM.as_bytes(), "embedded Intel SGX Root CA")?;
        if hex::encode(root.fingerprint()) != INTEL_ROOT_SHA256 {
            return Err(CertError::Source(
                "embedded Intel SGX Root CA does not match its pinned SHA-256".into(),
            ));
        }
        Roots::empty().with_root(root)
    }

    /// No root at all (every chain fails with `unknown-root`).
    pub fn empty() -> Self {
        Roots { roots: Vec::new() }
    }

    /// Also trust `root` (a self-signed P-256 CA), e.g. a test PKI.
    pub fn with_root(mut self, root: Certificate) -> Result<Self, CertError> {
        if !root.is_self_issued() || !root.is_signed_by(&root) {
            return Err(CertError::Source(format!(
                "{} is not a self-signed ECDSA P-256 root",
                root.subject_cn()
            )));
        }
        self.roots.push(root);
        Ok(self)
    }

    /// The roots.
    pub fn iter(&self) -> std::slice::Iter<'_, Certificate> {
        self.roots.iter()
    }

    fn pinned(&self, cert: &Certificate) -> bool {
        self.roots
            .iter()
            .any(|r| r.fingerprint() == cert.fingerprint())
    }
}

/// Inputs of one verification that are not evidence.
#[derive(Clone, Copy, Debug)]
pub struct VerifyOptions {
    /// Verification time, Unix seconds.
    pub at: u64,
    /// Check CRLs (root CA and PCK). Without, the collateral may lack them, and `Verified.crl`
    /// says "skipped".
    pub check_crl: bool,
}

/// The PCK certificate as the verified output shows it.
#[derive(Clone, Debug, Serialize)]
pub struct PckInfo {
    /// Issuer CN ("Intel SGX PCK Processor CA" or "... Platform CA").
    pub issuer: String,
    /// Serial number, hex.
    pub serial: String,
    /// The SGX extension.
    #[serde(flatten)]
    pub extension: SgxExtension,
}

/// A quote whose signatures, QE binding and PCK chain verified (no collateral involved).
#[derive(Clone, Debug, Serialize)]
pub struct Evidence {
    /// SGX or TDX.
    pub tee: Tee,
    /// The PCK certificate.
    pub pck: PckInfo,
    /// SHA-256 of the root the PCK chain ends in, hex.
    pub root_sha256: String,
    /// The quote fields.
    pub quote: QuoteFields,
}

/// Validity window shared by the collateral.
#[derive(Clone, Debug, Serialize)]
pub struct Window {
    /// Start, RFC 3339.
    pub not_before: String,
    /// End, RFC 3339.
    pub not_after: String,
}

/// A quote that passed every check.
#[derive(Clone, Debug, Serialize)]
pub struct Verified {
    /// Always true; present for the JSON contract.
    pub valid: bool,
    /// SGX or TDX.
    pub tee: Tee,
    /// The converged TCB status (platform, TDX module, QE).
    pub tcb_status: TcbStatus,
    /// Advisory IDs of the matched levels.
    pub advisory_ids: Vec<String>,
    /// Platform level.
    pub platform_tcb: Graded,
    /// TDX module level, when the TCB info grades one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tdx_module_tcb: Option<Graded>,
    /// QE level.
    pub qe_tcb: Graded,
    /// "checked", or "skipped" (`check_crl` off).
    pub crl: &'static str,
    /// tcbEvaluationDataNumber of the TCB info.
    pub tcb_evaluation_data_number: u32,
    /// The window inside which the collateral is valid.
    pub collateral_window: Window,
    /// Verification time, RFC 3339.
    pub verified_at: String,
    /// The PCK certificate.
    pub pck: PckInfo,
    /// The quote fields.
    pub quote: QuoteFields,
    /// Non-fatal observations.
    pub warnings: Vec<String>,
}

/// A verified PCK chain, kept for later quotes of the same platform.
struct CheckedPck {
    leaf: Certificate,
    leaf_key: EcKey<Public>,
    ext: SgxExtension,
    /// Leaf first, root last.
    chain: Vec<Certificate>,
    /// QE reports (report ‖ signature) this PCK key was seen to sign: a platform's QE report
    /// is the same in every quote until its attestation key changes, so later quotes need one
    /// ECDSA check (the quote's) instead of two.
    qe_reports: RwLock<std::collections::HashSet<Vec<u8>>>,
}

/// QE reports remembered per PCK certificate before the set starts over.
const QE_REPORTS_PER_PCK: usize = 16;

impl CheckedPck {
    fn qe_report_verified(&self, quote: &Quote) -> Result<bool, VerifyError> {
        let mut signed = quote.qe_report_bytes().to_vec();
        signed.extend_from_slice(&quote.qe_report_signature);
        if self.qe_reports.read().is_ok_and(|s| s.contains(&signed)) {
            return Ok(true);
        }
        if !verify_raw(
            &self.leaf_key,
            quote.qe_report_bytes(),
            &quote.qe_report_signature,
        )? {
            return Ok(false);
        }
        if let Ok(mut s) = self.qe_reports.write() {
            if s.len() >= QE_REPORTS_PER_PCK {
                s.clear();
            }
            s.insert(signed);
        }
        Ok(true)
    }
}

/// Verified collateral, kept for later quotes.
struct CheckedCollateral {
    tcb_info: TcbInfo,
    qe_identity: QeIdentity,
    /// Signer chains of TCB info, QE identity and the PCK CRL (leaf first).
    signer_chains: Vec<Vec<Certificate>>,
    /// The shared window (before CRLs' own, which are added when they are checked).
    window: (u64, u64),
    /// The CRLs, verified, when checked.
    crls: Option<(Crl, Crl)>,
    /// Whether the PCK CRL's signature still needs its issuer from the quote's chain.
    pck_crl_signer_from_quote: bool,
}

/// Collateral digest and whether CRLs are checked.
type CollateralKey = ([u8; 32], bool);

/// Entries kept per cache before it starts over.
const CACHE_CAPACITY: usize = 64;

/// Verifies quotes; caches verified PCK chains (by their bytes) and collateral (by SHA-256).
pub struct Verifier {
    roots: Roots,
    /// Keyed by the PEM chain as received (hashing it is cheaper than a SHA-256 of it).
    pck_cache: RwLock<HashMap<Vec<u8>, Arc<CheckedPck>>>,
    collateral_cache: RwLock<HashMap<CollateralKey, Arc<CheckedCollateral>>>,
}

fn crypto(e: openssl::error::ErrorStack) -> VerifyError {
    VerifyError::Crypto(e.to_string())
}

/// ECDSA P-256 over SHA-256 of `data`, signature r‖s, key `key`.
fn verify_raw(key: &EcKey<Public>, data: &[u8], sig: &[u8; 64]) -> Result<bool, VerifyError> {
    let sig = EcdsaSig::from_private_components(
        BigNum::from_slice(&sig[..32]).map_err(crypto)?,
        BigNum::from_slice(&sig[32..]).map_err(crypto)?,
    )
    .map_err(crypto)?;
    let digest = openssl::sha::sha256(data);
    Ok(sig.verify(&digest, key).unwrap_or(false))
}

/// The attestation key x‖y as a P-256 key; `None` if it is not a point of the curve.
///
/// Decoding the uncompressed point checks that it is on the curve (P-256 has cofactor 1, so that
/// is the whole check); `EC_KEY_check_key`'s extra multiplication by the order would cost about
/// half a signature verification per quote.
fn attestation_key(xy: &[u8; 64]) -> Option<EcKey<Public>> {
    static GROUP: OnceLock<Option<EcGroup>> = OnceLock::new();
    let group = GROUP
        .get_or_init(|| EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).ok())
        .as_ref()?;
    let mut sec1 = [4u8; 65];
    sec1[1..].copy_from_slice(xy);
    let mut ctx = BigNumContext::new().ok()?;
    let point = EcPoint::from_bytes(group, &sec1, &mut ctx).ok()?;
    EcKey::from_public_key(group, &point).ok()
}

fn expired(what: impl Into<String>, at: u64, nb: u64, na: u64) -> VerifyError {
    VerifyError::Expired {
        what: what.into(),
        at: format_rfc3339(at),
        not_before: format_rfc3339(nb),
        not_after: if na == u64::MAX {
            "(no end)".into()
        } else {
            format_rfc3339(na)
        },
    }
}

fn check_validity(chain: &[Certificate], at: u64) -> Result<(), VerifyError> {
    for c in chain {
        let (nb, na) = c.validity();
        if at < nb || at > na {
            return Err(expired(
                format!("certificate '{}'", c.subject_cn()),
                at,
                nb,
                na,
            ));
        }
    }
    Ok(())
}

fn insert<K: std::hash::Hash + Eq, V>(cache: &RwLock<HashMap<K, Arc<V>>>, k: K, v: Arc<V>) {
    if let Ok(mut c) = cache.write() {
        if c.len() >= CACHE_CAPACITY {
            c.clear();
        }
        c.insert(k, v);
    }
}

impl Verifier {
    /// A verifier over `roots`.
    pub fn new(roots: Roots) -> Self {
        Verifier {
            roots,
            pck_cache: RwLock::new(HashMap::new()),
            collateral_cache: RwLock::new(HashMap::new()),
        }
    }

    /// A verifier trusting only the Intel SGX Root CA.
    pub fn intel() -> Result<Self, CertError> {
        Ok(Self::new(Roots::intel()?))
    }

    /// Walk `certs` (leaf first) to a pinned root. Returns leaf..root.
    fn verify_chain(
        &self,
        certs: &[Certificate],
        what: &str,
    ) -> Result<Vec<Certificate>, VerifyError> {
        let Some(leaf) = certs.first() else {
            return Err(VerifyError::Malformed(format!("{what}: no certificate")));
        };
        let mut path = vec![leaf.clone()];
        for depth in 0..8 {
            let Some(cur) = path.last() else { break };
            if self.roots.pinned(cur) {
                return Ok(path);
            }
            if cur.is_self_issued() {
                return Err(VerifyError::UnknownRoot(format!(
                    "{what} ends at '{}' (SHA-256 {}), which is not a pinned root",
                    cur.subject_cn(),
                    hex::encode(cur.fingerprint())
                )));
            }
            let next = match certs.get(depth + 1) {
                Some(n) => {
                    if !cur.names_issuer(n) {
                        return Err(VerifyError::Chain(format!(
                            "{what}: '{}' is issued by '{}', but the next certificate is '{}'",
                            cur.subject_cn(),
                            cur.issuer_cn(),
                            n.subject_cn()
                        )));
                    }
                    n.clone()
                }
                None => match self.roots.iter().find(|r| cur.names_issuer(r)) {
                    Some(r) => r.clone(),
                    None => {
                        return Err(VerifyError::UnknownRoot(format!(
                            "{what}: '{}' is issued by '{}', which is not a pinned root",
                            cur.subject_cn(),
                            cur.issuer_cn()
                        )))
                    }
                },
            };
            if !cur.is_signed_by(&next) {
                return Err(VerifyError::Chain(format!(
                    "{what}: '{}' is not signed by '{}'",
                    cur.subject_cn(),
                    next.subject_cn()
                )));
            }
            path.push(next);
        }
        Err(VerifyError::Chain(format!("{what}: too long")))
    }

    fn checked_pck(&self, quote: &Quote) -> Result<Arc<CheckedPck>, VerifyError> {
        let pem = quote.pck_chain_pem();
        if let Some(c) = self.pck_cache.read().ok().and_then(|c| c.get(pem).cloned()) {
            return Ok(c);
        }
        let certs = Certificate::pem_chain(pem, "PCK certificate chain in the quote")?;
        let chain = self.verify_chain(&certs, "PCK certificate chain")?;
        let leaf = chain[0].clone();
        let ext = leaf.sgx_extension()?;
        let leaf_key = leaf.ec_key()?;
        if chain.len() < 3 {
            return Err(VerifyError::Chain(format!(
                "PCK certificate '{}' must be issued by a PCK CA, not by the root",
                leaf.subject_cn()
            )));
        }
        let checked = Arc::new(CheckedPck {
            leaf,
            leaf_key,
            ext,
            chain,
            qe_reports: RwLock::new(std::collections::HashSet::new()),
        });
        insert(&self.pck_cache, pem.to_vec(), checked.clone());
        Ok(checked)
    }

    fn evidence(&self, quote: &Quote, at: u64) -> Result<(Tee, Arc<CheckedPck>), VerifyError> {
        if quote.header.qe_vendor_id != INTEL_QE_VENDOR_ID {
            return Err(VerifyError::Malformed(format!(
                "QE vendor id {} is not Intel's",
                hex::encode(quote.header.qe_vendor_id)
            )));
        }
        let tee = if quote.is_tdx() { Tee::Tdx } else { Tee::Sgx };
        let quote_sig = VerifyError::Signature {
            what: "quote (attestation key)",
        };
        let Some(att_key) = attestation_key(&quote.attestation_key) else {
            return Err(quote_sig);
        };
        if !verify_raw(&att_key, quote.signed_bytes(), &quote.signature)? {
            return Err(quote_sig);
        }
        let pck = self.checked_pck(quote)?;
        if !pck.qe_report_verified(quote)? {
            return Err(VerifyError::Signature {
                what: "QE report (PCK)",
            });
        }
        let mut h = openssl::sha::Sha256::new();
        h.update(&quote.attestation_key);
        h.update(quote.qe_auth_data());
        let expected = h.finish();
        let rd = &quote.qe_report.report_data;
        if rd[..32] != expected || rd[32..].iter().any(|&b| b != 0) {
            return Err(VerifyError::QeBinding(format!(
                "QE REPORT_DATA is {}, expected SHA-256(attestation key ‖ QE auth data) = {} then 32 zero bytes",
                hex::encode(rd),
                hex::encode(expected)
            )));
        }
        check_validity(&pck.chain, at)?;
        Ok((tee, pck))
    }

    /// Check the quote alone: signatures, QE binding, PCK chain to a pinned root, certificate
    /// validity at `at`. No collateral: no TCB status, no revocation.
    pub fn verify_evidence(&self, quote: &Quote, at: u64) -> Result<Evidence, VerifyError> {
        let (tee, pck) = self.evidence(quote, at)?;
        Ok(Evidence {
            tee,
            pck: pck_info(&pck),
            root_sha256: pck
                .chain
                .last()
                .map(|r| hex::encode(r.fingerprint()))
                .unwrap_or_default(),
            quote: quote.fields(),
        })
    }

    fn checked_collateral(
        &self,
        c: &Collateral,
        check_crl: bool,
    ) -> Result<Arc<CheckedCollateral>, VerifyError> {
        let key = (c.digest(), check_crl);
        if let Some(v) = self
            .collateral_cache
            .read()
            .ok()
            .and_then(|m| m.get(&key).cloned())
        {
            return Ok(v);
        }
        // Signatures over the text as received, before anything reads it.
        let tcb_chain = self.verify_chain(&c.tcb_info_chain, "TCB info issuer chain")?;
        if !verify_raw(
            &tcb_chain[0].ec_key()?,
            c.tcb_info_text.as_bytes(),
            &c.tcb_info_signature,
        )? {
            return Err(VerifyError::CollateralSignature { what: "TCB info" });
        }
        let qe_chain = self.verify_chain(&c.qe_identity_chain, "QE identity issuer chain")?;
        if !verify_raw(
            &qe_chain[0].ec_key()?,
            c.qe_identity_text.as_bytes(),
            &c.qe_identity_signature,
        )? {
            return Err(VerifyError::CollateralSignature {
                what: "QE identity",
            });
        }
        let tcb_info = TcbInfo::parse(&c.tcb_info_text)?;
        let qe_identity = QeIdentity::parse(&c.qe_identity_text)?;
        let mut window = (
            tcb_info.issue_date.max(qe_identity.issue_date),
            tcb_info.next_update.min(qe_identity.next_update),
        );
        let mut signer_chains = vec![tcb_chain, qe_chain];
        let mut crls = None;
        let mut pck_crl_signer_from_quote = false;
        if check_crl {
            let (Some(root_crl), Some(pck_crl)) = (&c.root_ca_crl, &c.pck_crl) else {
                return Err(VerifyError::Crl(
                    "the collateral has no root CA CRL or no PCK CRL (pass --no-crl to skip revocation checks)".into(),
                ));
            };
            let root = self
                .roots
                .iter()
                .find(|r| root_crl.named_issuer_is(r) && root_crl.is_signed_by(r))
                .ok_or_else(|| {
                    VerifyError::Crl(format!(
                        "root CA CRL (issuer '{}') is not signed by a pinned root",
                        root_crl.issuer_cn()
                    ))
                })?;
            if root_crl.revokes(root) {
                return Err(VerifyError::Crl(format!(
                    "'{}' is revoked",
                    root.subject_cn()
                )));
            }
            if c.pck_crl_chain.is_empty() {
                pck_crl_signer_from_quote = true;
            } else {
                let chain = self.verify_chain(&c.pck_crl_chain, "PCK CRL issuer chain")?;
                if !pck_crl.named_issuer_is(&chain[0]) || !pck_crl.is_signed_by(&chain[0]) {
                    return Err(VerifyError::Crl(format!(
                        "PCK CRL (issuer '{}') is not signed by its issuer chain's '{}'",
                        pck_crl.issuer_cn(),
                        chain[0].subject_cn()
                    )));
                }
                signer_chains.push(chain);
            }
            for chain in &signer_chains {
                for cert in chain {
                    if root_crl.revokes(cert) {
                        return Err(VerifyError::Crl(format!(
                            "'{}' (serial {}) is revoked by the root CA CRL",
                            cert.subject_cn(),
                            hex::encode(cert.serial())
                        )));
                    }
                }
            }
            for crl in [root_crl, pck_crl] {
                let (this, next) = crl.window();
                window = (window.0.max(this), window.1.min(next));
            }
            crls = Some((root_crl.clone(), pck_crl.clone()));
        }
        let checked = Arc::new(CheckedCollateral {
            tcb_info,
            qe_identity,
            signer_chains,
            window,
            crls,
            pck_crl_signer_from_quote,
        });
        insert(&self.collateral_cache, key, checked.clone());
        Ok(checked)
    }

    /// Verify `quote` with `collateral` at `opts.at`.
    pub fn verify(
        &self,
        quote: &Quote,
        collateral: &Collateral,
        opts: &VerifyOptions,
    ) -> Result<Verified, VerifyError> {
        let (tee, pck) = self.evidence(quote, opts.at)?;
        self.appraise(quote, tee, &pck, collateral, opts)
    }

    /// Verify `quote` with the collateral `find` chooses for the quote's TEE and its PCK
    /// certificate's FMSPC. The evidence (signatures, QE binding, PCK chain) is checked first, so
    /// a [`VerifyError::NoCollateral`] from `find` still says the quote itself is genuine.
    pub fn verify_with(
        &self,
        quote: &Quote,
        find: impl FnOnce(Tee, &[u8; 6]) -> Result<Arc<Collateral>, VerifyError>,
        opts: &VerifyOptions,
    ) -> Result<Verified, VerifyError> {
        let (tee, pck) = self.evidence(quote, opts.at)?;
        let collateral = find(tee, &pck.ext.fmspc)?;
        self.appraise(quote, tee, &pck, &collateral, opts)
    }

    /// The collateral checks of [`Verifier::verify`], for evidence already checked.
    fn appraise(
        &self,
        quote: &Quote,
        tee: Tee,
        pck: &CheckedPck,
        collateral: &Collateral,
        opts: &VerifyOptions,
    ) -> Result<Verified, VerifyError> {
        let at = opts.at;
        let col = self.checked_collateral(collateral, opts.check_crl)?;
        let mut warnings = Vec::new();

        // One root for everything: the collateral's signers chain to the PCK chain's root.
        let root = &pck.chain[pck.chain.len() - 1];
        for chain in &col.signer_chains {
            let theirs = chain.last().map(|c| c.fingerprint());
            if theirs != Some(root.fingerprint()) {
                return Err(VerifyError::Chain(format!(
                    "'{}' of the collateral chains to another root than the PCK certificate",
                    chain.first().map(|c| c.subject_cn()).unwrap_or_default()
                )));
            }
        }

        // Revocation of the PCK chain.
        if let Some((root_crl, pck_crl)) = &col.crls {
            if !root_crl.named_issuer_is(root) {
                return Err(VerifyError::Crl(format!(
                    "the root CA CRL is from '{}', the PCK chain ends at '{}'",
                    root_crl.issuer_cn(),
                    root.subject_cn()
                )));
            }
            let issuer = &pck.chain[1];
            if !pck_crl.named_issuer_is(issuer) {
                return Err(VerifyError::Crl(format!(
                    "the PCK CRL is from '{}', but the PCK certificate is issued by '{}'",
                    pck_crl.issuer_cn(),
                    issuer.subject_cn()
                )));
            }
            if col.pck_crl_signer_from_quote && !pck_crl.is_signed_by(issuer) {
                return Err(VerifyError::Crl(format!(
                    "the PCK CRL is not signed by '{}'",
                    issuer.subject_cn()
                )));
            }
            if pck_crl.revokes(&pck.leaf) {
                return Err(VerifyError::Crl(format!(
                    "the PCK certificate (serial {}) is revoked by the PCK CRL",
                    hex::encode(pck.leaf.serial())
                )));
            }
            for cert in &pck.chain[1..] {
                if root_crl.revokes(cert) {
                    return Err(VerifyError::Crl(format!(
                        "'{}' (serial {}) is revoked by the root CA CRL",
                        cert.subject_cn(),
                        hex::encode(cert.serial())
                    )));
                }
            }
        } else {
            warnings
                .push("CRLs not checked (--no-crl): revoked certificates would pass".to_string());
        }

        // Validity: signer certificates, then the window all collateral shares.
        for chain in &col.signer_chains {
            check_validity(chain, at)?;
        }
        let (nb, na) = col.window;
        if at < nb || at > na {
            return Err(expired(
                if opts.check_crl {
                    "the collateral (TCB info, QE identity, CRLs)"
                } else {
                    "the collateral (TCB info, QE identity)"
                },
                at,
                nb,
                na,
            ));
        }

        // The collateral must be this platform's and this TEE's.
        let info = &col.tcb_info;
        let want = match tee {
            Tee::Sgx => "SGX",
            Tee::Tdx => "TDX",
        };
        if info.id != want {
            return Err(VerifyError::TcbNotSupported(format!(
                "TCB info is for {} but the quote is {want}",
                info.id
            )));
        }
        if info.fmspc != pck.ext.fmspc {
            return Err(VerifyError::TcbNotSupported(format!(
                "TCB info is for FMSPC {}, the PCK certificate's is {}",
                hex::encode(info.fmspc),
                hex::encode(pck.ext.fmspc)
            )));
        }
        if info.pce_id != pck.ext.pce_id {
            return Err(VerifyError::TcbNotSupported(format!(
                "TCB info is for PCE-ID {}, the PCK certificate's is {}",
                hex::encode(info.pce_id),
                hex::encode(pck.ext.pce_id)
            )));
        }
        let qe_id = match tee {
            Tee::Sgx => "QE",
            Tee::Tdx => "TD_QE",
        };
        if col.qe_identity.id != qe_id {
            return Err(VerifyError::TcbNotSupported(format!(
                "QE identity is '{}', a {want} quote needs '{qe_id}'",
                col.qe_identity.id
            )));
        }
        let qe = match tcb::match_qe(&quote.qe_report, &col.qe_identity) {
            Ok(g) => g,
            Err(QeMismatch::Identity(m)) => return Err(VerifyError::QeBinding(m)),
            Err(QeMismatch::Level(m)) => return Err(VerifyError::TcbNotSupported(m)),
        };
        let td = quote.body.td();
        let level = tcb::match_platform(info, &pck.ext.components, pck.ext.pce_svn, td)?;
        let platform = tcb::graded(level);
        let module = match td {
            Some(td) => tcb::match_tdx_module(info, td)?,
            None => None,
        };
        let mut total = platform.clone();
        if let Some(m) = &module {
            total = total.converge(m);
        }
        total = total.converge(&qe);
        if total.status == TcbStatus::Revoked {
            return Err(VerifyError::TcbNotSupported(
                "the TCB level is Revoked".into(),
            ));
        }
        if quote.trailing_bytes > 0 {
            warnings.push(format!(
                "{} bytes after the signature data ignored",
                quote.trailing_bytes
            ));
        }
        Ok(Verified {
            valid: true,
            tee,
            tcb_status: total.status,
            advisory_ids: total.advisory_ids,
            platform_tcb: platform,
            tdx_module_tcb: module,
            qe_tcb: qe,
            crl: if col.crls.is_some() {
                "checked"
            } else {
                "skipped"
            },
            tcb_evaluation_data_number: info.tcb_evaluation_data_number,
            collateral_window: Window {
                not_before: format_rfc3339(nb),
                not_after: format_rfc3339(na),
            },
            verified_at: format_rfc3339(at),
            pck: pck_info(pck),
            quote: quote.fields(),
            warnings,
        })
    }
}

fn pck_info(pck: &CheckedPck) -> PckInfo {
    PckInfo {
        issuer: pck.leaf.issuer_cn(),
        serial: hex::encode(pck.leaf.serial()),
        extension: pck.ext.clone(),
    }
}
