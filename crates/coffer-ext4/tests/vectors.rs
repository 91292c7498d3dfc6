//! Every tar2ext4 vector case: the tar `gen_tars.py` writes has the expected SHA-256, and its
//! layer hash is the root hcsshim computed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use coffer_testkit::Need;
use std::process::Command;

fn main() -> std::process::ExitCode {
    coffer_testkit::run(coffer_testkit::tests![
        every_vector_case_matches_hcsshim: Need::Vectors;
    ])
}

fn every_vector_case_matches_hcsshim() {
    let vectors = coffer_testkit::vectors();
    let dir = vectors.join("tar2ext4");
    let out = tempfile::tempdir().unwrap();
    let status = Command::new("python3")
        .arg(dir.join("gen_tars.py"))
        .arg(out.path())
        .status()
        .expect("python3");
    assert!(status.success(), "gen_tars.py failed");
    let expected =
        String::from_utf8(coffer_testkit::read(&vectors, "tar2ext4/expected.txt")).unwrap();
    let mut cases = 0;
    let mut failures = Vec::new();
    for line in expected
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (case, tar_sha, root) = (f[0], f[1], f[2]);
        let tar = std::fs::read(out.path().join(format!("{case}.tar"))).unwrap();
        assert_eq!(
            hex::encode(openssl::sha::sha256(&tar)),
            tar_sha,
            "{case}: gen_tars.py wrote other bytes"
        );
        let ours = hex::encode(coffer_ext4::root_digest(&tar[..]).unwrap());
        if ours != root {
            failures.push(format!("{case}: got {ours}, want {root}"));
        }
        cases += 1;
    }
    assert_eq!(cases, 10, "expected.txt lists every case");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
