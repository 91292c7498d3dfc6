//! Certificates of the development hierarchy, shaped like AMD's: RSASSA-PSS SHA-384 salt 48
//! signatures, serial number 0 on the VCEK, and the 1.3.6.1.4.1.3704.1.x extensions.
//!
//! Built with x509-cert types and signed with openssl (the one crypto backend).

use std::path::Path;
use std::str::FromStr as _;
use std::time::Duration;

use coffer_snp::certs::oid;
use coffer_snp::{Certificate, Product, RsaPssParams, TcbComponent, TcbVersion};
use der::asn1::{BitString, Ia5String, OctetString};
use der::Encode as _;
use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Private};
use openssl::rsa::Padding;
use openssl::sign::{RsaPssSaltlen, Signer};
use x509_cert::ext::Extension;
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::spki::SubjectPublicKeyInfoOwned;
use x509_cert::time::{Time, Validity};
use x509_cert::TbsCertificate;

use crate::{new_rsa_4096, store, store_private, EmuError};

const ORG: &str = "OU=Development,O=Coffer emulated SEV-SNP (not AMD),C=US";

fn name(cn: &str) -> Result<Name, EmuError> {
    Name::from_str(&format!("CN={cn},{ORG}")).map_err(EmuError::Der)
}

fn time(unix: u64) -> Result<Time, EmuError> {
    Ok(Time::try_from(
        std::time::UNIX_EPOCH + Duration::from_secs(unix),
    )?)
}

fn ext(id: der::asn1::ObjectIdentifier, value: Vec<u8>) -> Result<Extension, EmuError> {
    Ok(Extension {
        extn_id: id,
        critical: false,
        extn_value: OctetString::new(value)?,
    })
}

/// Sign a TBS with `issuer_key` (RSASSA-PSS SHA-384, salt 48) into a parsed certificate.
fn sign(
    subject: &str,
    issuer: Name,
    subject_key: &PKey<impl openssl::pkey::HasPublic>,
    issuer_key: &PKey<Private>,
    years: u64,
    serial: u8,
    extensions: Vec<Extension>,
) -> Result<Certificate, EmuError> {
    let alg = RsaPssParams::sha384().algorithm_identifier()?;
    let now = coffer_snp::time::now();
    let tbs = TbsCertificate {
        version: x509_cert::Version::V3,
        serial_number: SerialNumber::new(&[serial])?,
        signature: alg.clone(),
        issuer,
        validity: Validity {
            not_before: time(now.saturating_sub(86_400))?,
            not_after: time(now + years * 365 * 86_400)?,
        },
        subject: name(subject)?,
        subject_public_key_info: {
            use der::Decode as _;
            SubjectPublicKeyInfoOwned::from_der(&subject_key.public_key_to_der()?)?
        },
        issuer_unique_id: None,
        subject_unique_id: None,
        extensions: (!extensions.is_empty()).then_some(extensions),
    };
    let tbs_der = tbs.to_der()?;
    let mut signer = Signer::new(MessageDigest::sha384(), issuer_key)?;
    signer.set_rsa_padding(Padding::PKCS1_PSS)?;
    signer.set_rsa_pss_saltlen(RsaPssSaltlen::custom(48))?;
    signer.set_rsa_mgf1_md(MessageDigest::sha384())?;
    signer.update(&tbs_der)?;
    let signature = signer.sign_to_vec()?;
    let cert = x509_cert::Certificate {
        tbs_certificate: tbs,
        signature_algorithm: alg,
        signature: BitString::from_bytes(&signature)?,
    };
    Ok(Certificate::from_der(&cert.to_der()?, subject)?)
}

/// Make ARK, ASK and chip id in `dir`.
pub(crate) fn make_root(dir: &Path) -> Result<(), EmuError> {
    let ark_key = new_rsa_4096()?;
    let ask_key = new_rsa_4096()?;
    let ark = sign(
        "ARK-Coffer-Emulated",
        name("ARK-Coffer-Emulated")?,
        &ark_key,
        &ark_key,
        25,
        1,
        vec![],
    )?;
    let ask = sign(
        "SEV-Coffer-Emulated",
        name("ARK-Coffer-Emulated")?,
        &ask_key,
        &ark_key,
        25,
        2,
        vec![],
    )?;
    let mut chip_id = [0u8; 64];
    openssl::rand::rand_bytes(&mut chip_id)?;
    store_private(&dir.join("ark.key"), &ark_key.private_key_to_pem_pkcs8()?)?;
    store_private(&dir.join("ask.key"), &ask_key.private_key_to_pem_pkcs8()?)?;
    store(&dir.join("ark.pem"), ark.to_pem().as_bytes(), 0o644)?;
    store(&dir.join("ask.pem"), ask.to_pem().as_bytes(), 0o644)?;
    store(&dir.join("chip_id"), hex::encode(chip_id).as_bytes(), 0o644)?;
    Ok(())
}

/// Make the ASVK (signs VLEKs) in `dir`, under the ARK.
pub(crate) fn make_asvk(
    dir: &Path,
    ark: &Certificate,
    ark_key: &PKey<Private>,
) -> Result<(), EmuError> {
    let asvk_key = new_rsa_4096()?;
    let issuer = x509_cert::Certificate::from_der_issuer(ark)?;
    let asvk = sign(
        "SEV-VLEK-Coffer-Emulated",
        issuer,
        &asvk_key,
        ark_key,
        25,
        3,
        vec![],
    )?;
    store_private(&dir.join("asvk.key"), &asvk_key.private_key_to_pem_pkcs8()?)?;
    store(&dir.join("asvk.pem"), asvk.to_pem().as_bytes(), 0o644)
}

fn tcb_extensions(product: Product, tcb: &TcbVersion) -> Result<Vec<Extension>, EmuError> {
    let spl = |c: TcbComponent| tcb.get(c).unwrap_or(0).to_der();
    let turin = product == Product::Turin;
    let product_name = match product {
        Product::Milan => "Milan-B0",
        Product::Genoa => "Genoa-B1",
        Product::Turin => "Turin-C0",
    };
    let mut exts = vec![
        ext(oid::STRUCT_VERSION, u32::from(turin).to_der()?)?,
        ext(oid::PRODUCT_NAME, Ia5String::new(product_name)?.to_der()?)?,
        ext(oid::BL_SPL, spl(TcbComponent::Bootloader)?)?,
        ext(oid::TEE_SPL, spl(TcbComponent::Tee)?)?,
        ext(oid::SNP_SPL, spl(TcbComponent::Snp)?)?,
    ];
    for id in oid::SPL_4_TO_7 {
        exts.push(ext(id, 0u8.to_der()?)?);
    }
    exts.push(ext(oid::UCODE_SPL, spl(TcbComponent::Microcode)?)?);
    if turin {
        exts.push(ext(oid::FMC_SPL, spl(TcbComponent::Fmc)?)?);
    }
    Ok(exts)
}

/// Issue a VLEK for a product and TCB: AMD's extensions without hwID, plus the CSP id.
pub(crate) fn make_vlek(
    asvk: &Certificate,
    asvk_key: &PKey<Private>,
    vlek_key: &PKey<Private>,
    product: Product,
    tcb: &TcbVersion,
) -> Result<Certificate, EmuError> {
    let mut exts = tcb_extensions(product, tcb)?;
    exts.push(ext(
        oid::CSP_ID,
        Ia5String::new("CN=coffer-emulated")?.to_der()?,
    )?);
    let issuer = x509_cert::Certificate::from_der_issuer(asvk)?;
    sign("SEV-VLEK", issuer, vlek_key, asvk_key, 7, 0, exts)
}

/// Issue a VCEK for a chip and TCB, with AMD's extensions.
pub(crate) fn make_vcek(
    ask: &Certificate,
    ask_key: &PKey<Private>,
    vcek_key: &PKey<Private>,
    product: Product,
    chip_id: &[u8; 64],
    tcb: &TcbVersion,
) -> Result<Certificate, EmuError> {
    let mut exts = tcb_extensions(product, tcb)?;
    // hwID: the raw chip id bytes as the extension value, as AMD KDS writes it (Turin: 8 bytes).
    let hw_id = if product == Product::Turin {
        &chip_id[..8]
    } else {
        &chip_id[..]
    };
    exts.push(ext(oid::HW_ID, hw_id.to_vec())?);
    let issuer = x509_cert::Certificate::from_der_issuer(ask)?;
    sign("SEV-VCEK", issuer, vcek_key, ask_key, 7, 0, exts)
}

/// The subject of a certificate, as the issuer name of the ones it signs.
trait IssuerName {
    fn from_der_issuer(c: &Certificate) -> Result<Name, EmuError>;
}

impl IssuerName for x509_cert::Certificate {
    fn from_der_issuer(c: &Certificate) -> Result<Name, EmuError> {
        use der::Decode as _;
        Ok(x509_cert::Certificate::from_der(c.der())?
            .tbs_certificate
            .subject)
    }
}
