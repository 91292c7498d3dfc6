//! The `coffer snp` CLI contract, run as a real binary in a fresh $COFFER_HOME.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use coffer_testkit::Need;
use common::coffer;

use std::process::Output;

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn main() -> std::process::ExitCode {
    coffer_testkit::run(coffer_testkit::tests![
        emulate_then_verify_round_trips_and_needs_the_flag;
        bad_input_is_a_clear_error;
        real_evidence_through_the_cli: Need::Vectors;
        demo_runs_to_the_end:
            Need::Tool("umoci"),
            Need::Tool("cryptsetup"),
            Need::Tool("runc"),
            Need::Tool("unshare"),
            Need::Tool("mkfs.ext4"),
            Need::Root;
        uvm_measure_prints_every_vectors_launch_digest: Need::Vectors;
        show_and_verify_read_raw_hex_and_base64_alike;
    ])
}

fn emulate_then_verify_round_trips_and_needs_the_flag() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let report = h.join("r.bin");
    let certs = h.join("c.pem");
    let rd = "11".repeat(32);
    let hd = "22".repeat(32);
    let ms = "33".repeat(48);
    let out = coffer(
        h,
        &[
            "snp",
            "emulate",
            "--report-data",
            &rd,
            "--host-data",
            &hd,
            "--measurement",
            &ms,
            "--vmpl",
            "2",
            "--out",
            report.to_str().unwrap(),
            "--certs-out",
            certs.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    for extra in [vec![], vec!["--certs", certs.to_str().unwrap()]] {
        let mut args = vec![
            "snp",
            "verify",
            report.to_str().unwrap(),
            "--allow-emulated",
        ];
        args.extend(extra.iter().copied());
        let out = coffer(h, &args);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v = json(&out);
        assert_eq!(v["valid"], true);
        assert_eq!(v["tee"], "emulated-snp");
        assert_eq!(v["signer"], "vcek");
        assert_eq!(
            v["report"]["report_data"],
            format!("{rd}{}", "00".repeat(32))
        );
        assert_eq!(v["report"]["host_data"], hd);
        assert_eq!(v["report"]["measurement"], ms);
        assert_eq!(v["report"]["vmpl"], 2);
    }

    let out = coffer(
        h,
        &[
            "snp",
            "verify",
            report.to_str().unwrap(),
            "--certs",
            certs.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let v = json(&out);
    assert_eq!(
        (v["valid"].clone(), v["check"].clone()),
        (false.into(), "unknown-root".into())
    );

    // show prints the same fields.
    let out = coffer(h, &["snp", "show", report.to_str().unwrap()]);
    assert!(out.status.success());
    assert_eq!(json(&out)["host_data"], hd);

    // One flipped bit in HOST_DATA.
    let mut bytes = std::fs::read(&report).unwrap();
    bytes[0xC0] ^= 4;
    let bad = h.join("bad.bin");
    std::fs::write(&bad, &bytes).unwrap();
    let out = coffer(
        h,
        &[
            "snp",
            "verify",
            bad.to_str().unwrap(),
            "--certs",
            certs.to_str().unwrap(),
            "--allow-emulated",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(json(&out)["check"], "signature");
}

fn bad_input_is_a_clear_error() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let junk = h.join("junk");
    std::fs::write(&junk, "not a report").unwrap();
    let out = coffer(
        h,
        &["snp", "verify", junk.to_str().unwrap(), "--allow-emulated"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(json(&out)["check"], "malformed");
    let out = coffer(h, &["snp", "show", junk.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("neither hex nor base64"));
    let out = coffer(h, &["snp", "verify", h.join("missing").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read"));
    let out = coffer(
        h,
        &[
            "snp",
            "emulate",
            "--report-data",
            "zz",
            "--host-data",
            "00",
            "--out",
            "/dev/null",
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--report-data is not hex"));
    let out = coffer(
        h,
        &[
            "snp",
            "emulate",
            "--report-data",
            "00",
            "--host-data",
            "00",
            "--out",
            "/dev/null",
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--host-data must be 32 bytes"));
    let out = coffer(
        h,
        &["snp", "verify", junk.to_str().unwrap(), "--at", "yesterday"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("RFC 3339"));
}

fn real_evidence_through_the_cli() {
    let dir = coffer_testkit::vectors();
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let aci = dir.join("sev-snp/aci-milan-v2");
    let report = aci.join("report.bin");
    let at = "2024-06-01T00:00:00Z";
    for (flag, file) in [
        ("--certs", "vcek_ask_ark_chain.pem"),
        ("--thim", "thim_certificate_response.json"),
    ] {
        let out = coffer(
            h,
            &[
                "snp",
                "verify",
                report.to_str().unwrap(),
                flag,
                aci.join(file).to_str().unwrap(),
                "--at",
                at,
            ],
        );
        assert_eq!(
            out.status.code(),
            Some(0),
            "{flag}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let v = json(&out);
        assert_eq!(v["tee"], "sevsnp");
        assert_eq!(v["product"], "milan");
        assert_eq!(
            v["report"]["host_data"],
            "cadd74f71ebb8fbf9782baab649612520f3c416bc5ce9ac768808ddc8d9b031c"
        );
    }
    let virtee = dir.join("sev-snp/virtee-milan-v2");
    let out = coffer(
        h,
        &[
            "snp",
            "verify",
            virtee.join("report.hex").to_str().unwrap(),
            "--vcek",
            virtee.join("vcek.der").to_str().unwrap(),
            "--at",
            "2031-01-01T00:00:00Z",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(json(&out)["check"], "expired");
    let out = coffer(
        h,
        &[
            "snp",
            "verify",
            virtee.join("report.hex").to_str().unwrap(),
            "--vcek",
            virtee.join("vcek.der").to_str().unwrap(),
            "--at",
            at,
            "--product",
            "turin",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(json(&out)["check"], "chain");
    let out = coffer(
        h,
        &["snp", "show", virtee.join("report.hex").to_str().unwrap()],
    );
    let v = json(&out);
    assert_eq!(v["version"], 2);
    assert_eq!(v["reported_tcb"]["microcode"], 115);
}

fn demo_runs_to_the_end() {
    let home = tempfile::tempdir().unwrap();
    let out = coffer(home.path(), &["demo"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Step 4: the key was released to the group, which read the secret from the volume.
    assert!(
        stdout.contains("[app] SKR API: {\"message\":\"Status OK\"}"),
        "{stdout}"
    );
    assert!(
        stdout.contains("[app] secret read from the encrypted volume: coffer-demo-secret-"),
        "{stdout}"
    );
    // Step 5: denied to the changed group, for the HOST_DATA claim; the secret is not printed again.
    assert!(stdout.contains("key release DENIED"), "{stdout}");
    assert!(stdout.contains("x-ms-sevsnpvm-hostdata"), "{stdout}");
    assert_eq!(stdout.matches("coffer-demo-secret-").count(), 1, "{stdout}");
    assert!(
        stdout.contains("released : 2 of 3 key release requests"),
        "{stdout}"
    );
}

fn uvm_measure_prints_every_vectors_launch_digest() {
    let dir = coffer_testkit::vectors();
    let v: serde_json::Value =
        serde_json::from_slice(&coffer_testkit::read(&dir, "snp-measure/expected.json")).unwrap();
    let home = tempfile::tempdir().unwrap();
    for case in v["cases"].as_array().unwrap() {
        let ovmf = dir.join("snp-measure").join(case["ovmf"].as_str().unwrap());
        let mut args: Vec<String> = vec![
            "uvm".into(),
            "measure".into(),
            "--ovmf".into(),
            ovmf.display().to_string(),
            "--vcpus".into(),
            case["vcpus"].to_string(),
            "--guest-features".into(),
            case["guest_features"].as_str().unwrap_or("0x1").into(),
        ];
        for (flag, key) in [("--kernel", "kernel"), ("--initrd", "initrd")] {
            if case[key].as_str() == Some("empty") {
                args.extend([flag.to_string(), "/dev/null".into()]);
            }
        }
        if let Some(a) = case["append"].as_str() {
            args.extend(["--append".to_string(), a.into()]);
        }
        if let Some(t) = case["vcpu_type"].as_str() {
            args.extend(["--vcpu-type".to_string(), t.into()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = coffer(home.path(), &args);
        let name = case["name"].as_str().unwrap();
        match case["expected"].as_str() {
            Some(d) => {
                assert!(
                    out.status.success(),
                    "{name}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), d, "{name}");
            }
            None => assert!(!out.status.success(), "{name} must fail"),
        }
    }
}

/// Hex and base64 spellings of a report are the CLI's business (the library takes bytes): all
/// three read as the same report, and text of the wrong size says what it was.
fn show_and_verify_read_raw_hex_and_base64_alike() {
    use base64::Engine as _;
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let raw = h.join("r.bin");
    let hd = "22".repeat(32);
    let out = coffer(
        h,
        &[
            "snp",
            "emulate",
            "--report-data",
            "01",
            "--host-data",
            &hd,
            "--out",
            raw.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bytes = std::fs::read(&raw).unwrap();
    let hex_text = hex::encode(&bytes)
        .as_bytes()
        .chunks(64)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join("\n");
    let spellings = [
        ("r.hex", hex_text.into_bytes()),
        (
            "r.b64",
            base64::engine::general_purpose::STANDARD
                .encode(&bytes)
                .into_bytes(),
        ),
        (
            "r.b64url",
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(&bytes)
                .into_bytes(),
        ),
    ];
    let shown = coffer(h, &["snp", "show", raw.to_str().unwrap()]);
    assert!(
        shown.status.success(),
        "{}",
        String::from_utf8_lossy(&shown.stderr)
    );
    assert_eq!(json(&shown)["host_data"], hd);
    for (name, text) in spellings {
        let p = h.join(name);
        std::fs::write(&p, text).unwrap();
        let out = coffer(h, &["snp", "show", p.to_str().unwrap()]);
        assert_eq!(out.stdout, shown.stdout, "{name}");
        let out = coffer(
            h,
            &["snp", "verify", p.to_str().unwrap(), "--allow-emulated"],
        );
        assert_eq!(out.status.code(), Some(0), "{name}");
        assert_eq!(json(&out)["valid"], true, "{name}");
    }
    let short = h.join("short.hex");
    std::fs::write(&short, "ab".repeat(100)).unwrap();
    let out = coffer(h, &["snp", "show", short.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("hex text of 100 bytes"));
    let out = coffer(
        h,
        &["snp", "verify", short.to_str().unwrap(), "--allow-emulated"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(json(&out)["check"], "malformed");
    assert!(json(&out)["error"]
        .as_str()
        .unwrap()
        .contains("hex text of 100 bytes"));
}
