//! ATTESTATION_REPORT (SEV-SNP ABI spec 56860, table "ATTESTATION_REPORT"), versions 2 to 5.
//!
//! Field names and order follow the ABI table. Parsing keeps the received bytes: the signature is
//! always checked over those, never over a re-encoding (see [`Report::signed_bytes`]).

use std::fmt;
use std::str::FromStr;

use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};

use crate::error::{ProductNameError, ReportError, TcbmError};

/// Size of an ATTESTATION_REPORT.
pub const REPORT_LEN: usize = 0x4A0;
/// The signature covers bytes `0x000..0x2A0`.
pub const SIGNED_LEN: usize = 0x2A0;

/// AMD EPYC generation, which decides TCB layout and root of trust.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Product {
    /// EPYC 7003 (family 0x19, models 0x00-0x0F).
    Milan,
    /// EPYC 9004 / Siena (family 0x19, models 0x10-0x1F, 0xA0-0xAF).
    Genoa,
    /// EPYC 9005 (family 0x1A, models 0x00-0x11).
    Turin,
}

impl Product {
    /// All products with embedded roots.
    pub const ALL: [Product; 3] = [Product::Milan, Product::Genoa, Product::Turin];

    /// Product from the CPUID family and model a v3+ report carries.
    pub fn from_cpuid(family: u8, model: u8) -> Option<Self> {
        match (family, model) {
            (0x19, 0x00..=0x0F) => Some(Product::Milan),
            (0x19, 0x10..=0x1F) | (0x19, 0xA0..=0xAF) => Some(Product::Genoa),
            (0x1A, 0x00..=0x11) => Some(Product::Turin),
            _ => None,
        }
    }

    /// Product from a VCEK/VLEK `productName` extension ("Milan-B0", "Genoa", "Turin").
    pub fn from_product_name(name: &str) -> Option<Self> {
        let base = name.split('-').next().unwrap_or(name);
        base.parse().ok()
    }

    /// AMD's spelling, as in KDS URLs.
    pub fn name(self) -> &'static str {
        match self {
            Product::Milan => "Milan",
            Product::Genoa => "Genoa",
            Product::Turin => "Turin",
        }
    }

    /// TCB_VERSION layout used by this product.
    pub fn tcb_layout(self) -> TcbLayout {
        match self {
            Product::Turin => TcbLayout::Turin,
            _ => TcbLayout::MilanGenoa,
        }
    }
}

impl fmt::Display for Product {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Product {
    type Err = ProductNameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "milan" => Ok(Product::Milan),
            "genoa" => Ok(Product::Genoa),
            "turin" => Ok(Product::Turin),
            other => Err(ProductNameError {
                name: other.to_string(),
            }),
        }
    }
}

/// Which byte holds which component of a TCB_VERSION.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcbLayout {
    /// byte0 BOOT_LOADER, byte1 TEE, bytes2-5 reserved, byte6 SNP, byte7 MICROCODE.
    MilanGenoa,
    /// byte0 FMC, byte1 BOOT_LOADER, byte2 TEE, byte3 SNP, bytes4-6 reserved, byte7 MICROCODE.
    Turin,
}

/// A TCB_VERSION: security patch levels of each firmware component.
///
/// Kept as its 8 raw bytes plus the layout, so re-encoding is exact. Deliberately not `Ord`: TCBs
/// compare component by component (see [`TcbVersion::meets_minimum`]), never lexicographically.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcbVersion {
    raw: [u8; 8],
    layout: TcbLayout,
}

/// A named TCB component, for comparisons and messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcbComponent {
    /// Boot loader SPL.
    Bootloader,
    /// TEE (PSP OS) SPL.
    Tee,
    /// SNP firmware SPL.
    Snp,
    /// CPU microcode SPL.
    Microcode,
    /// Firmware mask ROM (Turin only).
    Fmc,
}

impl TcbComponent {
    /// Name used in JSON and messages.
    pub fn name(self) -> &'static str {
        match self {
            TcbComponent::Bootloader => "bootloader",
            TcbComponent::Tee => "tee",
            TcbComponent::Snp => "snp",
            TcbComponent::Microcode => "microcode",
            TcbComponent::Fmc => "fmc",
        }
    }
}

impl TcbVersion {
    /// Decode raw bytes with a given layout.
    pub fn from_bytes(raw: [u8; 8], layout: TcbLayout) -> Self {
        TcbVersion { raw, layout }
    }

    /// Build a Milan/Genoa TCB from its components.
    pub fn milan_genoa(bootloader: u8, tee: u8, snp: u8, microcode: u8) -> Self {
        TcbVersion {
            raw: [bootloader, tee, 0, 0, 0, 0, snp, microcode],
            layout: TcbLayout::MilanGenoa,
        }
    }

    /// Build a Turin TCB from its components.
    pub fn turin(fmc: u8, bootloader: u8, tee: u8, snp: u8, microcode: u8) -> Self {
        TcbVersion {
            raw: [fmc, bootloader, tee, snp, 0, 0, 0, microcode],
            layout: TcbLayout::Turin,
        }
    }

    /// Raw bytes as stored in the report.
    pub fn raw(&self) -> [u8; 8] {
        self.raw
    }

    /// Layout used to decode.
    pub fn layout(&self) -> TcbLayout {
        self.layout
    }

    /// Same bytes, read with another layout.
    pub fn with_layout(self, layout: TcbLayout) -> Self {
        TcbVersion { layout, ..self }
    }

    /// One component's SPL (`None` for FMC on Milan/Genoa).
    pub fn get(&self, c: TcbComponent) -> Option<u8> {
        let r = &self.raw;
        match (self.layout, c) {
            (TcbLayout::MilanGenoa, TcbComponent::Bootloader) => Some(r[0]),
            (TcbLayout::MilanGenoa, TcbComponent::Tee) => Some(r[1]),
            (TcbLayout::MilanGenoa, TcbComponent::Snp) => Some(r[6]),
            (TcbLayout::MilanGenoa, TcbComponent::Fmc) => None,
            (TcbLayout::Turin, TcbComponent::Fmc) => Some(r[0]),
            (TcbLayout::Turin, TcbComponent::Bootloader) => Some(r[1]),
            (TcbLayout::Turin, TcbComponent::Tee) => Some(r[2]),
            (TcbLayout::Turin, TcbComponent::Snp) => Some(r[3]),
            (_, TcbComponent::Microcode) => Some(r[7]),
        }
    }

    /// Components present in this layout.
    pub fn components(&self) -> &'static [TcbComponent] {
        match self.layout {
            TcbLayout::MilanGenoa => &[
                TcbComponent::Bootloader,
                TcbComponent::Tee,
                TcbComponent::Snp,
                TcbComponent::Microcode,
            ],
            TcbLayout::Turin => &[
                TcbComponent::Fmc,
                TcbComponent::Bootloader,
                TcbComponent::Tee,
                TcbComponent::Snp,
                TcbComponent::Microcode,
            ],
        }
    }

    /// Every component at least the minimum's; on failure, the first component below it.
    pub fn meets_minimum(&self, min: &TcbVersion) -> Result<(), (TcbComponent, u8, u8)> {
        for &c in self.components() {
            let (got, want) = (self.get(c).unwrap_or(0), min.get(c).unwrap_or(0));
            if got < want {
                return Err((c, got, want));
            }
        }
        Ok(())
    }

    /// Parse Azure THIM's `tcbm`: 16 hex digits of the raw bytes in reversed order.
    pub fn from_tcbm(tcbm: &str, layout: TcbLayout) -> Result<Self, TcbmError> {
        let bytes = hex::decode(tcbm.trim()).map_err(|_| TcbmError::NotHex {
            tcbm: tcbm.to_string(),
        })?;
        let mut raw: [u8; 8] = bytes.try_into().map_err(|_| TcbmError::Length {
            tcbm: tcbm.to_string(),
        })?;
        raw.reverse();
        Ok(TcbVersion { raw, layout })
    }
}

impl Serialize for TcbVersion {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let comps = self.components();
        let mut m = s.serialize_map(Some(comps.len() + 1))?;
        for &c in comps {
            m.serialize_entry(c.name(), &self.get(c).unwrap_or(0))?;
        }
        m.serialize_entry("raw", &hex::encode(self.raw))?;
        m.end()
    }
}

/// Guest POLICY (ABI table "Guest Policy Structure").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestPolicy(pub u64);

impl GuestPolicy {
    /// ABI minor version required.
    pub fn abi_minor(self) -> u8 {
        self.0 as u8
    }
    /// ABI major version required.
    pub fn abi_major(self) -> u8 {
        (self.0 >> 8) as u8
    }
    fn bit(self, n: u32) -> bool {
        self.0 >> n & 1 == 1
    }
    /// SMT allowed.
    pub fn smt(self) -> bool {
        self.bit(16)
    }
    /// Migration agent allowed.
    pub fn migrate_ma(self) -> bool {
        self.bit(18)
    }
    /// Debugging allowed: a debuggable guest's memory is readable by the host.
    pub fn debug(self) -> bool {
        self.bit(19)
    }
    /// Guest restricted to a single socket.
    pub fn single_socket(self) -> bool {
        self.bit(20)
    }
}

impl Serialize for GuestPolicy {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("abi_major", &self.abi_major())?;
        m.serialize_entry("abi_minor", &self.abi_minor())?;
        m.serialize_entry("smt", &self.smt())?;
        m.serialize_entry("migrate_ma", &self.migrate_ma())?;
        m.serialize_entry("debug", &self.debug())?;
        m.serialize_entry("single_socket", &self.single_socket())?;
        for (bit, name) in [
            (21, "cxl_allow"),
            (22, "mem_aes_256_xts"),
            (23, "rapl_dis"),
            (24, "ciphertext_hiding_dram"),
            (25, "page_swap_disable"),
        ] {
            m.serialize_entry(name, &self.bit(bit))?;
        }
        m.end()
    }
}

/// PLATFORM_INFO bits. Bits not defined below are reported, never fatal: newer firmware sets them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlatformInfo(pub u64);

impl PlatformInfo {
    const DEFINED: [(u32, &'static str); 7] = [
        (0, "smt_en"),
        (1, "tsme_en"),
        (2, "ecc_en"),
        (3, "rapl_dis"),
        (4, "ciphertext_hiding_en"),
        (5, "alias_check_complete"),
        (7, "sev_tio_en"),
    ];

    /// Set bits the ABI table marks reserved.
    pub fn reserved_bits(self) -> u64 {
        let defined: u64 = Self::DEFINED.iter().map(|(b, _)| 1u64 << b).sum();
        self.0 & !defined
    }
}

impl Serialize for PlatformInfo {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        for (bit, name) in Self::DEFINED {
            m.serialize_entry(name, &(self.0 >> bit & 1 == 1))?;
        }
        m.serialize_entry("reserved_bits", &format!("{:#x}", self.reserved_bits()))?;
        m.end()
    }
}

/// Which key signed the report (SIGNING_KEY, bits 2-4 of the signer info word).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SigningKey {
    /// Versioned Chip Endorsement Key.
    Vcek,
    /// Versioned Loaded Endorsement Key.
    Vlek,
    /// The report is unsigned.
    None,
    /// A value the ABI reserves.
    Reserved(u8),
}

impl SigningKey {
    /// Lowercase name ("vcek", "vlek").
    pub fn name(self) -> &'static str {
        match self {
            SigningKey::Vcek => "vcek",
            SigningKey::Vlek => "vlek",
            SigningKey::None => "none",
            SigningKey::Reserved(_) => "reserved",
        }
    }
}

/// The signer info word at 0x048 (AUTHOR_KEY_EN, MASK_CHIP_KEY, SIGNING_KEY).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SignerInfo(pub u32);

impl SignerInfo {
    /// Build from its fields.
    pub fn new(author_key_en: bool, mask_chip_key: bool, signing_key: SigningKey) -> Self {
        let sk: u32 = match signing_key {
            SigningKey::Vcek => 0,
            SigningKey::Vlek => 1,
            SigningKey::None => 7,
            SigningKey::Reserved(v) => u32::from(v & 7),
        };
        SignerInfo(u32::from(author_key_en) | u32::from(mask_chip_key) << 1 | sk << 2)
    }
    /// AUTHOR_KEY_EN.
    pub fn author_key_en(self) -> bool {
        self.0 & 1 == 1
    }
    /// MASK_CHIP_KEY.
    pub fn mask_chip_key(self) -> bool {
        self.0 >> 1 & 1 == 1
    }
    /// SIGNING_KEY.
    pub fn signing_key(self) -> SigningKey {
        match (self.0 >> 2 & 7) as u8 {
            0 => SigningKey::Vcek,
            1 => SigningKey::Vlek,
            7 => SigningKey::None,
            v => SigningKey::Reserved(v),
        }
    }
    /// Bits 5-31 (must be zero per the ABI; reported, not fatal).
    pub fn reserved_bits(self) -> u32 {
        self.0 & !0x1F
    }
}

impl Serialize for SignerInfo {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(3))?;
        m.serialize_entry("author_key_en", &self.author_key_en())?;
        m.serialize_entry("mask_chip_key", &self.mask_chip_key())?;
        m.serialize_entry("signing_key", &self.signing_key().name())?;
        m.end()
    }
}

/// CPUID_FAM_ID, CPUID_MOD_ID, CPUID_STEP (report version 3 and later).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Cpuid {
    /// Combined family.
    pub fam_id: u8,
    /// Combined model.
    pub mod_id: u8,
    /// Stepping.
    pub step: u8,
}

/// The ECDSA P-384 signature as stored: R and S, 72 bytes each, little-endian.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Signature {
    /// R, little-endian, upper 24 bytes zero.
    pub r: [u8; 72],
    /// S, little-endian, upper 24 bytes zero.
    pub s: [u8; 72],
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Signature {{ r: {}, s: {} }}",
            hex::encode(self.r),
            hex::encode(self.s)
        )
    }
}

impl Signature {
    /// R and S as 48-byte big-endian integers.
    pub fn to_be(&self) -> ([u8; 48], [u8; 48]) {
        let mut r = [0u8; 48];
        let mut s = [0u8; 48];
        for i in 0..48 {
            r[i] = self.r[47 - i];
            s[i] = self.s[47 - i];
        }
        (r, s)
    }

    /// From 48-byte big-endian integers (left-padded by the caller).
    pub fn from_be(r_be: &[u8; 48], s_be: &[u8; 48]) -> Self {
        let mut r = [0u8; 72];
        let mut s = [0u8; 72];
        for i in 0..48 {
            r[i] = r_be[47 - i];
            s[i] = s_be[47 - i];
        }
        Signature { r, s }
    }
}

/// ATTESTATION_REPORT fields, named and ordered as in the ABI table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AttestationReport {
    /// 0x000 VERSION: 2, 3 (adds CPUID), 5 (adds mitigation vectors).
    pub version: u32,
    /// 0x004 GUEST_SVN.
    pub guest_svn: u32,
    /// 0x008 POLICY.
    #[serde(serialize_with = "ser_policy")]
    pub policy: GuestPolicy,
    /// 0x010 FAMILY_ID.
    #[serde(serialize_with = "hex::serde::serialize")]
    pub family_id: [u8; 16],
    /// 0x020 IMAGE_ID.
    #[serde(serialize_with = "hex::serde::serialize")]
    pub image_id: [u8; 16],
    /// 0x030 VMPL.
    pub vmpl: u32,
    /// 0x034 SIGNATURE_ALGO (1 = ECDSA P-384 with SHA-384).
    pub signature_algo: u32,
    /// 0x038 CURRENT_TCB.
    pub current_tcb: TcbVersion,
    /// 0x040 PLATFORM_INFO.
    #[serde(serialize_with = "ser_platform_info")]
    pub platform_info: PlatformInfo,
    /// 0x048 AUTHOR_KEY_EN, MASK_CHIP_KEY, SIGNING_KEY.
    pub signer_info: SignerInfo,
    /// 0x050 REPORT_DATA (guest-supplied).
    #[serde(serialize_with = "hex::serde::serialize")]
    pub report_data: [u8; 64],
    /// 0x090 MEASUREMENT (launch digest).
    #[serde(serialize_with = "hex::serde::serialize")]
    pub measurement: [u8; 48],
    /// 0x0C0 HOST_DATA (set by the host at launch).
    #[serde(serialize_with = "hex::serde::serialize")]
    pub host_data: [u8; 32],
    /// 0x0E0 ID_KEY_DIGEST.
    #[serde(serialize_with = "hex::serde::serialize")]
    pub id_key_digest: [u8; 48],
    /// 0x110 AUTHOR_KEY_DIGEST.
    #[serde(serialize_with = "hex::serde::serialize")]
    pub author_key_digest: [u8; 48],
    /// 0x140 REPORT_ID.
    #[serde(serialize_with = "hex::serde::serialize")]
    pub report_id: [u8; 32],
    /// 0x160 REPORT_ID_MA.
    #[serde(serialize_with = "hex::serde::serialize")]
    pub report_id_ma: [u8; 32],
    /// 0x180 REPORTED_TCB (the VCEK is issued for this TCB).
    pub reported_tcb: TcbVersion,
    /// 0x188 CPUID_FAM_ID, CPUID_MOD_ID, CPUID_STEP (version 3+).
    pub cpuid: Option<Cpuid>,
    /// 0x1A0 CHIP_ID.
    #[serde(serialize_with = "hex::serde::serialize")]
    pub chip_id: [u8; 64],
    /// 0x1E0 COMMITTED_TCB.
    pub committed_tcb: TcbVersion,
    /// 0x1E8 CURRENT_BUILD.
    pub current_build: u8,
    /// 0x1E9 CURRENT_MINOR.
    pub current_minor: u8,
    /// 0x1EA CURRENT_MAJOR.
    pub current_major: u8,
    /// 0x1EC COMMITTED_BUILD.
    pub committed_build: u8,
    /// 0x1ED COMMITTED_MINOR.
    pub committed_minor: u8,
    /// 0x1EE COMMITTED_MAJOR.
    pub committed_major: u8,
    /// 0x1F0 LAUNCH_TCB.
    pub launch_tcb: TcbVersion,
    /// 0x1F8 LAUNCH_MIT_VECTOR (version 5).
    pub launch_mit_vector: Option<u64>,
    /// 0x200 CURRENT_MIT_VECTOR (version 5).
    pub current_mit_vector: Option<u64>,
    /// 0x2A0 SIGNATURE.
    #[serde(serialize_with = "ser_signature")]
    pub signature: Signature,
}

fn ser_policy<S: Serializer>(p: &GuestPolicy, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(p.0)
}

fn ser_platform_info<S: Serializer>(p: &PlatformInfo, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(p.0)
}

fn ser_signature<S: Serializer>(sig: &Signature, s: S) -> Result<S::Ok, S::Error> {
    let (r, sv) = sig.to_be();
    let mut m = s.serialize_map(Some(2))?;
    m.serialize_entry("r", &hex::encode(r))?;
    m.serialize_entry("s", &hex::encode(sv))?;
    m.end()
}

/// Bounded little-endian reader over the fixed-size report.
struct Reader<'a> {
    buf: &'a [u8; REPORT_LEN],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        out.copy_from_slice(&self.buf[self.pos..self.pos + N]);
        self.pos += N;
        out
    }
    fn u8(&mut self) -> u8 {
        self.array::<1>()[0]
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.array())
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.array())
    }
    /// Skip `n` bytes that must be zero.
    fn zeros(&mut self, n: usize, field: &'static str) -> Result<(), ReportError> {
        let area = &self.buf[self.pos..self.pos + n];
        if let Some(i) = area.iter().position(|&b| b != 0) {
            return Err(ReportError::ReservedNonZero {
                offset: self.pos + i,
                field,
            });
        }
        self.pos += n;
        Ok(())
    }
    fn seek(&mut self, pos: usize) {
        debug_assert!(pos >= self.pos);
        self.pos = pos;
    }
}

impl AttestationReport {
    /// TCB layout for this report: Turin if v3+ with CPUID family 0x1A, else Milan/Genoa.
    pub fn tcb_layout(&self) -> TcbLayout {
        match self.cpuid {
            Some(c) if c.fam_id == 0x1A => TcbLayout::Turin,
            _ => TcbLayout::MilanGenoa,
        }
    }

    /// Product from CPUID (v3+ reports only).
    pub fn product_from_cpuid(&self) -> Option<Product> {
        self.cpuid
            .and_then(|c| Product::from_cpuid(c.fam_id, c.mod_id))
    }

    /// Parse exactly 1184 bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ReportError> {
        let buf: &[u8; REPORT_LEN] = bytes.try_into().map_err(|_| ReportError::Length {
            expected: REPORT_LEN,
            got: bytes.len(),
        })?;
        let mut r = Reader { buf, pos: 0 };
        let version = r.u32();
        if !(2..=5).contains(&version) {
            return Err(ReportError::UnsupportedVersion(version));
        }
        let guest_svn = r.u32();
        let policy = GuestPolicy(r.u64());
        let family_id = r.array();
        let image_id = r.array();
        let vmpl = r.u32();
        let signature_algo = r.u32();
        let current_tcb = r.array();
        let platform_info = PlatformInfo(r.u64());
        let signer_info = SignerInfo(r.u32());
        r.zeros(4, "reserved 0x04C")?;
        let report_data = r.array();
        let measurement = r.array();
        let host_data = r.array();
        let id_key_digest = r.array();
        let author_key_digest = r.array();
        let report_id = r.array();
        let report_id_ma = r.array();
        let reported_tcb = r.array();
        let cpuid = if version >= 3 {
            let fam_id = r.u8();
            let mod_id = r.u8();
            let step = r.u8();
            Some(Cpuid {
                fam_id,
                mod_id,
                step,
            })
        } else {
            r.zeros(3, "CPUID (must be zero before version 3)")?;
            None
        };
        r.zeros(0x1A0 - 0x18B, "reserved 0x18B")?;
        let chip_id = r.array();
        let committed_tcb = r.array();
        let current_build = r.u8();
        let current_minor = r.u8();
        let current_major = r.u8();
        r.zeros(1, "reserved 0x1EB")?;
        let committed_build = r.u8();
        let committed_minor = r.u8();
        let committed_major = r.u8();
        r.zeros(1, "reserved 0x1EF")?;
        let launch_tcb = r.array();
        let (launch_mit_vector, current_mit_vector) = if version >= 5 {
            (Some(r.u64()), Some(r.u64()))
        } else {
            (None, None)
        };
        let reserved_from = r.pos;
        r.zeros(SIGNED_LEN - reserved_from, "reserved before SIGNATURE")?;
        r.seek(SIGNED_LEN);
        let sig_r: [u8; 72] = r.array();
        let sig_s: [u8; 72] = r.array();
        for (part, at) in [(&sig_r, SIGNED_LEN), (&sig_s, SIGNED_LEN + 72)] {
            if let Some(i) = part[48..].iter().position(|&b| b != 0) {
                return Err(ReportError::ReservedNonZero {
                    offset: at + 48 + i,
                    field: "SIGNATURE (upper bytes of R or S)",
                });
            }
        }
        r.zeros(REPORT_LEN - r.pos, "SIGNATURE (reserved)")?;

        let mut report = AttestationReport {
            version,
            guest_svn,
            policy,
            family_id,
            image_id,
            vmpl,
            signature_algo,
            current_tcb: TcbVersion::from_bytes(current_tcb, TcbLayout::MilanGenoa),
            platform_info,
            signer_info,
            report_data,
            measurement,
            host_data,
            id_key_digest,
            author_key_digest,
            report_id,
            report_id_ma,
            reported_tcb: TcbVersion::from_bytes(reported_tcb, TcbLayout::MilanGenoa),
            cpuid,
            chip_id,
            committed_tcb: TcbVersion::from_bytes(committed_tcb, TcbLayout::MilanGenoa),
            current_build,
            current_minor,
            current_major,
            committed_build,
            committed_minor,
            committed_major,
            launch_tcb: TcbVersion::from_bytes(launch_tcb, TcbLayout::MilanGenoa),
            launch_mit_vector,
            current_mit_vector,
            signature: Signature { r: sig_r, s: sig_s },
        };
        report.set_tcb_layout(report.tcb_layout());
        Ok(report)
    }

    /// Re-read every TCB_VERSION with `layout` (e.g. once the product is known from the VCEK).
    pub fn set_tcb_layout(&mut self, layout: TcbLayout) {
        for t in [
            &mut self.current_tcb,
            &mut self.reported_tcb,
            &mut self.committed_tcb,
            &mut self.launch_tcb,
        ] {
            *t = t.with_layout(layout);
        }
    }

    /// Encode to the 1184-byte wire form. Fields absent from `version` are written as zero.
    pub fn to_bytes(&self) -> [u8; REPORT_LEN] {
        let mut b = [0u8; REPORT_LEN];
        let mut put = |off: usize, v: &[u8]| b[off..off + v.len()].copy_from_slice(v);
        put(0x000, &self.version.to_le_bytes());
        put(0x004, &self.guest_svn.to_le_bytes());
        put(0x008, &self.policy.0.to_le_bytes());
        put(0x010, &self.family_id);
        put(0x020, &self.image_id);
        put(0x030, &self.vmpl.to_le_bytes());
        put(0x034, &self.signature_algo.to_le_bytes());
        put(0x038, &self.current_tcb.raw());
        put(0x040, &self.platform_info.0.to_le_bytes());
        put(0x048, &self.signer_info.0.to_le_bytes());
        put(0x050, &self.report_data);
        put(0x090, &self.measurement);
        put(0x0C0, &self.host_data);
        put(0x0E0, &self.id_key_digest);
        put(0x110, &self.author_key_digest);
        put(0x140, &self.report_id);
        put(0x160, &self.report_id_ma);
        put(0x180, &self.reported_tcb.raw());
        if let (Some(c), true) = (self.cpuid, self.version >= 3) {
            put(0x188, &[c.fam_id, c.mod_id, c.step]);
        }
        put(0x1A0, &self.chip_id);
        put(0x1E0, &self.committed_tcb.raw());
        put(
            0x1E8,
            &[self.current_build, self.current_minor, self.current_major],
        );
        put(
            0x1EC,
            &[
                self.committed_build,
                self.committed_minor,
                self.committed_major,
            ],
        );
        put(0x1F0, &self.launch_tcb.raw());
        if self.version >= 5 {
            put(0x1F8, &self.launch_mit_vector.unwrap_or(0).to_le_bytes());
            put(0x200, &self.current_mit_vector.unwrap_or(0).to_le_bytes());
        }
        put(SIGNED_LEN, &self.signature.r);
        put(SIGNED_LEN + 72, &self.signature.s);
        b
    }
}

/// A parsed report together with the exact bytes it was parsed from.
#[derive(Clone, Debug)]
pub struct Report {
    bytes: Box<[u8; REPORT_LEN]>,
    fields: AttestationReport,
}

impl Report {
    /// Parse 1184 raw bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ReportError> {
        let fields = AttestationReport::from_bytes(bytes)?;
        let mut raw = Box::new([0u8; REPORT_LEN]);
        raw.copy_from_slice(bytes);
        Ok(Report { bytes: raw, fields })
    }

    /// The parsed fields.
    pub fn fields(&self) -> &AttestationReport {
        &self.fields
    }

    /// The bytes as received.
    pub fn bytes(&self) -> &[u8; REPORT_LEN] {
        &self.bytes
    }

    /// The bytes the signature covers, exactly as received.
    pub fn signed_bytes(&self) -> &[u8] {
        &self.bytes[..SIGNED_LEN]
    }

    /// Re-read every TCB with another layout (product known only from the VCEK on v2 reports).
    pub fn set_tcb_layout(&mut self, layout: TcbLayout) {
        self.fields.set_tcb_layout(layout);
    }
}

#[cfg(test)]
mod tests;
