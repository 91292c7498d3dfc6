pub(crate) mod dcap;
pub(crate) mod demo;
pub(crate) mod encfs;
pub(crate) mod image;
pub(crate) mod lifecycle;
pub(crate) mod policy;
pub(crate) mod run;
pub(crate) mod serve;
pub(crate) mod snp;
pub(crate) mod uvm;

use std::path::Path;

use anyhow::{Context as _, Result};

/// A file's bytes, or standard input's for `-`.
pub(crate) fn read_input(path: &Path) -> Result<Vec<u8>> {
    if path == Path::new("-") {
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf)
            .context("reading standard input")?;
        return Ok(buf);
    }
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}
