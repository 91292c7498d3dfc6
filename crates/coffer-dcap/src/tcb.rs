//! TCB statuses and the matching of a platform, a TDX module and a QE against Intel's levels.
//!
//! The algorithm is Intel QVL's (`getMatchingTcbLevel`, `TdxModuleCheck`, QE identity):
//! * platform: the first level (highest first) whose PCESVN and all 16 SGX component SVNs are at
//!   or below the PCK certificate's, and, for TDX, whose `tdxtcbcomponents` are at or below
//!   TEE_TCB_SVN (from index 2 when `TEE_TCB_SVN[1]`, the module's major version, is not 0: those
//!   two bytes are the module's, graded by its identity);
//! * TDX module: `tdxModuleIdentities` entry `TDX_%02X(TEE_TCB_SVN[1])` (or `tdxModule` for major
//!   version 0): MRSIGNERSEAM and masked SEAMATTRIBUTES must match; status of the first level
//!   with `isvsvn` <= `TEE_TCB_SVN[0]`;
//! * QE: the first level with `isvsvn` <= the QE's ISVSVN.
//!
//! Statuses combine as Intel's `convergeTcbStatus*` do, which is "the worse wins" on each axis:
//! a status is a set of findings (out of date, configuration needed, SW hardening needed,
//! revoked) and the result is their union; e.g. `ConfigurationAndSWHardeningNeeded` with an
//! out-of-date QE is `OutOfDateConfigurationNeeded`.

use serde::Serialize;

use crate::collateral::{QeIdentity, TcbInfo, TcbLevel, TdxModuleIdentity};
use crate::quote::{EnclaveReport, TdReport};

/// A `tcbStatus` that is not one of Intel's names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown tcbStatus '{0}'")]
pub struct UnknownTcbStatus(pub String);

/// Why no TCB level (platform or TDX module) fits the evidence.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TcbMismatch {
    /// A TDX TCB info level lacks `tdxtcbcomponents`.
    #[error("a TDX TCB info level has no tdxtcbcomponents")]
    NoTdxComponents,
    /// No `tcbLevel` is at or below the platform's SVNs.
    #[error(
        "no tcbLevel of FMSPC {fmspc} matches SGX components {components:?} and PCESVN {pce_svn}{}",
        .tee_tcb_svn.as_ref().map(|t| format!(" and TEE_TCB_SVN {t}")).unwrap_or_default()
    )]
    NoPlatformLevel {
        /// FMSPC, hex.
        fmspc: String,
        /// The PCK certificate's SGX TCB components.
        components: [u8; 16],
        /// The PCK certificate's PCESVN.
        pce_svn: u16,
        /// TEE_TCB_SVN of a TD, hex.
        tee_tcb_svn: Option<String>,
    },
    /// The TCB info has no identity for the TD's TDX module major version.
    #[error("TCB info has no TDX module identity {0}")]
    NoModuleIdentity(String),
    /// A TDX TCB info without `tdxModule`.
    #[error("TDX TCB info has no tdxModule")]
    NoTdxModule,
    /// MRSIGNERSEAM is not the module signer's.
    #[error("MRSIGNERSEAM {got} is not the TDX module signer {want}")]
    ModuleSigner {
        /// The TD's MRSIGNERSEAM, hex.
        got: String,
        /// The identity's MRSIGNER, hex.
        want: String,
    },
    /// SEAMATTRIBUTES differ under the identity's mask.
    #[error("SEAMATTRIBUTES {got} do not match the TDX module's {want} under mask {mask}")]
    SeamAttributes {
        /// The TD's SEAMATTRIBUTES, hex.
        got: String,
        /// The identity's attributes, hex.
        want: String,
        /// The identity's mask, hex.
        mask: String,
    },
    /// The module's SVN is below every level.
    #[error("TDX module SVN {svn} is below every level of {id}")]
    ModuleSvnBelow {
        /// The TD's module SVN.
        svn: u8,
        /// The module identity's id.
        id: String,
    },
}

/// A TCB status as Intel names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum TcbStatus {
    /// Current.
    UpToDate,
    /// Software mitigations needed.
    SWHardeningNeeded,
    /// Platform configuration needed.
    ConfigurationNeeded,
    /// Both.
    ConfigurationAndSWHardeningNeeded,
    /// A newer TCB exists.
    OutOfDate,
    /// Out of date, and configuration needed.
    OutOfDateConfigurationNeeded,
    /// Revoked: not acceptable.
    Revoked,
}

const OUT_OF_DATE: u8 = 1;
const CONFIG: u8 = 2;
const SW_HARDENING: u8 = 4;
const REVOKED: u8 = 8;

impl TcbStatus {
    /// From Intel's name.
    pub fn parse(s: &str) -> Result<Self, UnknownTcbStatus> {
        Ok(match s {
            "UpToDate" => TcbStatus::UpToDate,
            "SWHardeningNeeded" => TcbStatus::SWHardeningNeeded,
            "ConfigurationNeeded" => TcbStatus::ConfigurationNeeded,
            "ConfigurationAndSWHardeningNeeded" => TcbStatus::ConfigurationAndSWHardeningNeeded,
            "OutOfDate" => TcbStatus::OutOfDate,
            "OutOfDateConfigurationNeeded" => TcbStatus::OutOfDateConfigurationNeeded,
            "Revoked" => TcbStatus::Revoked,
            other => return Err(UnknownTcbStatus(other.to_string())),
        })
    }

    /// Intel's name.
    pub fn name(self) -> &'static str {
        match self {
            TcbStatus::UpToDate => "UpToDate",
            TcbStatus::SWHardeningNeeded => "SWHardeningNeeded",
            TcbStatus::ConfigurationNeeded => "ConfigurationNeeded",
            TcbStatus::ConfigurationAndSWHardeningNeeded => "ConfigurationAndSWHardeningNeeded",
            TcbStatus::OutOfDate => "OutOfDate",
            TcbStatus::OutOfDateConfigurationNeeded => "OutOfDateConfigurationNeeded",
            TcbStatus::Revoked => "Revoked",
        }
    }

    fn flags(self) -> u8 {
        match self {
            TcbStatus::UpToDate => 0,
            TcbStatus::SWHardeningNeeded => SW_HARDENING,
            TcbStatus::ConfigurationNeeded => CONFIG,
            TcbStatus::ConfigurationAndSWHardeningNeeded => CONFIG | SW_HARDENING,
            TcbStatus::OutOfDate => OUT_OF_DATE,
            TcbStatus::OutOfDateConfigurationNeeded => OUT_OF_DATE | CONFIG,
            TcbStatus::Revoked => REVOKED,
        }
    }

    fn from_flags(f: u8) -> Self {
        if f & REVOKED != 0 {
            TcbStatus::Revoked
        } else if f & OUT_OF_DATE != 0 {
            if f & CONFIG != 0 {
                TcbStatus::OutOfDateConfigurationNeeded
            } else {
                TcbStatus::OutOfDate
            }
        } else {
            match (f & CONFIG != 0, f & SW_HARDENING != 0) {
                (true, true) => TcbStatus::ConfigurationAndSWHardeningNeeded,
                (true, false) => TcbStatus::ConfigurationNeeded,
                (false, true) => TcbStatus::SWHardeningNeeded,
                (false, false) => TcbStatus::UpToDate,
            }
        }
    }

    /// The combination of two statuses (the worse on each axis).
    pub fn converge(self, other: TcbStatus) -> TcbStatus {
        TcbStatus::from_flags(self.flags() | other.flags())
    }
}

impl std::fmt::Display for TcbStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A status with the advisories of the level it came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Graded {
    /// The status.
    pub status: TcbStatus,
    /// Advisory IDs, in order, without repeats.
    pub advisory_ids: Vec<String>,
    /// tcbDate of the matched level.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub tcb_date: String,
}

impl Graded {
    fn new(status: TcbStatus, advisory_ids: &[String], tcb_date: &str) -> Self {
        let mut g = Graded {
            status,
            advisory_ids: Vec::new(),
            tcb_date: tcb_date.to_string(),
        };
        g.add_advisories(advisory_ids);
        g
    }

    fn add_advisories(&mut self, ids: &[String]) {
        for id in ids {
            if !self.advisory_ids.contains(id) {
                self.advisory_ids.push(id.clone());
            }
        }
    }

    /// Converge with `other` (status and advisories; this one's tcbDate stays).
    pub fn converge(&self, other: &Graded) -> Graded {
        let mut g = self.clone();
        g.status = self.status.converge(other.status);
        g.add_advisories(&other.advisory_ids);
        g
    }
}

/// The platform's level: `Err` names why none matches.
pub fn match_platform<'a>(
    info: &'a TcbInfo,
    components: &[u8; 16],
    pce_svn: u16,
    td: Option<&TdReport>,
) -> Result<&'a TcbLevel, TcbMismatch> {
    let skip = match td {
        Some(t) if t.tee_tcb_svn[1] > 0 => 2,
        _ => 0,
    };
    for level in &info.levels {
        if pce_svn < level.pce_svn {
            continue;
        }
        if components
            .iter()
            .zip(&level.sgx_components)
            .any(|(p, l)| p < l)
        {
            continue;
        }
        if let Some(t) = td {
            let Some(tdx) = &level.tdx_components else {
                return Err(TcbMismatch::NoTdxComponents);
            };
            if t.tee_tcb_svn[skip..]
                .iter()
                .zip(&tdx[skip..])
                .any(|(p, l)| p < l)
            {
                continue;
            }
        }
        return Ok(level);
    }
    Err(TcbMismatch::NoPlatformLevel {
        fmspc: hex::encode(info.fmspc),
        components: *components,
        pce_svn,
        tee_tcb_svn: td.map(|t| hex::encode(t.tee_tcb_svn)),
    })
}

/// The TDX module's identity and level. `Ok(None)`: identity matched, no level to grade.
pub fn match_tdx_module(info: &TcbInfo, td: &TdReport) -> Result<Option<Graded>, TcbMismatch> {
    let major = td.tee_tcb_svn[1];
    let svn = td.tee_tcb_svn[0];
    let identity: &TdxModuleIdentity = if major > 0 && !info.tdx_module_identities.is_empty() {
        let wanted = format!("TDX_{major:02X}");
        info.tdx_module_identities
            .iter()
            .find(|m| m.id.eq_ignore_ascii_case(&wanted))
            .ok_or(TcbMismatch::NoModuleIdentity(wanted))?
    } else {
        info.tdx_module.as_ref().ok_or(TcbMismatch::NoTdxModule)?
    };
    if td.mr_signer_seam != identity.mrsigner {
        return Err(TcbMismatch::ModuleSigner {
            got: hex::encode(td.mr_signer_seam),
            want: hex::encode(identity.mrsigner),
        });
    }
    let masked = |a: &[u8; 8]| -> Vec<u8> {
        a.iter()
            .zip(&identity.attributes_mask)
            .map(|(x, m)| x & m)
            .collect()
    };
    if masked(&td.seam_attributes) != masked(&identity.attributes) {
        return Err(TcbMismatch::SeamAttributes {
            got: hex::encode(td.seam_attributes),
            want: hex::encode(identity.attributes),
            mask: hex::encode(identity.attributes_mask),
        });
    }
    if identity.tcb_levels.is_empty() {
        return Ok(None);
    }
    identity
        .tcb_levels
        .iter()
        .find(|(isvsvn, ..)| svn >= *isvsvn)
        .map(|(_, status, adv, date)| Some(Graded::new(*status, adv, date)))
        .ok_or_else(|| TcbMismatch::ModuleSvnBelow {
            svn,
            id: identity.id.clone(),
        })
}

/// Why a QE does not match its identity: the identity (`Identity`) or the SVN (`Level`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QeMismatch {
    /// MRSIGNER, ISVPRODID, MISCSELECT or ATTRIBUTES differ: not Intel's QE.
    Identity(String),
    /// ISVSVN below every level.
    Level(String),
}

/// Check the QE report against the QE identity and grade its ISVSVN.
pub fn match_qe(qe: &EnclaveReport, id: &QeIdentity) -> Result<Graded, QeMismatch> {
    if qe.mr_signer != id.mrsigner {
        return Err(QeMismatch::Identity(format!(
            "QE MRSIGNER {} is not {}",
            hex::encode(qe.mr_signer),
            hex::encode(id.mrsigner)
        )));
    }
    if qe.isv_prod_id != id.isvprodid {
        return Err(QeMismatch::Identity(format!(
            "QE ISVPRODID {} is not {}",
            qe.isv_prod_id, id.isvprodid
        )));
    }
    if qe.misc_select & id.miscselect_mask != id.miscselect & id.miscselect_mask {
        return Err(QeMismatch::Identity(format!(
            "QE MISCSELECT {:08x} does not match {:08x} under mask {:08x}",
            qe.misc_select, id.miscselect, id.miscselect_mask
        )));
    }
    let masked = |a: &[u8; 16]| -> Vec<u8> {
        a.iter()
            .zip(&id.attributes_mask)
            .map(|(x, m)| x & m)
            .collect()
    };
    if masked(&qe.attributes) != masked(&id.attributes) {
        return Err(QeMismatch::Identity(format!(
            "QE ATTRIBUTES {} do not match {} under mask {}",
            hex::encode(qe.attributes),
            hex::encode(id.attributes),
            hex::encode(id.attributes_mask)
        )));
    }
    id.tcb_levels
        .iter()
        .find(|(isvsvn, ..)| qe.isv_svn >= *isvsvn)
        .map(|(_, status, adv, date)| Graded::new(*status, adv, date))
        .ok_or_else(|| {
            QeMismatch::Level(format!(
                "QE ISVSVN {} is below every level of the QE identity",
                qe.isv_svn
            ))
        })
}

/// A platform level as a graded status.
pub fn graded(level: &TcbLevel) -> Graded {
    Graded::new(level.status, &level.advisory_ids, &level.tcb_date)
}

#[cfg(test)]
mod tests {
    use super::TcbStatus::*;
    use super::*;

    #[test]
    fn converge_is_the_worse_on_each_axis() {
        assert_eq!(UpToDate.converge(UpToDate), UpToDate);
        assert_eq!(UpToDate.converge(OutOfDate), OutOfDate);
        assert_eq!(SWHardeningNeeded.converge(OutOfDate), OutOfDate);
        assert_eq!(
            ConfigurationAndSWHardeningNeeded.converge(UpToDate),
            ConfigurationAndSWHardeningNeeded
        );
        assert_eq!(
            ConfigurationNeeded.converge(OutOfDate),
            OutOfDateConfigurationNeeded
        );
        assert_eq!(
            ConfigurationNeeded.converge(SWHardeningNeeded),
            ConfigurationAndSWHardeningNeeded
        );
        assert_eq!(OutOfDate.converge(Revoked), Revoked);
        for s in [
            UpToDate,
            SWHardeningNeeded,
            ConfigurationNeeded,
            ConfigurationAndSWHardeningNeeded,
            OutOfDate,
            OutOfDateConfigurationNeeded,
            Revoked,
        ] {
            assert_eq!(TcbStatus::parse(s.name()), Ok(s));
            assert_eq!(s.converge(s), s);
            assert_eq!(s.converge(UpToDate), s);
        }
        assert_eq!(
            TcbStatus::parse("Fine"),
            Err(UnknownTcbStatus("Fine".into()))
        );
    }
}
