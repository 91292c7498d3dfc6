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
