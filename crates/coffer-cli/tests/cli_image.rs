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
    ])
}

fn measure_tar_prints_azures_layer_hash_for_every_vector() {
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
    let mut cases = 0;
    for line in expected
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let f: Vec<&str> = line.split_whitespace().collect();
        let tar = tmp.path().join(format!("{}.tar", f[0]));
        let out = coffer(
            tmp.path(),
            &["image", "measure", "--tar", tar.to_str().unwrap()],
        );
        assert!(
            out.status.success(),
            "{}: {}",
            f[0],
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            f[2],
            "{}",
            f[0]
        );
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
