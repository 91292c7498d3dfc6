//! The emulated SEV-SNP secure processor.
//!
//! No TEE hardware is needed to run Coffer, so this crate plays AMD's part: on first use it makes a
//! development ARK (RSA-4096), ASK (RSA-4096) and per-chip, per-TCB VCEKs (P-384) whose certificates
//! carry the same extensions as AMD's, and it signs reports in the exact ABI format. Its root is a
//! separate trust anchor: `coffer-snp` accepts it only when emulation is explicitly allowed, and
//! reports the evidence as `emulated-snp`.
//!
//! State lives under `$COFFER_HOME/snp-emu/`; private keys are written with mode 0600.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod certgen;

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use coffer_snp::{
    AttestationReport, Certificate, Cpuid, GuestPolicy, PlatformInfo, Product, Report, Signature,
    SignerInfo, SigningKey, TcbVersion,
};
use openssl::ec::{EcGroup, EcKey};
use openssl::ecdsa::EcdsaSig;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::rsa::Rsa;

/// Errors of the emulated secure processor.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EmuError {
    /// Reading or writing the state directory failed.
    #[error("emulated secure processor state {path}: {source}")]
    Io {
        /// File or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Stored state is unreadable (corrupted or from an incompatible version).
    #[error("emulated secure processor state {path} is corrupt: {reason}")]
    Corrupt {
        /// File.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// Crypto backend failure.
    #[error("crypto: {0}")]
    Crypto(#[from] openssl::error::ErrorStack),
    /// Certificate encoding failure.
    #[error("certificate encoding: {0}")]
    Der(#[from] der::Error),
    /// Certificate decoding of what we just made failed.
    #[error(transparent)]
    Cert(#[from] coffer_snp::CertError),
    /// A report made here does not parse (a bug).
    #[error(transparent)]
    Report(#[from] coffer_snp::ReportError),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> EmuError + '_ {
    move |source| EmuError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What the guest and the host put into a report.
#[derive(Clone, Debug)]
pub struct ReportRequest {
    /// REPORT_DATA (guest-chosen, e.g. a hash of its runtime data).
    pub report_data: [u8; 64],
    /// HOST_DATA (fixed by the host at launch).
    pub host_data: [u8; 32],
    /// MEASUREMENT (launch digest).
    pub measurement: [u8; 48],
    /// VMPL of the requesting guest code.
    pub vmpl: u32,
    /// Guest POLICY.
    pub policy: u64,
    /// GUEST_SVN.
    pub guest_svn: u32,
    /// FAMILY_ID.
    pub family_id: [u8; 16],
    /// IMAGE_ID.
    pub image_id: [u8; 16],
    /// Product to emulate (decides report version and TCB layout).
    pub product: Product,
    /// TCB to report; `None` for the processor's default.
    pub tcb: Option<TcbVersion>,
    /// CHIP_ID; `None` for this processor's own.
    pub chip_id: Option<[u8; 64]>,
    /// Sign with the VCEK (default) or a VLEK (then CHIP_ID is zero, as in VLEK reports).
    pub signing_key: SigningKey,
}

impl Default for ReportRequest {
    fn default() -> Self {
        ReportRequest {
            report_data: [0; 64],
            host_data: [0; 32],
            measurement: [0; 48],
            vmpl: 0,
            // SMT allowed, reserved bit 17 set, ABI 0.0 minimum, no debug.
            policy: 0x30000,
            guest_svn: 0,
            family_id: [0; 16],
            image_id: [0; 16],
            product: Product::Milan,
            tcb: None,
            chip_id: None,
            signing_key: SigningKey::Vcek,
        }
    }
}

/// A report made by the emulator with the VCEK that signed it.
#[derive(Clone, Debug)]
pub struct EmulatedReport {
    /// The 1184 report bytes.
    pub report: Report,
    /// VCEK certificate for the report's chip and TCB.
    pub vcek: Certificate,
    /// Chain PEM: VCEK, ASK, ARK.
    pub chain_pem: String,
}

/// Default TCB of an emulated part: boot loader 3, TEE 0, SNP 8, microcode 115 (Turin: FMC 1).
pub fn default_tcb(product: Product) -> TcbVersion {
    match product {
        Product::Turin => TcbVersion::turin(1, 3, 0, 8, 115),
        _ => TcbVersion::milan_genoa(3, 0, 8, 115),
    }
}

/// The emulated secure processor and its stored keys.
pub struct EmulatedSp {
    dir: PathBuf,
    ark: Certificate,
    ask: Certificate,
    ask_key: PKey<Private>,
    /// The ASVK, made on first VLEK use (an RSA-4096 key nobody needs until then).
    asvk: std::sync::OnceLock<(Certificate, PKey<Private>)>,
    chip_id: [u8; 64],
}

const STATE_DIR: &str = "snp-emu";

impl EmulatedSp {
    /// Directory of the state under `home`.
    pub fn state_dir(home: &Path) -> PathBuf {
        home.join(STATE_DIR)
    }

    /// Open the processor under `home`, creating its root, ASK and chip id on first use.
    ///
    /// Creation is atomic: a half-made state directory is never visible, and two processes racing
    /// to create it end up sharing one.
    pub fn open_or_create(home: &Path) -> Result<Self, EmuError> {
        let dir = Self::state_dir(home);
        if !dir.join("ask.pem").exists() {
            fs::create_dir_all(home).map_err(io_err(home))?;
            let tmp = home.join(format!(".{STATE_DIR}.tmp-{}", unique_suffix()?));
            let _ = fs::remove_dir_all(&tmp);
            fs::create_dir_all(tmp.join("vcek")).map_err(io_err(&tmp))?;
            let made = certgen::make_root(&tmp);
            if let Err(e) = made {
                let _ = fs::remove_dir_all(&tmp);
                return Err(e);
            }
            if fs::rename(&tmp, &dir).is_err() {
                // Another process created it first; use theirs.
                let _ = fs::remove_dir_all(&tmp);
            }
        }
        Self::open(&dir)
    }

    /// The development root (ARK, ASK) if this home has one, without creating it.
    pub fn existing_root(
        home: &Path,
    ) -> Result<Option<(Certificate, Certificate, Option<Certificate>)>, EmuError> {
        let dir = Self::state_dir(home);
        if !dir.join("ask.pem").exists() {
            return Ok(None);
        }
        let asvk = dir.join("asvk.pem");
        let asvk = if asvk.exists() {
            Some(read_cert(&asvk)?)
        } else {
            None
        };
        Ok(Some((
            read_cert(&dir.join("ark.pem"))?,
            read_cert(&dir.join("ask.pem"))?,
            asvk,
        )))
    }

    fn open(dir: &Path) -> Result<Self, EmuError> {
        let ark = read_cert(&dir.join("ark.pem"))?;
        let ask = read_cert(&dir.join("ask.pem"))?;
        let ask_key = read_key(&dir.join("ask.key"))?;
        let chip_path = dir.join("chip_id");
        let chip_hex = fs::read_to_string(&chip_path).map_err(io_err(&chip_path))?;
        let chip_id: [u8; 64] = hex::decode(chip_hex.trim())
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or_else(|| EmuError::Corrupt {
                path: chip_path.clone(),
                reason: "expected 128 hex digits".into(),
            })?;
        Ok(EmulatedSp {
            dir: dir.to_path_buf(),
            ark,
            ask,
            ask_key,
            asvk: std::sync::OnceLock::new(),
            chip_id,
        })
    }

    /// The development ARK.
    pub fn ark(&self) -> &Certificate {
        &self.ark
    }

    /// The development ASK.
    pub fn ask(&self) -> &Certificate {
        &self.ask
    }

    /// The development ASVK (signs VLEKs), made on first use.
    pub fn asvk(&self) -> Result<&Certificate, EmuError> {
        Ok(&self.asvk_pair()?.0)
    }

    fn asvk_pair(&self) -> Result<&(Certificate, PKey<Private>), EmuError> {
        if let Some(p) = self.asvk.get() {
            return Ok(p);
        }
        if !self.dir.join("asvk.pem").exists() {
            let ark_key = read_key(&self.dir.join("ark.key"))?;
            // Made in a scratch directory and renamed, so concurrent first uses agree on one.
            let tmp = self.dir.join(format!(".asvk-{}", unique_suffix()?));
            fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
            certgen::make_asvk(&tmp, &self.ark, &ark_key)?;
            if !self.dir.join("asvk.pem").exists() {
                fs::rename(tmp.join("asvk.key"), self.dir.join("asvk.key"))
                    .map_err(io_err(&self.dir))?;
                fs::rename(tmp.join("asvk.pem"), self.dir.join("asvk.pem"))
                    .map_err(io_err(&self.dir))?;
            }
            let _ = fs::remove_dir_all(&tmp);
        }
        let pair = (
            read_cert(&self.dir.join("asvk.pem"))?,
            read_key(&self.dir.join("asvk.key"))?,
        );
        Ok(self.asvk.get_or_init(|| pair))
    }

    /// This processor's CHIP_ID.
    pub fn chip_id(&self) -> [u8; 64] {
        self.chip_id
    }

    /// One file per VCEK holding its certificate then its private key (mode 0600), written
    /// atomically so that concurrent first uses never pair one key with another's certificate.
    fn vcek_path(&self, product: Product, chip_id: &[u8; 64], tcb: &TcbVersion) -> PathBuf {
        let stem = format!(
            "{}-{}-{}",
            product.name().to_ascii_lowercase(),
            hex::encode(&chip_id[..16]),
            hex::encode(tcb.raw())
        );
        self.dir.join("vcek").join(format!("{stem}.pem"))
    }

    /// The VCEK already issued for this chip and TCB, if any (used by verifiers given no certs).
    pub fn find_vcek(
        &self,
        product: Product,
        chip_id: &[u8; 64],
        tcb: &TcbVersion,
    ) -> Result<Option<Certificate>, EmuError> {
        let path = self.vcek_path(product, chip_id, tcb);
        if path.exists() {
            Ok(Some(read_vcek(&path)?.0))
        } else {
            Ok(None)
        }
    }

    /// The VCEK (certificate and key) for a chip and TCB, issued on first use.
    fn vcek(
        &self,
        product: Product,
        chip_id: &[u8; 64],
        tcb: &TcbVersion,
    ) -> Result<(Certificate, EcKey<Private>), EmuError> {
        let path = self.vcek_path(product, chip_id, tcb);
        if !path.exists() {
            let group = EcGroup::from_curve_name(Nid::SECP384R1)?;
            let pkey = PKey::from_ec_key(EcKey::generate(&group)?)?;
            let cert = certgen::make_vcek(&self.ask, &self.ask_key, &pkey, product, chip_id, tcb)?;
            let mut both = cert.to_pem().into_bytes();
            both.extend_from_slice(&pkey.private_key_to_pem_pkcs8()?);
            write_private(&path, &both)?;
        }
        read_vcek(&path)
    }

    fn vlek_path(&self, product: Product, tcb: &TcbVersion) -> PathBuf {
        self.dir.join("vcek").join(format!(
            "vlek-{}-{}.pem",
            product.name().to_ascii_lowercase(),
            hex::encode(tcb.raw())
        ))
    }

    /// The VLEK already issued for this product and TCB, if any.
    pub fn find_vlek(
        &self,
        product: Product,
        tcb: &TcbVersion,
    ) -> Result<Option<Certificate>, EmuError> {
        let path = self.vlek_path(product, tcb);
        if path.exists() {
            Ok(Some(read_vcek(&path)?.0))
        } else {
            Ok(None)
        }
    }

    /// The VLEK for a product and TCB (one per emulated "cloud provider"), issued on first use.
    fn vlek(
        &self,
        product: Product,
        tcb: &TcbVersion,
    ) -> Result<(Certificate, EcKey<Private>), EmuError> {
        let path = self.vlek_path(product, tcb);
        if !path.exists() {
            let group = EcGroup::from_curve_name(Nid::SECP384R1)?;
            let pkey = PKey::from_ec_key(EcKey::generate(&group)?)?;
            let (asvk, asvk_key) = self.asvk_pair()?;
            let cert = certgen::make_vlek(asvk, asvk_key, &pkey, product, tcb)?;
            let mut both = cert.to_pem().into_bytes();
            both.extend_from_slice(&pkey.private_key_to_pem_pkcs8()?);
            write_private(&path, &both)?;
        }
        read_vcek(&path)
    }

    /// Produce a signed report.
    pub fn report(&self, req: &ReportRequest) -> Result<EmulatedReport, EmuError> {
        let tcb = req.tcb.unwrap_or_else(|| default_tcb(req.product));
        let tcb = tcb.with_layout(req.product.tcb_layout());
        let vlek = req.signing_key == SigningKey::Vlek;
        // VLEK reports carry no CHIP_ID.
        let chip_id = if vlek {
            [0u8; 64]
        } else {
            req.chip_id.unwrap_or(self.chip_id)
        };
        let (vcek, key) = if vlek {
            self.vlek(req.product, &tcb)?
        } else {
            self.vcek(req.product, &chip_id, &tcb)?
        };
        let intermediate = if vlek { self.asvk()? } else { &self.ask };
        let (version, cpuid, mit) = match req.product {
            Product::Milan => (
                3,
                Cpuid {
                    fam_id: 0x19,
                    mod_id: 0x01,
                    step: 0x01,
                },
                None,
            ),
            Product::Genoa => (
                3,
                Cpuid {
                    fam_id: 0x19,
                    mod_id: 0x11,
                    step: 0x01,
                },
                None,
            ),
            Product::Turin => (
                5,
                Cpuid {
                    fam_id: 0x1A,
                    mod_id: 0x02,
                    step: 0x00,
                },
                Some(0x3f),
            ),
        };
        let mut report_id = [0u8; 32];
        openssl::rand::rand_bytes(&mut report_id)?;
        let mut fields = AttestationReport {
            version,
            guest_svn: req.guest_svn,
            policy: GuestPolicy(req.policy),
            family_id: req.family_id,
            image_id: req.image_id,
            vmpl: req.vmpl,
            signature_algo: 1,
            current_tcb: tcb,
            platform_info: PlatformInfo(0x1),
            signer_info: SignerInfo::new(
                false,
                false,
                if vlek {
                    SigningKey::Vlek
                } else {
                    SigningKey::Vcek
                },
            ),
            report_data: req.report_data,
            measurement: req.measurement,
            host_data: req.host_data,
            id_key_digest: [0; 48],
            author_key_digest: [0; 48],
            report_id,
            report_id_ma: [0xff; 32],
            reported_tcb: tcb,
            cpuid: Some(cpuid),
            chip_id,
            committed_tcb: tcb,
            current_build: 0,
            current_minor: 55,
            current_major: 1,
            committed_build: 0,
            committed_minor: 55,
            committed_major: 1,
            launch_tcb: tcb,
            launch_mit_vector: mit,
            current_mit_vector: mit,
            signature: Signature {
                r: [0; 72],
                s: [0; 72],
            },
        };
        let unsigned = fields.to_bytes();
        let digest = openssl::sha::sha384(&unsigned[..coffer_snp::SIGNED_LEN]);
        let sig = EcdsaSig::sign(&digest, &key)?;
        let r: [u8; 48] = be48(&sig.r().to_vec_padded(48)?);
        let s: [u8; 48] = be48(&sig.s().to_vec_padded(48)?);
        fields.signature = Signature::from_be(&r, &s);
        let report = Report::from_bytes(&fields.to_bytes())?;
        let chain_pem = format!(
            "{}{}{}",
            vcek.to_pem(),
            intermediate.to_pem(),
            self.ark.to_pem()
        );
        Ok(EmulatedReport {
            report,
            vcek,
            chain_pem,
        })
    }
}

/// A random suffix for temporary names, unique across processes and threads.
fn unique_suffix() -> Result<String, EmuError> {
    let mut b = [0u8; 8];
    openssl::rand::rand_bytes(&mut b)?;
    Ok(hex::encode(b))
}

fn be48(v: &[u8]) -> [u8; 48] {
    let mut out = [0u8; 48];
    let n = v.len().min(48);
    out[48 - n..].copy_from_slice(&v[v.len() - n..]);
    out
}

fn read_cert(path: &Path) -> Result<Certificate, EmuError> {
    let bytes = fs::read(path).map_err(io_err(path))?;
    Ok(Certificate::from_der_or_pem(
        &bytes,
        &path.display().to_string(),
    )?)
}

fn read_vcek(path: &Path) -> Result<(Certificate, EcKey<Private>), EmuError> {
    let text = fs::read_to_string(path).map_err(io_err(path))?;
    let corrupt = |reason: String| EmuError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    let split = text
        .find("-----BEGIN PRIVATE KEY-----")
        .ok_or_else(|| corrupt("no private key".into()))?;
    let cert =
        Certificate::from_der_or_pem(&text.as_bytes()[..split], &path.display().to_string())?;
    let key = PKey::private_key_from_pem(&text.as_bytes()[split..])
        .and_then(|k| k.ec_key())
        .map_err(|e| corrupt(e.to_string()))?;
    Ok((cert, key))
}

fn read_key(path: &Path) -> Result<PKey<Private>, EmuError> {
    let bytes = fs::read(path).map_err(io_err(path))?;
    PKey::private_key_from_pem(&bytes).map_err(|e| EmuError::Corrupt {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Write a private key: mode 0600 from creation, then renamed into place.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), EmuError> {
    write_atomic(path, bytes, 0o600)
}

fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), EmuError> {
    let tmp = path.with_extension(format!("tmp-{}", unique_suffix()?));
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io_err(&tmp))?;
    f.write_all(bytes).map_err(io_err(&tmp))?;
    f.sync_all().map_err(io_err(&tmp))?;
    fs::rename(&tmp, path).map_err(io_err(path))
}

pub(crate) fn new_rsa_4096() -> Result<PKey<Private>, EmuError> {
    Ok(PKey::from_rsa(Rsa::generate(4096)?)?)
}

pub(crate) use write_atomic as store;
pub(crate) use write_private as store_private;
