//! Test support: the shared test vectors, and a harness that reports a test which cannot run here
//! as *ignored*, with its reason, never as passed.
//!
//! A test binary whose tests need something optional (the vectors, a tool, root, a Python module,
//! a device) sets `harness = false` for its `[[test]]` and states each test and its needs in `main`:
//!
//! ```no_run
//! use coffer_testkit::Need;
//!
//! fn main() -> std::process::ExitCode {
//!     coffer_testkit::run(coffer_testkit::tests![
//!         parses_the_header;
//!         real_reports_verify: Need::Vectors;
//!         matches_veritysetup: Need::Vectors, Need::Tool("veritysetup");
//!     ])
//! }
//! # fn parses_the_header() {}
//! # fn real_reports_verify() {}
//! # fn matches_veritysetup() {}
//! ```
//!
//! [`run`] parses libtest's arguments (filters, `--list`, `--test-threads`, `--exact`,
//! `--ignored`; `--nocapture` is accepted, output is never captured) through `libtest-mimic`.
//! Just before a test would run it checks the test's needs, each once per binary; an unmet need
//! reports the test as `ignored (needs umoci on PATH)`. With `COFFER_REQUIRE_VECTORS=1` (CI, which
//! installs everything) an unmet need is a failure instead. A test body is a plain function whose
//! panics fail it; a condition only found out while running (a service that cannot start here) is
//! reported with [`skip`], which follows the same rule.
//!
//! Vectors are read from `$COFFER_VECTORS`, else `../shared/vectors` beside the workspace. Unit tests
//! (inside a library, on libtest's own harness) cannot be ignored at run time; those that read
//! the vectors carry `#[cfg_attr(coffer_no_vectors, ignore = ...)]`, set by their crate's build
//! script under the same rule.

use std::collections::HashMap;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Mutex;

use libtest_mimic::{Arguments, Completion, Failed, Trial};

/// Why a [`Need`] is not met: the reason shown beside `ignored` (or the failure under
/// `COFFER_REQUIRE_VECTORS=1`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unmet(pub String);

impl std::fmt::Display for Unmet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<String> for Unmet {
    fn from(why: String) -> Self {
        Unmet(why)
    }
}

impl From<&str> for Unmet {
    fn from(why: &str) -> Self {
        Unmet(why.to_string())
    }
}

/// Something optional a test needs; checked at run time, just before the test.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub enum Need {
    /// The shared test vectors ([`vectors`]).
    Vectors,
    /// An executable of that name on `PATH`.
    Tool(&'static str),
    /// Running as root (effective uid 0).
    Root,
    /// A file, device or kernel interface that must exist, e.g. `/dev/fuse`.
    Path(&'static str),
    /// `python3` that can import each of these modules.
    Python(&'static [&'static str]),
    /// Anything else: what it is, and a check that says why it is missing.
    Check(&'static str, fn() -> Result<(), Unmet>),
    /// A need CI does not install either: unmet, the test is ignored even under
    /// `COFFER_REQUIRE_VECTORS=1`.
    Optional(&'static Need),
}

/// The example image ([`build_example_image`]) can be built: umoci is on `PATH`.
pub const EXAMPLE_IMAGE: Need = Need::Tool("umoci");

/// hcsshim's reference `tar2ext4` ([`tar2ext4_reference`]) can be had: prebuilt, or Go to build it.
pub const TAR2EXT4: Need = Need::Check("hcsshim's tar2ext4 (Go)", tar2ext4_available);

impl Need {
    /// The key under which the outcome is kept, so each need is checked once per binary.
    fn key(&self) -> String {
        match self {
            Need::Check(what, _) => format!("Check({what})"),
            Need::Optional(need) => need.key(),
            other => format!("{other:?}"),
        }
    }

    /// `Ok` when met, else why not: the reason shown beside `ignored`.
    fn check(&self) -> Result<(), Unmet> {
        match *self {
            Need::Vectors => {
                let dir = vectors_path();
                if dir.is_dir() {
                    Ok(())
                } else {
                    Err(format!(
                        "needs the test vectors: {} is missing, set COFFER_VECTORS",
                        dir.display()
                    )
                    .into())
                }
            }
            Need::Tool(name) => {
                if on_path(name) {
                    Ok(())
                } else {
                    Err(format!("needs {name} on PATH").into())
                }
            }
            Need::Root => {
                use std::os::unix::fs::MetadataExt as _;
                // /proc/self belongs to the process's effective uid.
                match std::fs::metadata("/proc/self") {
                    Ok(m) if m.uid() == 0 => Ok(()),
                    _ => Err("needs root".into()),
                }
            }
            Need::Path(path) => {
                if Path::new(path).exists() {
                    Ok(())
                } else {
                    Err(format!("needs {path}").into())
                }
            }
            Need::Python(modules) => {
                let imports = format!("import {}", modules.join(", "));
                let ok = std::process::Command::new("python3")
                    .args(["-c", &imports])
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success());
                if ok {
                    Ok(())
                } else {
                    Err(format!("needs python3 with {}", modules.join(", ")).into())
                }
            }
            Need::Check(what, check) => {
                check().map_err(|why| format!("needs {what}: {why}").into())
            }
            Need::Optional(need) => need.check(),
        }
    }

    /// [`Need::check`], evaluated once per binary.
    fn met(&self) -> Result<(), Unmet> {
        static SEEN: Mutex<Option<HashMap<String, Result<(), Unmet>>>> = Mutex::new(None);
        let mut seen = SEEN.lock().unwrap_or_else(|p| p.into_inner());
        seen.get_or_insert_with(HashMap::new)
            .entry(self.key())
            .or_insert_with(|| self.check())
            .clone()
    }
}

/// Turns needs into a list, so a test can name a single [`Need`] or a shared `&[Need]`.
pub trait IntoNeeds {
    /// The needs, in order.
    fn into_needs(self) -> Vec<Need>;
}

impl IntoNeeds for Need {
    fn into_needs(self) -> Vec<Need> {
        vec![self]
    }
}

impl IntoNeeds for &[Need] {
    fn into_needs(self) -> Vec<Need> {
        self.to_vec()
    }
}

impl<const N: usize> IntoNeeds for &[Need; N] {
    fn into_needs(self) -> Vec<Need> {
        self.to_vec()
    }
}

/// One test: its name (as libtest would print it), its body and what it needs.
#[derive(Debug)]
pub struct Test {
    name: String,
    body: fn(),
    needs: Vec<Need>,
}

impl Test {
    /// A test that needs nothing optional.
    pub fn new(name: impl Into<String>, body: fn()) -> Self {
        Test {
            name: name.into(),
            body,
            needs: Vec::new(),
        }
    }

    /// Adds needs, checked in order; the first unmet one is the reason reported.
    #[must_use]
    pub fn needs(mut self, needs: impl IntoNeeds) -> Self {
        self.needs.extend(needs.into_needs());
        self
    }

    fn trial(self) -> Trial {
        let Test { name, body, needs } = self;
        Trial::ignorable_test(name, move || {
            for need in &needs {
                match (need.met(), need) {
                    (Ok(()), _) => {}
                    (Err(why), Need::Optional(_)) => {
                        return Ok(Completion::ignored_with(format!("{why} (optional)")))
                    }
                    (Err(why), _) => return unmet(why),
                }
            }
            match catch_unwind(AssertUnwindSafe(body)) {
                Ok(()) => Ok(Completion::Completed),
                Err(payload) => match payload.downcast::<Skipped>() {
                    Ok(skipped) => unmet(skipped.0),
                    Err(panic) => resume_unwind(panic),
                },
            }
        })
    }
}

/// `[Test]`s from test functions of the same name, each optionally followed by `:` and its needs
/// (a [`Need`] or a `&[Need]`, comma-separated); entries end with `;`.
#[macro_export]
macro_rules! tests {
    ($($name:ident $(: $($need:expr),+)?;)*) => {
        vec![$($crate::Test::new(stringify!($name), $name)$($(.needs($need))+)?),*]
    };
}

/// Runs the tests as libtest would (same arguments and report), checking each test's needs first.
pub fn run(tests: Vec<Test>) -> ExitCode {
    let args = Arguments::from_args();
    libtest_mimic::run(&args, tests.into_iter().map(Test::trial).collect()).exit_code()
}

/// The payload of [`skip`].
struct Skipped(Unmet);

/// Ends the running test as unable to run here, for a need only found out by trying (e.g.
/// containerd cannot start in this sandbox): reported as ignored with `why`, or a failure under
/// `COFFER_REQUIRE_VECTORS=1`. Only valid inside a test run by [`run`].
pub fn skip(why: impl Into<String>) -> ! {
    // resume_unwind: no panic message, and the harness tells it from a panic by its payload.
    resume_unwind(Box::new(Skipped(Unmet(why.into()))))
}

/// Whether `COFFER_REQUIRE_VECTORS=1`: every need must be met (CI installs them all).
pub fn required() -> bool {
    std::env::var("COFFER_REQUIRE_VECTORS").as_deref() == Ok("1")
}

fn unmet(why: Unmet) -> Result<Completion, Failed> {
    if required() {
        Err(format!("{why}; COFFER_REQUIRE_VECTORS=1 makes that a failure").into())
    } else {
        Ok(Completion::ignored_with(why.0))
    }
}

/// Where the vectors are expected: `$COFFER_VECTORS`, else `../shared/vectors`.
fn vectors_path() -> PathBuf {
    match std::env::var_os("COFFER_VECTORS") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/vectors"),
    }
}

/// The vectors directory, if it exists (for benchmarks, which have no harness to report to).
pub fn vectors_dir() -> Option<PathBuf> {
    Some(vectors_path()).filter(|d| d.is_dir())
}

/// The vectors directory, for a test that declares [`Need::Vectors`].
///
/// # Panics
/// When the directory is missing: the test did not declare the need.
pub fn vectors() -> PathBuf {
    vectors_dir().unwrap_or_else(|| {
        panic!(
            "test vectors missing at {} (declare Need::Vectors)",
            vectors_path().display()
        )
    })
}

/// Read a file under the vectors directory.
///
/// # Panics
/// When the file cannot be read: a missing vector inside an existing vectors directory is a failure.
pub fn read(dir: &Path, rel: &str) -> Vec<u8> {
    let path = dir.join(rel);
    std::fs::read(&path).unwrap_or_else(|e| panic!("vector {}: {e}", path.display()))
}

/// The bytes a vector file holds: [`read`], hex-decoded for a `.hex` file (`0x` optional,
/// whitespace ignored). The libraries take bytes only; the vectors' spelling is known here.
///
/// # Panics
/// When the file cannot be read, or a `.hex` file is not hex.
pub fn read_bytes(dir: &Path, rel: &str) -> Vec<u8> {
    let bytes = read(dir, rel);
    if !rel.ends_with(".hex") {
        return bytes;
    }
    let text: String = String::from_utf8_lossy(&bytes)
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    hex::decode(text.trim_start_matches("0x"))
        .unwrap_or_else(|e| panic!("vector {rel}: not hex: {e}"))
}

/// Whether an executable of that name is on `PATH`.
pub fn on_path(name: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
        .unwrap_or(false)
}

/// Build the `examples/hello` image into `out` with its script (umoci, busybox-static), for a test
/// that declares [`EXAMPLE_IMAGE`].
///
/// # Panics
/// When the build fails.
pub fn build_example_image(out: &Path) {
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/hello/build-image.sh");
    let status = std::process::Command::new("bash")
        .arg(&script)
        .arg(out)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(status.success(), "{} failed", script.display());
}

/// The prebuilt reference command, where the reference's build.sh leaves it.
fn tar2ext4_prebuilt() -> PathBuf {
    std::env::temp_dir().join("tar2ext4-roothash")
}

fn tar2ext4_available() -> Result<(), Unmet> {
    if std::env::var_os("COFFER_TAR2EXT4").is_some() || tar2ext4_prebuilt().is_file() {
        return Ok(());
    }
    if on_path("go") {
        Ok(())
    } else {
        Err("not prebuilt, and go is not on PATH (set COFFER_TAR2EXT4)".into())
    }
}

/// hcsshim's reference command (built by the reference's build.sh), for a test that declares
/// [`Need::Vectors`] and [`TAR2EXT4`].
///
/// # Panics
/// When the reference cannot be built.
pub fn tar2ext4_reference() -> PathBuf {
    if let Some(p) = std::env::var_os("COFFER_TAR2EXT4") {
        return PathBuf::from(p);
    }
    let script = vectors().join("../reference/tar2ext4-go/build.sh");
    let out = std::process::Command::new("bash")
        .arg(&script)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "{} failed: {}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The container cgroups agents made: every directory under `/sys/fs/cgroup/*/coffer/` (each
/// cgroup v1 hierarchy, or the v2 root), named `<agent prefix>-<container id>`.
pub fn container_cgroups() -> Vec<PathBuf> {
    std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
        .flat_map(|c| {
            std::fs::read_dir(c.path().join("coffer"))
                .into_iter()
                .flatten()
                .flatten()
                .map(|g| g.path())
                .filter(|p| p.is_dir())
        })
        .collect()
}
