//! Verification of a report against its endorsements, down to a pinned root.
//!
//! The checks, in order: signer and product, chain (VCEK -> ASK -> ARK or VLEK -> ASVK -> ARK,
//! RSASSA-PSS), root pin, validity at the given time, VCEK extensions against the report
//! (REPORTED_TCB, CHIP_ID), then the ECDSA P-384 signature over the bytes as received.
//!
//! Why not the `sev` crate: it checks the signature over a re-encoding of the report, maps unknown
//! versions to v5, cannot parse a v2 report whose CHIP_ID is masked, and reports failures as
//! `io::Error` strings. Each of those contradicts a requirement here, so this crate owns the path.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};

use openssl::bn::BigNum;
use openssl::ec::EcKey;
use openssl::ecdsa::EcdsaSig;
use openssl::pkey::Public;
use serde::Serialize;

use crate::certs::{AmdExtensions, Certificate};
use crate::ecdsa::CombKey;
use crate::error::{
    CertError, CertRole, ChainFailure, ProductSource, ProductUnknown, RootProblem, VerifyError,
    Warning,
};
use crate::report::{AttestationReport, Product, Report, SigningKey, TcbComponent, TcbVersion};
use crate::time::format_rfc3339;

/// The `cert_chain` files AMD KDS publishes (intermediate first, then ARK), per product.
const EMBEDDED: [(Product, &str, &str); 3] = [
    (
        Product::Milan,
        include_str!("../roots/milan_ask_ark.pem"),
        include_str!("../roots/milan_asvk_ark.pem"),
    ),
    (
        Product::Genoa,
        include_str!("../roots/genoa_ask_ark.pem"),
        include_str!("../roots/genoa_asvk_ark.pem"),
    ),
    (
        Product::Turin,
        include_str!("../roots/turin_ask_ark.pem"),
        include_str!("../roots/turin_asvk_ark.pem"),
    ),
];

/// SHA-256 fingerprints of AMD's ARK certificates (DER). Embedded roots must match them.
pub const ARK_FINGERPRINTS: [(Product, &str); 3] = [
    (
        Product::Milan,
        "69d063b45344d26a2e94e1f4210de49ef555308287d4c174445c95639a540bcd",
    ),
    (
        Product::Genoa,
        "4c6598d19c18719c5dfd4a7d335f674e5bfe1d8f800cea2cf270c10d103db2f1",
    ),
    (
        Product::Turin,
        "1f084161a44bb6d93778a904877d4819cafa5d05ef4193b2ded9dd9c73dd3f6a",
    ),
];

/// Which kind of TEE the evidence proves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Tee {
    /// Real AMD SEV-SNP hardware (chain ends in a pinned AMD ARK).
    #[serde(rename = "sevsnp")]
    SevSnp,
    /// Coffer's emulated secure processor (chain ends in the local development ARK).
    #[serde(rename = "emulated-snp")]
    EmulatedSnp,
}

impl Tee {
    /// The JSON name.
    pub fn name(self) -> &'static str {
        match self {
            Tee::SevSnp => "sevsnp",
            Tee::EmulatedSnp => "emulated-snp",
        }
    }
}

/// A root of trust with its intermediates.
#[derive(Clone, Debug)]
pub struct TrustedRoot {
    /// AMD product root, or the emulated development root.
    pub tee: Tee,
    /// Product the root belongs to (`None` for the emulated root, which serves any).
    pub product: Option<Product>,
    /// The ARK (self-signed).
    pub ark: Certificate,
    /// ASK, signs VCEKs.
    pub ask: Certificate,
    /// ASVK, signs VLEKs.
    pub asvk: Option<Certificate>,
}

/// The set of roots a verifier may chain to.
#[derive(Clone, Debug)]
pub struct Roots {
    roots: Vec<TrustedRoot>,
}

fn pair(pem: &str, context: &str) -> Result<(Certificate, Certificate), CertError> {
    let mut certs = Certificate::pem_chain(pem.as_bytes(), context)?;
    if certs.len() != 2 {
        return Err(CertError::Count {
            context: context.to_string(),
            expected: "an intermediate and the ARK",
            got: certs.len(),
        });
    }
    let ark = certs.remove(1);
    Ok((certs.remove(0), ark))
}

fn root_err(tee: Tee, ark: &Certificate, why: RootProblem) -> CertError {
    CertError::Root {
        root: format!("{} {}", tee.name(), ark.subject_cn()),
        why,
    }
}

fn check_root(
    tee: Tee,
    product: Option<Product>,
    ark: &Certificate,
    intermediates: &[&Certificate],
) -> Result<(), CertError> {
    let bad = |why: RootProblem| root_err(tee, ark, why);
    if !ark.is_signed_by(ark)? {
        return Err(bad(RootProblem::NotSelfSigned));
    }
    for i in intermediates {
        if !i.is_signed_by(ark)? {
            return Err(bad(RootProblem::IntermediateNotSigned {
                subject: i.subject_cn().to_string(),
            }));
        }
    }
    if let Some(p) = product {
        let pin = ARK_FINGERPRINTS
            .iter()
            .find(|(q, _)| *q == p)
            .map(|(_, f)| *f);
        if pin != Some(hex::encode(ark.fingerprint()).as_str()) {
            return Err(bad(RootProblem::FingerprintNotPinned));
        }
    }
    Ok(())
}

impl Roots {
    /// AMD's Milan, Genoa and Turin roots, embedded in the binary and checked against the pins.
    pub fn amd() -> Result<Self, CertError> {
        let mut roots = Vec::new();
        for (product, ask_pem, asvk_pem) in EMBEDDED {
            let (ask, ark) = pair(ask_pem, product.name())?;
            let (asvk, ark2) = pair(asvk_pem, product.name())?;
            if ark.fingerprint() != ark2.fingerprint() {
                return Err(root_err(Tee::SevSnp, &ark, RootProblem::AsvkChainOtherArk));
            }
            check_root(Tee::SevSnp, Some(product), &ark, &[&ask, &asvk])?;
            roots.push(TrustedRoot {
                tee: Tee::SevSnp,
                product: Some(product),
                ark,
                ask,
                asvk: Some(asvk),
            });
        }
        Ok(Roots { roots })
    }

    /// Add the emulated secure processor's development root (ARK and ASK).
    ///
    /// Evidence under it is accepted only by a verifier built with `allow_emulated`.
    pub fn with_emulated(
        mut self,
        ark: Certificate,
        ask: Certificate,
        asvk: Option<Certificate>,
    ) -> Result<Self, CertError> {
        if ARK_FINGERPRINTS
            .iter()
            .any(|(_, f)| *f == hex::encode(ark.fingerprint()))
        {
            return Err(root_err(
                Tee::EmulatedSnp,
                &ark,
                RootProblem::AmdArkAsEmulated,
            ));
        }
        let mut intermediates = vec![&ask];
        intermediates.extend(asvk.as_ref());
        check_root(Tee::EmulatedSnp, None, &ark, &intermediates)?;
        self.roots.push(TrustedRoot {
            tee: Tee::EmulatedSnp,
            product: None,
            ark,
            ask,
            asvk,
        });
        Ok(self)
    }

    /// The roots.
    pub fn iter(&self) -> std::slice::Iter<'_, TrustedRoot> {
        self.roots.iter()
    }
}

/// The certificates that come with a report.
#[derive(Clone, Debug)]
pub struct Endorsements {
    /// VCEK or VLEK.
    pub vek: Certificate,
    /// ASK or ASVK, when supplied.
    pub intermediate: Option<Certificate>,
    /// ARK, when supplied (accepted only if pinned).
    pub ark: Option<Certificate>,
    /// Azure THIM `tcbm`: the TCB the VCEK was issued for, in THIM's reversed hex.
    pub tcbm: Option<String>,
}

impl Endorsements {
    /// A lone VCEK/VLEK (DER or PEM); intermediates come from the embedded roots.
    pub fn from_vek(bytes: &[u8], context: &str) -> Result<Self, CertError> {
        Ok(Endorsements {
            vek: Certificate::from_der_or_pem(bytes, context)?,
            intermediate: None,
            ark: None,
            tcbm: None,
        })
    }

    /// A PEM chain holding a VCEK/VLEK and optionally its ASK/ASVK and ARK, in any order.
    pub fn from_pem_chain(pem: &[u8], context: &str) -> Result<Self, CertError> {
        let certs = Certificate::pem_chain(pem, context)?;
        Self::from_certs(certs, None, context)
    }

    /// An Azure THIM response: `vcekCert`, `certificateChain` (ASK, ARK) and `tcbm`.
    pub fn from_thim_json(json: &[u8], context: &str) -> Result<Self, CertError> {
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Thim {
            vcek_cert: String,
            certificate_chain: Option<String>,
            tcbm: Option<String>,
        }
        let thim: Thim = serde_json::from_slice(json).map_err(|e| CertError::NotThim {
            context: context.to_string(),
            reason: e.to_string(),
        })?;
        let mut certs = Certificate::pem_chain(thim.vcek_cert.as_bytes(), context)?;
        if let Some(chain) = &thim.certificate_chain {
            certs.extend(Certificate::pem_chain(chain.as_bytes(), context)?);
        }
        Self::from_certs(certs, thim.tcbm, context)
    }

    fn from_certs(
        certs: Vec<Certificate>,
        tcbm: Option<String>,
        context: &str,
    ) -> Result<Self, CertError> {
        let (mut vek, mut intermediate, mut ark) = (None, None, None);
        for c in certs {
            let slot = if c.has_ec_key() {
                &mut vek
            } else if c.is_self_issued() {
                &mut ark
            } else {
                &mut intermediate
            };
            if let Some(prev) = slot.replace(c) {
                return Err(CertError::DuplicateRole {
                    context: context.to_string(),
                    subject: prev.subject_cn().to_string(),
                });
            }
        }
        let vek = vek.ok_or_else(|| CertError::NoVek {
            context: context.to_string(),
        })?;
        Ok(Endorsements {
            vek,
            intermediate,
            ark,
            tcbm,
        })
    }
}

/// Inputs of one verification that are not evidence.
#[derive(Clone, Copy, Debug)]
pub struct VerifyOptions {
    /// Verification time, Unix seconds.
    pub at: u64,
    /// Product to assume when neither CPUID nor the VCEK tells.
    pub product: Option<Product>,
}

/// A report that passed every check.
#[derive(Clone, Debug, Serialize)]
pub struct Verified {
    /// Always true; present for the JSON contract.
    pub valid: bool,
    /// Real or emulated.
    pub tee: Tee,
    /// Product whose root the chain ends in (emulated: the product it claims).
    pub product: Product,
    /// VCEK or VLEK.
    pub signer: SigningKey,
    /// The report fields, TCBs decoded with the product's layout.
    pub report: AttestationReport,
    /// Non-fatal observations (reserved bits set, masked chip id).
    pub warnings: Vec<Warning>,
}

/// What a verified VCEK/VLEK chain leaves for later reports from the same chip.
struct CachedChain {
    key: EcKey<Public>,
    /// Built on the key's second report: the table costs ~10 one-off checks and pays for itself
    /// from the next few (`None`: the key did not convert, OpenSSL checks instead).
    comb: OnceLock<Option<CombKey>>,
    tee: Tee,
    product: Product,
    signer: SigningKey,
    ext: AmdExtensions,
    windows: Vec<(CertRole, u64, u64)>,
}

/// Chains kept at most (each with up to 1.8 MB of comb table); the cache starts over when full.
const CHAIN_CACHE_CAPACITY: usize = 64;

/// Verifies reports; caches verified chains by VCEK/VLEK fingerprint.
pub struct Verifier {
    roots: Roots,
    allow_emulated: bool,
    cache: RwLock<HashMap<[u8; 32], Arc<CachedChain>>>,
}

/// The certificate role of the report's signer, and of that signer's issuer.
fn roles(signer: SigningKey) -> (CertRole, CertRole) {
    match signer {
        SigningKey::Vlek => (CertRole::Vlek, CertRole::Asvk),
        _ => (CertRole::Vcek, CertRole::Ask),
    }
}

impl Verifier {
    /// A verifier over `roots`. Evidence under the emulated root passes only if `allow_emulated`.
    pub fn new(roots: Roots, allow_emulated: bool) -> Self {
        Verifier {
            roots,
            allow_emulated,
            cache: RwLock::new(HashMap::new()),
        }
    }

    /// Number of cached chains.
    pub fn cached_chains(&self) -> usize {
        self.cache.read().map(|c| c.len()).unwrap_or(0)
    }

    /// Verify `report` with `endorsements` at `opts.at`.
    pub fn verify(
        &self,
        report: &Report,
        endorsements: &Endorsements,
        opts: &VerifyOptions,
    ) -> Result<Verified, VerifyError> {
        let fields = report.fields();
        let signer = fields.signer_info.signing_key();
        if !matches!(signer, SigningKey::Vcek | SigningKey::Vlek) {
            return Err(VerifyError::UnsupportedSigningKey { key: signer });
        }
        let fp = endorsements.vek.fingerprint();
        let cached = self.cache.read().ok().and_then(|c| c.get(&fp).cloned());
        let (chain, repeat) = match cached {
            Some(c) if c.signer == signer => (c, true),
            _ => {
                let c = Arc::new(self.verify_chain(fields, endorsements, signer, opts)?);
                if let Ok(mut cache) = self.cache.write() {
                    if cache.len() >= CHAIN_CACHE_CAPACITY && !cache.contains_key(&fp) {
                        cache.clear();
                    }
                    cache.insert(fp, c.clone());
                }
                (c, false)
            }
        };
        if chain.tee == Tee::EmulatedSnp && !self.allow_emulated {
            return Err(VerifyError::EmulatedNotAllowed);
        }
        check_product(fields, None, opts.product, Some(chain.product))?;

        for &(cert, not_before, not_after) in &chain.windows {
            if opts.at < not_before || opts.at > not_after {
                return Err(VerifyError::Expired {
                    cert,
                    at: format_rfc3339(opts.at),
                    not_before: format_rfc3339(not_before),
                    not_after: format_rfc3339(not_after),
                });
            }
        }

        let mut fields = fields.clone();
        fields.set_tcb_layout(chain.product.tcb_layout());
        let mut warnings = Vec::new();
        check_tcb(&fields.reported_tcb, &chain.ext, signer)?;
        if let Some(tcbm) = &endorsements.tcbm {
            let thim = TcbVersion::from_tcbm(tcbm, chain.product.tcb_layout())?;
            for &c in fields.reported_tcb.components() {
                let (cert, rep) = (
                    thim.get(c).unwrap_or(0),
                    fields.reported_tcb.get(c).unwrap_or(0),
                );
                if cert != rep {
                    return Err(VerifyError::TcbMismatch {
                        signer: "THIM tcbm",
                        component: c.name(),
                        cert,
                        report: rep,
                    });
                }
            }
        }
        if signer == SigningKey::Vcek {
            check_chip_id(&fields, &chain.ext, chain.product, &mut warnings)?;
        }
        if fields.signature_algo != 1 {
            return Err(VerifyError::SignatureAlgorithm(fields.signature_algo));
        }
        let comb = match repeat {
            true => chain.comb.get_or_init(|| comb_key(&chain.key)).as_ref(),
            false => None,
        };
        if !verify_report_signature(report, &chain.key, comb)? {
            return Err(VerifyError::Signature {
                signer: roles(signer).0,
            });
        }

        let reserved = fields.platform_info.reserved_bits();
        if reserved != 0 {
            warnings.push(Warning::PlatformInfoReservedBits(reserved));
        }
        let reserved = fields.signer_info.reserved_bits();
        if reserved != 0 {
            warnings.push(Warning::SignerInfoReservedBits(reserved));
        }
        Ok(Verified {
            valid: true,
            tee: chain.tee,
            product: chain.product,
            signer,
            report: fields,
            warnings,
        })
    }

    fn verify_chain(
        &self,
        fields: &AttestationReport,
        e: &Endorsements,
        signer: SigningKey,
        opts: &VerifyOptions,
    ) -> Result<CachedChain, VerifyError> {
        let (role, inter_role) = roles(signer);
        let vek = &e.vek;
        let key_err = || VerifyError::VekKey {
            cert: role,
            subject: vek.subject_cn().to_string(),
        };
        if !vek.has_ec_key() {
            return Err(key_err());
        }
        let cn_role = if vek.subject_cn().contains("VLEK") {
            CertRole::Vlek
        } else {
            CertRole::Vcek
        };
        if cn_role != role {
            return Err(VerifyError::Chain {
                cert: role,
                why: ChainFailure::WrongRole {
                    expected: role,
                    subject: vek.subject_cn().to_string(),
                },
            });
        }
        let ext = vek.amd_extensions()?;
        let from_name = ext
            .product_name
            .as_deref()
            .and_then(Product::from_product_name);
        let product = check_product(fields, from_name, opts.product, None)?;

        let candidates: Vec<&TrustedRoot> = self
            .roots
            .iter()
            .filter(|r| r.product.is_none() || r.product == Some(product))
            .collect();
        let pick = |r: &TrustedRoot| -> Option<Certificate> {
            match signer {
                SigningKey::Vlek => r.asvk.clone(),
                _ => Some(r.ask.clone()),
            }
        };
        let mut intermediates: Vec<Certificate> = e.intermediate.iter().cloned().collect();
        intermediates.extend(candidates.iter().copied().filter_map(pick));
        let chain_err = |cert: CertRole| {
            move |e: CertError| VerifyError::Chain {
                cert,
                why: ChainFailure::Unusable(e),
            }
        };
        let mut intermediate = None;
        for cand in intermediates {
            if vek.is_signed_by(&cand).map_err(chain_err(role))? {
                intermediate = Some(cand);
                break;
            }
        }
        let intermediate = intermediate.ok_or(VerifyError::Chain {
            cert: role,
            why: ChainFailure::NotSignedBy {
                issuer: inter_role,
                product,
            },
        })?;
        let mut root = None;
        for r in candidates {
            if intermediate
                .is_signed_by(&r.ark)
                .map_err(chain_err(inter_role))?
            {
                root = Some(r);
                break;
            }
        }
        let root = match root {
            Some(r) => r,
            None => {
                if let Some(ark) = &e.ark {
                    if intermediate.is_signed_by(ark).unwrap_or(false) {
                        return Err(unknown_root(ark));
                    }
                }
                return Err(VerifyError::Chain {
                    cert: inter_role,
                    why: ChainFailure::NotSignedBy {
                        issuer: CertRole::Ark,
                        product,
                    },
                });
            }
        };
        if let Some(ark) = &e.ark {
            if ark.fingerprint() != root.ark.fingerprint() {
                return Err(unknown_root(ark));
            }
        }
        let key = vek.public_key()?.ec_key().map_err(|_| key_err())?;
        let p384 = key.group().curve_name() == Some(openssl::nid::Nid::SECP384R1);
        if !p384 {
            return Err(key_err());
        }
        let (vn, va) = vek.validity();
        let (inb, ina) = intermediate.validity();
        let (anb, ana) = root.ark.validity();
        Ok(CachedChain {
            key,
            comb: OnceLock::new(),
            tee: root.tee,
            product,
            signer,
            ext,
            windows: vec![
                (role, vn, va),
                (inter_role, inb, ina),
                (CertRole::Ark, anb, ana),
            ],
        })
    }
}

fn unknown_root(ark: &Certificate) -> VerifyError {
    VerifyError::UnknownRoot {
        subject: ark.subject_cn().to_string(),
        sha256: hex::encode(ark.fingerprint()),
    }
}

/// Decide the product (CPUID first, then the VCEK's name, then the caller's), refusing conflicts.
fn check_product(
    fields: &AttestationReport,
    from_name: Option<Product>,
    requested: Option<Product>,
    known: Option<Product>,
) -> Result<Product, VerifyError> {
    let from_cpuid = fields.product_from_cpuid();
    let sources = [
        (ProductSource::ReportCpuid, from_cpuid),
        (ProductSource::VekProductName, from_name),
        (ProductSource::VerifiedChain, known),
        (ProductSource::Requested, requested),
    ];
    let mut chosen: Option<(ProductSource, Product)> = None;
    for (src, p) in sources {
        if let Some(p) = p {
            match chosen {
                Some((first, q)) if q != p => {
                    return Err(VerifyError::ProductMismatch {
                        first,
                        first_product: q,
                        second: src,
                        second_product: p,
                    })
                }
                None => chosen = Some((src, p)),
                _ => {}
            }
        }
    }
    if let (Some(c), None) = (fields.cpuid, from_cpuid) {
        if chosen.is_none() {
            return Err(VerifyError::UnknownProduct(ProductUnknown::Cpuid {
                family: c.fam_id,
                model: c.mod_id,
            }));
        }
    }
    chosen
        .map(|(_, p)| p)
        .ok_or(VerifyError::UnknownProduct(ProductUnknown::NoProductName))
}

fn check_tcb(
    reported: &TcbVersion,
    ext: &AmdExtensions,
    signer: SigningKey,
) -> Result<(), VerifyError> {
    for &c in reported.components() {
        let spl = match c {
            TcbComponent::Bootloader => ext.bl_spl,
            TcbComponent::Tee => ext.tee_spl,
            TcbComponent::Snp => ext.snp_spl,
            TcbComponent::Microcode => ext.ucode_spl,
            TcbComponent::Fmc => ext.fmc_spl,
        };
        let spl = spl.ok_or_else(|| {
            VerifyError::Cert(CertError::Extension {
                oid: "1.3.6.1.4.1.3704.1.3".into(),
                reason: format!("{} has no {} SPL extension", roles(signer).0, c.name()),
            })
        })?;
        let rep = reported.get(c).unwrap_or(0);
        if spl != rep {
            return Err(VerifyError::TcbMismatch {
                signer: roles(signer).0.name(),
                component: c.name(),
                cert: spl,
                report: rep,
            });
        }
    }
    Ok(())
}

fn check_chip_id(
    fields: &AttestationReport,
    ext: &AmdExtensions,
    product: Product,
    warnings: &mut Vec<Warning>,
) -> Result<(), VerifyError> {
    if fields.chip_id.iter().all(|&b| b == 0) {
        warnings.push(Warning::ChipIdMasked);
        return Ok(());
    }
    let hw_id = ext.hw_id.as_deref().ok_or_else(|| {
        VerifyError::Cert(CertError::Extension {
            oid: crate::certs::oid::HW_ID.to_string(),
            reason: "VCEK has no hwID".into(),
        })
    })?;
    let compared: &[u8] = match product {
        Product::Turin => &fields.chip_id[..8],
        _ => &fields.chip_id,
    };
    if hw_id != compared {
        return Err(VerifyError::ChipIdMismatch {
            cert: hex::encode(hw_id),
            report: hex::encode(compared),
        });
    }
    Ok(())
}

fn comb_key(key: &EcKey<Public>) -> Option<CombKey> {
    let mut ctx = openssl::bn::BigNumContext::new().ok()?;
    let sec1 = key
        .public_key()
        .to_bytes(
            key.group(),
            openssl::ec::PointConversionForm::UNCOMPRESSED,
            &mut ctx,
        )
        .ok()?;
    CombKey::from_sec1(&sec1)
}

/// ECDSA P-384 over SHA-384 of the received bytes 0x000..0x2A0, with the key's comb table when
/// it has one.
fn verify_report_signature(
    report: &Report,
    key: &EcKey<Public>,
    comb: Option<&CombKey>,
) -> Result<bool, VerifyError> {
    let (r, s) = report.fields().signature.to_be();
    let digest = openssl::sha::sha384(report.signed_bytes());
    if let Some(comb) = comb {
        return Ok(comb.verify_prehash(&digest, &r, &s));
    }
    let crypto = |e: openssl::error::ErrorStack| VerifyError::Crypto(e.to_string());
    let sig = EcdsaSig::from_private_components(
        BigNum::from_slice(&r).map_err(crypto)?,
        BigNum::from_slice(&s).map_err(crypto)?,
    )
    .map_err(crypto)?;
    Ok(sig.verify(&digest, key).unwrap_or(false))
}
