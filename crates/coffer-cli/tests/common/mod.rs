//! Shared by the CLI integration tests: run the real `coffer` binary in a given $COFFER_HOME.

use std::path::Path;
use std::process::{Command, Output};

/// Run `coffer ARGS` with `COFFER_HOME=home`.
pub(crate) fn coffer(home: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_coffer"))
        .args(args)
        .env("COFFER_HOME", home)
        .output()
        .expect("run coffer")
}
