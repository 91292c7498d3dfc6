//! Intel collateral for DCAP quotes, chosen per platform.
//!
//! Intel signs TCB info per FMSPC (a platform family) and per TEE (SGX or TDX), and a QE identity
//! per TEE (`QE` or `TD_QE`), so one collateral set verifies the quotes of one TEE on one platform
//! family. A [`CollateralSet`] holds the sets an operator supplied and picks the one for a quote;
//! where the sets come from (a directory re-read when it changes) is the caller's business
//! ([`CollateralSource`]). Nothing is ever fetched.

use std::sync::Arc;

use coffer_dcap::{Collateral, CollateralError, TcbInfo, Tee, VerifyError};

/// Where the attestation service finds collateral for a quote.
pub trait CollateralSource: Send + Sync {
    /// The collateral for quotes of `tee` from platforms of `fmspc`, to verify at `at`; a
    /// [`VerifyError::NoCollateral`] naming what is there when none fits.
    fn find(&self, tee: Tee, fmspc: &[u8; 6], at: u64) -> Result<Arc<Collateral>, VerifyError>;
}

/// One collateral set and what it is for.
#[derive(Debug)]
struct Entry {
    name: String,
    tee: Tee,
    fmspc: [u8; 6],
    issue_date: u64,
    next_update: u64,
    collateral: Arc<Collateral>,
}

/// The operator's collateral sets, indexed by TEE and FMSPC. Sets that could not be read are kept
/// by name with their error, so that a quote finding no collateral is told why.
#[derive(Debug, Default)]
pub struct CollateralSet {
    entries: Vec<Entry>,
    problems: Vec<String>,
}

impl CollateralSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add `collateral` under `name` (a file or directory name, for messages).
    pub fn insert(&mut self, name: &str, collateral: Collateral) -> Result<(), CollateralError> {
        let info = TcbInfo::parse(&collateral.tcb_info_text)?;
        let tee = match info.id.as_str() {
            "SGX" => Tee::Sgx,
            "TDX" => Tee::Tdx,
            other => {
                return Err(CollateralError::Field {
                    field: "tcbInfo.id".into(),
                    reason: format!("'{other}' is neither SGX nor TDX"),
                })
            }
        };
        self.entries.push(Entry {
            name: name.to_string(),
            tee,
            fmspc: info.fmspc,
            issue_date: info.issue_date,
            next_update: info.next_update,
            collateral: Arc::new(collateral),
        });
        Ok(())
    }

    /// Remember that the set `name` could not be read.
    pub fn note_problem(&mut self, name: &str, error: &dyn std::fmt::Display) {
        self.problems.push(format!("{name}: {error}"));
    }

    /// Number of usable sets.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no set is usable.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// One line per usable set (`name: SGX FMSPC 00a067110000, TCB info 2025-06-19T10:56:11Z ..
    /// 2025-07-19T10:56:11Z`), then one per set that could not be read.
    pub fn describe(&self) -> Vec<String> {
        let t = coffer_dcap::time::format_rfc3339;
        self.entries
            .iter()
            .map(|e| {
                format!(
                    "{}: {} FMSPC {}, TCB info {} .. {}",
                    e.name,
                    e.tee.name().to_ascii_uppercase(),
                    hex::encode(e.fmspc),
                    t(e.issue_date),
                    t(e.next_update)
                )
            })
            .chain(self.problems.iter().map(|p| format!("unusable: {p}")))
            .collect()
    }
}

impl CollateralSource for CollateralSet {
    /// Among the sets for this TEE and FMSPC, one whose TCB info is current at `at`, else the most
    /// recently issued (whose window the verifier then reports as `expired`).
    fn find(&self, tee: Tee, fmspc: &[u8; 6], at: u64) -> Result<Arc<Collateral>, VerifyError> {
        let best = self
            .entries
            .iter()
            .filter(|e| e.tee == tee && &e.fmspc == fmspc)
            .max_by_key(|e| (e.issue_date <= at && at <= e.next_update, e.issue_date));
        if let Some(e) = best {
            return Ok(e.collateral.clone());
        }
        let mut msg = format!(
            "none of the {} collateral set(s) supplied is for {} quotes from FMSPC {}",
            self.entries.len(),
            tee.name().to_ascii_uppercase(),
            hex::encode(fmspc)
        );
        if !self.problems.is_empty() {
            msg.push_str(&format!("; unreadable: {}", self.problems.join("; ")));
        }
        Err(VerifyError::NoCollateral(msg))
    }
}
