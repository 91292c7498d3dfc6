//! Security policies for confidential container groups.
//!
//! * [`generate`]: a Kubernetes Pod spec plus measured images become a Rego policy shaped like
//!   Azure's generated ones (`package policy`, `containers := [...]` on one line, `allow_*`
//!   switches, every enforcement point mapped to `data.framework.<point>`). Byte-stable.
//! * [`Enforcer`]: the policy plus Coffer's own `framework.rego`, evaluated with regorus, decides each
//!   request and keeps the group's state (mounted layers, containers) between requests.
//!
//! The policy's SHA-256 ([`digest`]) is what the TEE's HOST_DATA must hold.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod engine;
mod gen;
pub mod input;
mod pod;
mod settings;

pub use engine::{
    Decision, EnforcementPoint, Enforcer, ENFORCEMENT_POINTS, FRAMEWORK_REGO, FRAMEWORK_VERSION,
};
pub use gen::{
    allow_all_policy, generate, resolve_container, volume_source, GenOptions, ImageFacts,
    ResolvedContainer, DEFAULT_CAPS, SKR_ANNOTATION, SKR_BROKER_ANNOTATIONS,
};
pub use input::Input;
pub use pod::{is_dns_label, parse_pod, ContainerPort, Pod, PodSecurityContext, ENCFS_DRIVER};
pub use settings::{
    EncryptedVolumePolicy, KeyBrokerPolicy, PortPolicy, PortProblem, SettingError, Settings,
    SkrPolicy, ENCRYPTED_VOLUMES, FS_GROUP, HOSTNAME, PORTS, SKR,
};

/// Turn off backtraces in library errors unless `RUST_LIB_BACKTRACE` asks for them; binaries
/// that load policies call it first in `main`, while they have one thread.
///
/// Why: regorus's parser makes and drops an `anyhow` error at each alternative it tries, and
/// with `RUST_BACKTRACE` set (as many developers keep it) each one captures a backtrace: loading
/// a generated policy then takes 5.3 ms instead of 2.0 ms, on every group's start, in the agent
/// and in the launcher. Panics still print backtraces as `RUST_BACKTRACE` says.
pub fn no_library_backtraces() {
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        std::env::set_var("RUST_LIB_BACKTRACE", "0");
    }
}

/// Errors of policy generation and enforcement.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// The Pod manifest is not valid YAML or not a Pod coffer supports.
    #[error("pod manifest: {0}")]
    Pod(String),
    /// A field coffer does not support (never silently ignored).
    #[error("pod manifest: unsupported field {field}: {why}")]
    Unsupported {
        /// Path of the field, e.g. `spec.containers[0].ports`.
        field: String,
        /// Why it is not supported.
        why: String,
    },
    /// An image the Pod names was not provided.
    #[error("image {0} was not resolved")]
    MissingImage(String),
    /// The policy text does not load.
    #[error("policy does not load: {0}")]
    Load(String),
    /// Evaluation failed (not a denial: the engine could not decide).
    #[error("policy evaluation of {rule} failed: {reason}")]
    Eval {
        /// Enforcement point.
        rule: String,
        /// Engine message.
        reason: String,
    },
    /// The rule is not an enforcement point.
    #[error("unknown enforcement point '{0}' (known: {list})", list = ENFORCEMENT_POINTS.join(", "))]
    UnknownRule(String),
    /// Input or state is not what the point needs.
    #[error("{0}")]
    BadInput(String),
}

/// SHA-256 of the exact policy bytes: the value HOST_DATA must carry.
pub fn digest(policy: &[u8]) -> [u8; 32] {
    openssl::sha::sha256(policy)
}
