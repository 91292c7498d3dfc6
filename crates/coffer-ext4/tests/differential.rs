//! Random layers through hcsshim's own tar2ext4 (Go, built from the reference) and through
//! coffer-ext4: the same root, or both refuse the layer.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use coffer_testkit::Need;
use std::process::Command;

fn main() -> std::process::ExitCode {
    coffer_testkit::run(coffer_testkit::tests![
        random_layers_match_hcsshim: Need::Vectors, coffer_testkit::TAR2EXT4;
    ])
}

fn random_layers_match_hcsshim() {
    let tool = coffer_testkit::tar2ext4_reference();
    let dir = tempfile::tempdir().unwrap();
    let seeds: u64 = std::env::var("COFFER_EXT4_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let mut accepted = 0;
    for seed in 0..seeds {
        let layer = common::random_layer(seed);
        let tar = if seed % 4 == 3 {
            common::write_gnu_tar(&layer)
        } else {
            common::write_tar(&layer)
        };
        let path = dir.path().join(format!("{seed}.tar"));
        std::fs::write(&path, &tar).unwrap();
        let out = Command::new(&tool).arg(&path).output().unwrap();
        let theirs = out
            .status
            .success()
            .then(|| String::from_utf8(out.stdout).unwrap().trim().to_string());
        let ours = coffer_ext4::root_digest(&tar[..]);
        match (&theirs, &ours) {
            (Some(t), Ok(o)) => {
                assert_eq!(
                    &hex::encode(o),
                    t,
                    "seed {seed}: roots differ ({})",
                    path.display()
                );
                accepted += 1;
            }
            (None, Err(_)) => {}
            _ => {
                let keep = std::env::temp_dir().join(format!("coffer-ext4-diff-{seed}.tar"));
                std::fs::write(&keep, &tar).unwrap();
                panic!(
                    "seed {seed}: hcsshim {:?} ({}), coffer {:?}; tar kept at {}",
                    theirs,
                    String::from_utf8_lossy(&out.stderr).trim(),
                    ours.map(hex::encode),
                    keep.display()
                );
            }
        }
    }
    eprintln!(
        "random_layers_match_hcsshim: {accepted} of {seeds} random layers converted, all roots equal to hcsshim's"
    );
    assert!(
        accepted * 4 >= seeds * 3,
        "only {accepted} of {seeds} random layers were accepted"
    );
}
