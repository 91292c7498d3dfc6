//! Sets `cfg(coffer_no_vectors)` when the shared test vectors are missing (and
//! `COFFER_REQUIRE_VECTORS=1` does not require them), so the unit tests that read them are reported
//! as ignored: libtest's own harness cannot ignore a test at run time, as coffer-testkit's can.

use std::path::PathBuf;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(coffer_no_vectors)");
    println!("cargo::rerun-if-env-changed=COFFER_VECTORS");
    println!("cargo::rerun-if-env-changed=COFFER_REQUIRE_VECTORS");
    let dir = match std::env::var_os("COFFER_VECTORS") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default())
            .join("../../../shared/vectors"),
    };
    // A missing path reruns the script on every build, so vectors that appear are noticed.
    println!("cargo::rerun-if-changed={}", dir.display());
    let required = std::env::var("COFFER_REQUIRE_VECTORS").as_deref() == Ok("1");
    if !dir.is_dir() && !required {
        println!("cargo::rustc-cfg=coffer_no_vectors");
    }
}
