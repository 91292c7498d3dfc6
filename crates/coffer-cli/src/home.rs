//! Where coffer keeps its state.

use std::path::PathBuf;

use anyhow::{bail, Result};

/// `$COFFER_HOME`, else `$XDG_DATA_HOME/coffer`, else `~/.local/share/coffer`.
pub(crate) fn coffer_home() -> Result<PathBuf> {
    if let Some(h) = std::env::var_os("COFFER_HOME").filter(|h| !h.is_empty()) {
        return Ok(PathBuf::from(h));
    }
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|h| !h.is_empty()) {
        return Ok(PathBuf::from(x).join("coffer"));
    }
    match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        Some(h) => Ok(PathBuf::from(h).join(".local/share/coffer")),
        None => bail!("cannot locate coffer's state: set COFFER_HOME (or HOME)"),
    }
}
