//! Finds the shared test vectors for tests.
//!
//! Vectors are read from `$COFFER_VECTORS`, else `../shared/vectors` beside the workspace. When
//! neither exists a test prints that it was skipped, unless `COFFER_REQUIRE_VECTORS=1` (CI), which
//! turns a missing vector into a failure.

use std::path::PathBuf;

/// The vectors directory, or `None` (after printing a skip notice) when absent and not required.
///
/// # Panics
/// When `COFFER_REQUIRE_VECTORS=1` and the directory is missing: that is the test failing.
pub fn vectors(test: &str) -> Option<PathBuf> {
    let dir = match std::env::var_os("COFFER_VECTORS") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/vectors"),
    };
    if dir.is_dir() {
        return Some(dir);
    }
    if std::env::var("COFFER_REQUIRE_VECTORS").as_deref() == Ok("1") {
        panic!(
            "{test}: test vectors required (COFFER_REQUIRE_VECTORS=1) but {} is missing",
            dir.display()
        );
    }
    eprintln!(
        "{test}: SKIPPED: test vectors not found at {} (set COFFER_VECTORS)",
        dir.display()
    );
    None
}

/// Read a file under the vectors directory.
///
/// # Panics
/// When the file cannot be read: a missing vector inside an existing vectors directory is a failure.
pub fn read(dir: &std::path::Path, rel: &str) -> Vec<u8> {
    let path = dir.join(rel);
    std::fs::read(&path).unwrap_or_else(|e| panic!("vector {}: {e}", path.display()))
}

/// Whether an external tool the test compares against is on PATH. Missing: prints a skip notice,
/// or panics when `COFFER_REQUIRE_VECTORS=1` (CI installs every such tool).
///
/// # Panics
/// When the tool is missing and required.
pub fn tool(name: &str, test: &str) -> bool {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
        .unwrap_or(false);
    if found {
        return true;
    }
    if std::env::var("COFFER_REQUIRE_VECTORS").as_deref() == Ok("1") {
        panic!("{test}: tool '{name}' required (COFFER_REQUIRE_VECTORS=1) but not on PATH");
    }
    eprintln!("{test}: SKIPPED: '{name}' not on PATH");
    false
}

/// Build the `examples/hello` image into `out` with its script (umoci, busybox-static).
/// Returns false (after a skip notice) when the tools are missing and not required.
///
/// # Panics
/// When the build fails, or the tools are missing and required.
pub fn build_example_image(out: &std::path::Path, test: &str) -> bool {
    if !tool("umoci", test) {
        return false;
    }
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/hello/build-image.sh");
    let status = std::process::Command::new("bash")
        .arg(&script)
        .arg(out)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("{test}: cannot run {}: {e}", script.display()));
    assert!(status.success(), "{test}: {} failed", script.display());
    true
}

/// hcsshim's reference command (built by the reference's build.sh), or `None` after a skip
/// notice when Go is not installed (a failure under `COFFER_REQUIRE_VECTORS=1`).
pub fn tar2ext4_reference(test: &str) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("COFFER_TAR2EXT4") {
        return Some(PathBuf::from(p));
    }
    let vectors = vectors(test)?;
    let script = vectors.join("../reference/tar2ext4-go/build.sh");
    let prebuilt = std::env::temp_dir().join("tar2ext4-roothash");
    if !prebuilt.is_file() && !tool("go", test) {
        return None;
    }
    let out = std::process::Command::new("bash")
        .arg(&script)
        .output()
        .unwrap_or_else(|e| panic!("{test}: cannot run {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "{test}: {} failed: {}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Some(PathBuf::from(
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
    ))
}
