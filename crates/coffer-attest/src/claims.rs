//! Token claims for a verified SEV-SNP report, with MAA's names and value formats
//! (hex strings for byte fields, numbers for SVNs and VMPL, booleans for policy bits).

use coffer_snp::{TcbComponent, Verified};
use serde_json::{json, Map, Value};

/// The `x-ms-sevsnpvm-*` claims, `x-ms-attestation-type` and Coffer's `x-coffer-*`.
pub fn snp_claims(v: &Verified) -> Map<String, Value> {
    let r = &v.report;
    let tcb = &r.reported_tcb;
    let svn = |c| tcb.get(c).unwrap_or(0);
    let mut m = Map::new();
    let mut put = |k: &str, v: Value| {
        m.insert(k.to_string(), v);
    };
    put("x-ms-ver", json!("1.0"));
    put("x-ms-attestation-type", json!("sevsnpvm"));
    put(
        "x-ms-sevsnpvm-authorkeydigest",
        json!(hex::encode(r.author_key_digest)),
    );
    put(
        "x-ms-sevsnpvm-bootloader-svn",
        json!(svn(TcbComponent::Bootloader)),
    );
    put("x-ms-sevsnpvm-familyId", json!(hex::encode(r.family_id)));
    put("x-ms-sevsnpvm-guestsvn", json!(r.guest_svn));
    put("x-ms-sevsnpvm-hostdata", json!(hex::encode(r.host_data)));
    put(
        "x-ms-sevsnpvm-idkeydigest",
        json!(hex::encode(r.id_key_digest)),
    );
    put("x-ms-sevsnpvm-imageId", json!(hex::encode(r.image_id)));
    put("x-ms-sevsnpvm-is-debuggable", json!(r.policy.debug()));
    put(
        "x-ms-sevsnpvm-launchmeasurement",
        json!(hex::encode(r.measurement)),
    );
    put(
        "x-ms-sevsnpvm-microcode-svn",
        json!(svn(TcbComponent::Microcode)),
    );
    put(
        "x-ms-sevsnpvm-migration-allowed",
        json!(r.policy.migrate_ma()),
    );
    put(
        "x-ms-sevsnpvm-reportdata",
        json!(hex::encode(r.report_data)),
    );
    put("x-ms-sevsnpvm-reportid", json!(hex::encode(r.report_id)));
    put("x-ms-sevsnpvm-smt-allowed", json!(r.policy.smt()));
    put("x-ms-sevsnpvm-snpfw-svn", json!(svn(TcbComponent::Snp)));
    put("x-ms-sevsnpvm-tee-svn", json!(svn(TcbComponent::Tee)));
    put("x-ms-sevsnpvm-vmpl", json!(r.vmpl));
    put("x-coffer-tee", json!(v.tee.name()));
    put(
        "x-coffer-product",
        json!(v.product.name().to_ascii_lowercase()),
    );
    m
}

/// Claims for a verified SGX quote, with Azure Attestation's names and formats (learn.microsoft.com
/// "Claim sets", SGX attestation: `x-ms-sgx-is-debuggable` boolean, `x-ms-sgx-product-id` and
/// `x-ms-sgx-svn` integers, `x-ms-sgx-mrsigner` and `x-ms-sgx-mrenclave` hex strings;
/// `x-ms-sgx-ehd`, the enclave held data (the runtime data), is added by the caller when sent).
/// `x-ms-attestation-type` is `sgx` as in Azure's SGX token example ("Examples of an attestation
/// token"). Coffer adds `x-coffer-tee`, the TCB status and its advisories.
pub fn sgx_claims(v: &coffer_dcap::Verified, r: &coffer_dcap::EnclaveReport) -> Map<String, Value> {
    let mut m = Map::new();
    let mut put = |k: &str, v: Value| {
        m.insert(k.to_string(), v);
    };
    put("x-ms-ver", json!("1.0"));
    put("x-ms-attestation-type", json!("sgx"));
    put("x-ms-sgx-is-debuggable", json!(r.debug));
    put("x-ms-sgx-mrenclave", json!(hex::encode(r.mr_enclave)));
    put("x-ms-sgx-mrsigner", json!(hex::encode(r.mr_signer)));
    put("x-ms-sgx-product-id", json!(r.isv_prod_id));
    put("x-ms-sgx-svn", json!(r.isv_svn));
    dcap_common(&mut m, v);
    m
}

/// TDATTRIBUTES bits named by Azure's TDX claims (Intel TDX module ABI: DEBUG 0, SEPT_VE_DISABLE
/// 28, PKS 30, KL 31, PERFMON 63).
const TD_ATTRIBUTE_CLAIMS: [(&str, u32); 5] = [
    ("tdx_td_attributes_debug", 0),
    ("tdx_td_attributes_septve_disable", 28),
    ("tdx_td_attributes_protection_keys", 30),
    ("tdx_td_attributes_key_locker", 31),
    ("tdx_td_attributes_perfmon", 63),
];

/// Claims for a verified TDX quote, with the names and formats of Azure Attestation's EAT profile
/// for Intel TDX (learn.microsoft.com/azure/attestation/trust-domain-extensions-eat-profile, the
/// same names as IETF draft-kdyxy-rats-tdx-eat-profile): 96-character hex for the 48-byte
/// measurements (`tdx_mrsignerseam`, `tdx_mrseam`, `tdx_mrtd`, `tdx_rtmr0`..`tdx_rtmr3`,
/// `tdx_mrconfigid`, `tdx_mrowner`, `tdx_mrownerconfig`), hex for `tdx_report_data`,
/// `tdx_seam_attributes`, `tdx_td_attributes`, `tdx_tee_tcb_svn`, `tdx_xfam`; booleans for the
/// named TD attribute bits; `tdx_seamsvn` a number; the EAT claims `dbgstat` and `intuse`; and
/// Microsoft's `attester_tcb_status` and `x-ms-attestation-type: "tdxvm"`. Coffer adds
/// `x-coffer-tee`, the TCB status and advisories.
pub fn tdx_claims(v: &coffer_dcap::Verified, td: &coffer_dcap::TdReport) -> Map<String, Value> {
    let mut m = Map::new();
    let mut put = |k: &str, v: Value| {
        m.insert(k.to_string(), v);
    };
    put("x-ms-ver", json!("1.0"));
    put("x-ms-attestation-type", json!("tdxvm"));
    put("tdx_mrsignerseam", json!(hex::encode(td.mr_signer_seam)));
    put("tdx_mrseam", json!(hex::encode(td.mr_seam)));
    put("tdx_mrtd", json!(hex::encode(td.mr_td)));
    put("tdx_rtmr0", json!(hex::encode(td.rtmr0)));
    put("tdx_rtmr1", json!(hex::encode(td.rtmr1)));
    put("tdx_rtmr2", json!(hex::encode(td.rtmr2)));
    put("tdx_rtmr3", json!(hex::encode(td.rtmr3)));
    put("tdx_mrconfigid", json!(hex::encode(td.mr_config_id)));
    put("tdx_mrowner", json!(hex::encode(td.mr_owner)));
    put("tdx_mrownerconfig", json!(hex::encode(td.mr_owner_config)));
    put("tdx_report_data", json!(hex::encode(td.report_data)));
    put(
        "tdx_seam_attributes",
        json!(hex::encode(td.seam_attributes)),
    );
    put("tdx_td_attributes", json!(hex::encode(td.td_attributes)));
    let attributes = u64::from_le_bytes(td.td_attributes);
    for (name, bit) in TD_ATTRIBUTE_CLAIMS {
        put(name, json!(attributes >> bit & 1 == 1));
    }
    put("tdx_tee_tcb_svn", json!(hex::encode(td.tee_tcb_svn)));
    put("tdx_xfam", json!(hex::encode(td.xfam)));
    // TEE_TCB_SVN[0]: the TDX module's SVN, the value the TCB levels compare.
    put("tdx_seamsvn", json!(td.tee_tcb_svn[0]));
    put(
        "dbgstat",
        json!(if td.debug { "enabled" } else { "disabled" }),
    );
    put("intuse", json!("generic"));
    put("attester_tcb_status", json!(v.tcb_status.name()));
    dcap_common(&mut m, v);
    m
}

fn dcap_common(m: &mut Map<String, Value>, v: &coffer_dcap::Verified) {
    m.insert("x-coffer-tee".into(), json!(v.tee.name()));
    m.insert("x-coffer-tcb-status".into(), json!(v.tcb_status.name()));
    m.insert("x-coffer-advisory-ids".into(), json!(v.advisory_ids));
    m.insert(
        "x-coffer-fmspc".into(),
        json!(hex::encode(v.pck.extension.fmspc)),
    );
}
