//! `coffer image measure --tar` gives Azure's layer hash for every tar2ext4 vector.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use coffer_testkit::Need;
use common::coffer;

use std::process::Command;

fn main() -> std::process::ExitCode {
    coffer_testkit::run(coffer_testkit::tests![
        measure_tar_prints_azures_layer_hash_for_every_vector: Need::Vectors;
        measure_tar_refuses_what_is_not_a_tar;
        measure_tar_dash_reads_the_layer_from_stdin: Need::Vectors;
    ])
}

/// The tar2ext4 vectors' tars, generated into a temporary directory (as `<case>.tar`), and each
/// case's name and expected root.
fn vector_cases() -> (tempfile::TempDir, Vec<(String, String)>) {
    let dir = coffer_testkit::vectors();
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new("python3")
        .arg(dir.join("tar2ext4/gen_tars.py"))
        .arg(tmp.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let expected = String::from_utf8(coffer_testkit::read(&dir, "tar2ext4/expected.txt")).unwrap();
    let cases = expected
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            (f[0].to_string(), f[2].to_string())
        })
        .collect();
    (tmp, cases)
}

fn measure_tar_prints_azures_layer_hash_for_every_vector() {
    let (tmp, expected) = vector_cases();
    let mut cases = 0;
    for (name, root) in &expected {
        let tar = tmp.path().join(format!("{name}.tar"));
        let out = coffer(
            tmp.path(),
            &["image", "measure", "--tar", tar.to_str().unwrap()],
        );
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), root, "{name}");
        cases += 1;
    }
    assert_eq!(cases, 10);
}

fn measure_tar_refuses_what_is_not_a_tar() {
    let tmp = tempfile::tempdir().unwrap();
    let junk = tmp.path().join("junk");
    std::fs::write(&junk, vec![0x55u8; 4096]).unwrap();
    let out = coffer(
        tmp.path(),
        &["image", "measure", "--tar", junk.to_str().unwrap()],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a layer tar"));
}

fn measure_tar_dash_reads_the_layer_from_stdin() {
    use std::io::Write as _;
    let (tmp, cases) = vector_cases();
    let (name, root) = &cases[0];
    let tar = std::fs::read(tmp.path().join(format!("{name}.tar"))).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_coffer"))
        .args(["image", "measure", "--tar", "-"])
        .env("COFFER_HOME", tmp.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&tar).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), root);
}
