//! The trust boundary, checked: the agent (the only code in the TEE, the only code the launch
//! measurement covers) links nothing from the host's side or the emulator.

use std::collections::BTreeSet;
use std::process::Command;

/// The workspace crates the agent may link: shared contracts, evidence types, the policy engine,
/// LUKS2 and dm-verity. Anything else of ours (coffer-host, coffer-snp-emu, coffer-image,
/// coffer-kbs, coffer-server, coffer-attest, coffer-cli, ...) is a boundary violation.
const ALLOWED: &[&str] = &[
    "coffer-agent",
    "coffer-encfs",
    "coffer-mux",
    "coffer-policy",
    "coffer-proto",
    "coffer-release",
    "coffer-snp",
    "coffer-sp",
    "coffer-verity",
];

fn agent_crates() -> BTreeSet<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "tree",
            "--offline",
            "-p",
            "coffer-agent",
            "-e",
            "normal,build",
            "--prefix",
            "none",
            "--format",
            "{p}",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap_or_else(|e| panic!("running cargo tree: {e}"));
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with("coffer-"))
        .map(str::to_string)
        .collect()
}

#[test]
fn the_agent_links_no_host_or_emulator_crate() {
    let found = agent_crates();
    let outside: Vec<_> = found
        .iter()
        .filter(|c| !ALLOWED.contains(&c.as_str()))
        .collect();
    assert!(
        outside.is_empty(),
        "coffer-agent depends on host-side crates: {outside:?}"
    );
    // The check sees the tree at all (a broken cargo tree output must not pass silently).
    assert!(
        found.contains("coffer-proto") && found.contains("coffer-sp"),
        "{found:?}"
    );
}

#[test]
fn the_agent_binary_refuses_an_unknown_invocation() {
    let out = Command::new(env!("CARGO_BIN_EXE_coffer-agent"))
        .arg("serve")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("usage: coffer-agent --vm | --io DIR"));
}
