//! Intel collateral supplied by the operator (`coffer serve --dcap-collateral DIR`), re-read when
//! the directory changes. Nothing is ever fetched from Intel: a platform without collateral in the
//! directory is refused with `no-collateral`.
//!
//! The directory holds collateral sets in the forms `coffer dcap verify --collateral` reads:
//! either it is itself a directory of Intel PCS responses (it holds `tcbInfo.json`), or each entry
//! is one set: a `*.json` file (dcap-qvl's collateral JSON) or a subdirectory of PCS responses.
//! Names starting with `.` are skipped (editors' and `rsync`'s temporary files).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use coffer_attest::{CollateralSet, CollateralSource};
use coffer_dcap::{Collateral, CollateralError, PcsFiles, Tee, VerifyError};

/// How `coffer serve` attests DCAP quotes.
#[derive(Clone, Debug)]
pub struct DcapConfig {
    /// The collateral directory.
    pub collateral: PathBuf,
    /// Roots a PCK chain may end at (`coffer serve`: the Intel SGX Root CA only).
    pub roots: coffer_dcap::Roots,
    /// How often the directory is looked at for changes (`coffer serve`: 1 s).
    pub refresh: Duration,
}

impl DcapConfig {
    /// Collateral from `dir`, PCK chains to Intel's root, the directory looked at every second.
    pub fn intel(dir: PathBuf) -> Result<Self, coffer_dcap::CertError> {
        Ok(DcapConfig {
            collateral: dir,
            roots: coffer_dcap::Roots::intel()?,
            refresh: Duration::from_secs(1),
        })
    }
}

/// Why a collateral set could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CollateralLoadError {
    /// A file or directory could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// What could not be read.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The bytes are not collateral.
    #[error("{}: {source}", path.display())]
    Invalid {
        /// The set.
        path: PathBuf,
        /// What is wrong with it.
        source: CollateralError,
    },
}

/// PCS responses a directory must hold.
const PCS_REQUIRED: [&str; 4] = [
    "tcbInfo.json",
    "enclaveIdentity.json",
    "tcb_info_issuer_chain.pem",
    "qe_identity_issuer_chain.pem",
];
/// PCS responses a directory may hold (the CRLs and the PCK CRL's issuer chain).
const PCS_OPTIONAL: [&str; 3] = ["pck_crl.der", "pck_crl_issuer_chain.pem", "root_ca_crl.der"];

/// One collateral set from `path`: a directory of PCS responses, or a dcap-qvl collateral JSON
/// file. The one reader for `coffer dcap verify --collateral` and `coffer serve`.
pub fn read_collateral(path: &Path) -> Result<Collateral, CollateralLoadError> {
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |source| CollateralLoadError::Io { path: p, source }
    };
    let invalid = |source| CollateralLoadError::Invalid {
        path: path.to_path_buf(),
        source,
    };
    if !path.is_dir() {
        let bytes = std::fs::read(path).map_err(io(path))?;
        return Collateral::from_qvl_json(&bytes).map_err(invalid);
    }
    let need = |name: &str| {
        let p = path.join(name);
        std::fs::read(&p).map_err(io(&p))
    };
    let maybe = |name: &str| {
        let p = path.join(name);
        match std::fs::read(&p) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(&p)(e)),
        }
    };
    let [tcb_info, enclave_identity, tcb_chain, qe_chain] = PCS_REQUIRED;
    let [pck_crl, pck_crl_chain, root_crl] = PCS_OPTIONAL;
    let (pck_crl, pck_crl_chain, root_crl) =
        (maybe(pck_crl)?, maybe(pck_crl_chain)?, maybe(root_crl)?);
    Collateral::from_pcs(&PcsFiles {
        tcb_info: &need(tcb_info)?,
        enclave_identity: &need(enclave_identity)?,
        tcb_info_issuer_chain: &need(tcb_chain)?,
        qe_identity_issuer_chain: &need(qe_chain)?,
        pck_crl: pck_crl.as_deref(),
        pck_crl_issuer_chain: pck_crl_chain.as_deref(),
        root_ca_crl: root_crl.as_deref(),
    })
    .map_err(invalid)
}

/// What identifies a file's version: path, size, modification and change times, inode.
type Stamp = (PathBuf, u64, i64, i64, i64, i64, u64);

fn stamp(path: &Path) -> std::io::Result<Stamp> {
    use std::os::unix::fs::MetadataExt as _;
    let m = std::fs::metadata(path)?;
    Ok((
        path.to_path_buf(),
        m.len(),
        m.mtime(),
        m.mtime_nsec(),
        m.ctime(),
        m.ctime_nsec(),
        m.ino(),
    ))
}

fn hidden(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.'))
}

/// The collateral sets under `dir`: (path, is a PCS directory).
fn sets(dir: &Path) -> std::io::Result<Vec<(PathBuf, bool)>> {
    if dir.join(PCS_REQUIRED[0]).is_file() {
        return Ok(vec![(dir.to_path_buf(), true)]);
    }
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let path = e?.path();
        if hidden(&path) {
            continue;
        }
        if path.is_dir() {
            out.push((path, true));
        } else if path.extension().is_some_and(|x| x == "json") {
            out.push((path, false));
        }
    }
    out.sort();
    Ok(out)
}

/// Stamps of every file the sets under `dir` are read from (and of `dir` itself, whose entries
/// changing changes its times).
fn fingerprint(dir: &Path) -> std::io::Result<Vec<Stamp>> {
    let mut out = vec![stamp(dir)?];
    for (path, pcs) in sets(dir)? {
        out.push(stamp(&path)?);
        if pcs {
            for name in PCS_REQUIRED.iter().chain(&PCS_OPTIONAL) {
                match stamp(&path.join(name)) {
                    Ok(s) => out.push(s),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
        }
    }
    Ok(out)
}

/// Read every set under `dir`. A set that cannot be read is recorded in the result (quotes that
/// would need it are told why), never kept from an earlier read.
fn load(dir: &Path) -> CollateralSet {
    let mut set = CollateralSet::new();
    let entries = match sets(dir) {
        Ok(e) => e,
        Err(e) => {
            set.note_problem(&dir.display().to_string(), &e);
            return set;
        }
    };
    for (path, _) in entries {
        let name = path
            .strip_prefix(dir)
            .ok()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(&path)
            .display()
            .to_string();
        let result = read_collateral(&path).and_then(|c| {
            set.insert(&name, c)
                .map_err(|source| CollateralLoadError::Invalid {
                    path: path.clone(),
                    source,
                })
        });
        if let Err(e) = result {
            set.note_problem(&name, &e);
        }
    }
    set
}

/// A collateral directory, looked at again at most every `refresh` and re-read when a file in it
/// changed (no restart).
pub struct CollateralDir {
    dir: PathBuf,
    refresh: Duration,
    state: Mutex<DirState>,
}

struct DirState {
    checked: Instant,
    fingerprint: Option<Vec<Stamp>>,
    set: Arc<CollateralSet>,
}

impl CollateralDir {
    /// Read `dir` now. Fails when `dir` is not a readable directory (an operator's typo should
    /// stop the start); sets inside it that cannot be read are reported by
    /// [`CollateralDir::describe`] and in `no-collateral` errors.
    pub fn open(dir: &Path, refresh: Duration) -> Result<Self, CollateralLoadError> {
        let io = |source| CollateralLoadError::Io {
            path: dir.to_path_buf(),
            source,
        };
        if !std::fs::metadata(dir).map_err(io)?.is_dir() {
            return Err(io(std::io::Error::other(
                "not a directory (give the directory that holds the collateral)",
            )));
        }
        let fingerprint = fingerprint(dir).map_err(io)?;
        Ok(CollateralDir {
            dir: dir.to_path_buf(),
            refresh,
            state: Mutex::new(DirState {
                checked: Instant::now(),
                fingerprint: Some(fingerprint),
                set: Arc::new(load(dir)),
            }),
        })
    }

    /// The sets as they are now (re-read first when due and changed).
    pub fn current(&self) -> Arc<CollateralSet> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.checked.elapsed() >= self.refresh {
            st.checked = Instant::now();
            let now = fingerprint(&self.dir).ok();
            if now.is_none() || now != st.fingerprint {
                st.set = Arc::new(load(&self.dir));
                st.fingerprint = now;
            }
        }
        st.set.clone()
    }

    /// One line per set (see [`CollateralSet::describe`]).
    pub fn describe(&self) -> Vec<String> {
        self.current().describe()
    }
}

impl CollateralSource for CollateralDir {
    fn find(&self, tee: Tee, fmspc: &[u8; 6], at: u64) -> Result<Arc<Collateral>, VerifyError> {
        self.current().find(tee, fmspc, at)
    }
}
