//! The root hash equals what the real `veritysetup format --no-superblock` prints.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use coffer_testkit::Need;
use std::process::Command;

fn veritysetup_root(data: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let (d, h) = (dir.path().join("data"), dir.path().join("hash"));
    std::fs::write(&d, data).unwrap();
    let out = Command::new("veritysetup")
        .args([
            "format",
            "--no-superblock",
            "--hash=sha256",
            "--data-block-size=4096",
            "--hash-block-size=4096",
        ])
        .arg(format!("--salt={}", "0".repeat(64)))
        .args([&d, &h])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("Root hash:"))
        .map(|r| r.trim().to_string())
        .expect("veritysetup printed no root hash")
}

fn main() -> std::process::ExitCode {
    coffer_testkit::run(coffer_testkit::tests![
        matches_real_veritysetup: Need::Tool("veritysetup");
    ])
}

fn matches_real_veritysetup() {
    // 1 block, a few, exactly one full hash block (128), one more (129), and two levels (128*128+1).
    for blocks in [1usize, 2, 127, 128, 129, 1000, 128 * 128 + 1] {
        let mut data = vec![0u8; blocks * coffer_verity::BLOCK];
        let mut x: u32 = blocks as u32;
        for b in data.iter_mut() {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            *b = (x >> 16) as u8;
        }
        let ours = hex::encode(coffer_verity::root_hash(&data[..]).unwrap());
        assert_eq!(ours, veritysetup_root(&data), "{blocks} blocks");
    }
}
