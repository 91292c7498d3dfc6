//! The agent's replies: one type per operation, and [`Failure`] for a request the policy denied
//! or the agent could not carry out. On the wire every reply is a [`Response`]:
//! `{"ok": {...}}` or `{"err": {"kind": "denied" | "failed", ...}}`.

use serde::{Deserialize, Serialize};

/// The answer to one request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response<T> {
    /// Done; the operation's reply.
    Ok(T),
    /// Not done.
    Err(Failure),
}

impl<T> From<Result<T, Failure>> for Response<T> {
    fn from(r: Result<T, Failure>) -> Self {
        match r {
            Ok(t) => Response::Ok(t),
            Err(f) => Response::Err(f),
        }
    }
}

impl<T> From<Response<T>> for Result<T, Failure> {
    fn from(r: Response<T>) -> Self {
        match r {
            Response::Ok(t) => Ok(t),
            Response::Err(f) => Err(f),
        }
    }
}

/// Why a request was not carried out.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Failure {
    /// The policy's enforcement point `rule` denied it; `reasons` are the policy's own.
    #[error("denied by policy ({rule}){}", if reasons.is_empty() { String::new() } else { format!(": {}", reasons.join("; ")) })]
    Denied {
        /// The enforcement point.
        rule: String,
        /// What the policy said.
        reasons: Vec<String>,
    },
    /// The request was allowed (or not yet decided) and failed, or was malformed.
    #[error("{message}")]
    Failed {
        /// What went wrong.
        message: String,
    },
}

/// A reply with nothing to report.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Done {}

/// The report fields the agent shows the host (`hello`, `get_properties`), hex.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportSummary {
    /// HOST_DATA (SHA-256 of the policy).
    pub host_data: String,
    /// MEASUREMENT.
    pub measurement: String,
    /// REPORT_ID.
    pub report_id: String,
}

/// Reply to `hello`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hello {
    /// The agent's protocol version.
    pub version: u32,
    /// Its report's launch data.
    pub report: ReportSummary,
}

/// Reply to `mount_layer`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayerMounted {
    /// The layer's dm-verity root as the agent measured it (hex).
    pub device_hash: String,
}

/// Reply to `create_container`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Created {
    /// The environment the container got (what the policy allowed).
    pub env_list: Vec<String>,
    /// Whether the host may read its output.
    pub allow_stdio_access: bool,
}

/// Reply to `exec`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Executed {
    /// Exit status (-1: killed by a signal).
    pub exit: i32,
    /// Output, empty unless the policy allows stdio access.
    pub stdout: String,
    /// Error output, likewise.
    pub stderr: String,
}

/// One container in [`Properties`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerInfo {
    /// Container id.
    pub id: String,
    /// Exit status once it exited.
    pub exit: Option<i32>,
    /// Its root inside the TEE.
    pub rootfs: String,
}

/// Reply to `get_properties`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Properties {
    /// The containers.
    pub containers: Vec<ContainerInfo>,
    /// The report's launch data.
    pub report: ReportSummary,
}

/// Reply to `shutdown`: what could not be cleaned up (the group ends anyway).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShutDown {
    /// Problems met while stopping.
    pub problems: Vec<String>,
}

/// The frames `attach` streams: output lines while the container runs, then its exit status.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "frame", rename_all = "snake_case", deny_unknown_fields)]
pub enum AttachFrame {
    /// A line of output.
    Output {
        /// `stdout`, `stderr`, or `coffer` for the agent's own notes.
        stream: String,
        /// The line.
        data: String,
    },
    /// The container's output is not for the host (the policy denies stdio access); the exit
    /// status still follows.
    NoStdio {
        /// Why.
        reason: String,
    },
    /// The container exited.
    Exit {
        /// Its status.
        code: i32,
    },
    /// No such container, or another failure: the stream ends.
    Failed(Failure),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_and_failures_have_their_wire_shape() {
        let ok: Response<LayerMounted> = Response::Ok(LayerMounted {
            device_hash: "ab".into(),
        });
        assert_eq!(
            serde_json::to_string(&ok).unwrap(),
            r#"{"ok":{"device_hash":"ab"}}"#
        );
        let denied: Response<Done> = Response::Err(Failure::Denied {
            rule: "mount_device".into(),
            reasons: vec!["unknown layer".into()],
        });
        assert_eq!(
            serde_json::to_string(&denied).unwrap(),
            r#"{"err":{"kind":"denied","rule":"mount_device","reasons":["unknown layer"]}}"#
        );
        assert_eq!(
            Failure::Denied {
                rule: "r".into(),
                reasons: vec!["a".into(), "b".into()]
            }
            .to_string(),
            "denied by policy (r): a; b"
        );
    }

    #[test]
    fn a_reply_with_unknown_or_missing_fields_is_refused() {
        assert!(serde_json::from_str::<Response<Created>>(r#"{"ok":{"env_list":[]}}"#).is_err());
        assert!(serde_json::from_str::<Response<Executed>>(
            r#"{"ok":{"exit":0,"stdout":"","stderr":"","extra":1}}"#
        )
        .is_err());
        assert!(serde_json::from_str::<Response<Done>>(r#"{"maybe":{}}"#).is_err());
    }
}
