//! The subset of the Kubernetes Pod spec (core/v1) that Coffer runs.
//!
//! Every struct refuses unknown fields, so an unsupported field is an error that names it rather
//! than something silently ignored.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;

use crate::PolicyError;

/// A Pod manifest.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Pod {
    /// Must be `v1`.
    pub api_version: String,
    /// Must be `Pod`.
    pub kind: String,
    /// Name and annotations.
    pub metadata: ObjectMeta,
    /// The group.
    pub spec: PodSpec,
}

/// Pod metadata.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ObjectMeta {
    /// Group name.
    pub name: String,
    /// Namespace (informational).
    #[serde(default)]
    pub namespace: Option<String>,
    /// Labels (informational).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Annotations (Coffer's own are under `coffer.dev/`).
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

/// Pod spec.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PodSpec {
    /// Containers, started in order; the first is the main one.
    pub containers: Vec<Container>,
    /// Volumes the containers mount.
    #[serde(default)]
    pub volumes: Vec<Volume>,
    /// `Never`, `OnFailure` or `Always`: what a detached group's owner does when a container
    /// exits (default `Always`, as in Kubernetes, for `coffer run --detach`; a group in the
    /// foreground runs once, as `docker run` without `--restart`).
    #[serde(default)]
    pub restart_policy: Option<String>,
    /// Pod-level privileges: defaults for every container (a container's own `securityContext`
    /// overrides `runAsUser`, `runAsGroup` and `runAsNonRoot`), plus the group-wide
    /// `supplementalGroups` and `fsGroup`.
    #[serde(default)]
    pub security_context: Option<PodSecurityContext>,
    /// Seconds between SIGTERM and SIGKILL when the group is stopped (Kubernetes' default 30).
    #[serde(default)]
    pub termination_grace_period_seconds: Option<u64>,
}

/// A container.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Container {
    /// Name, unique in the Pod.
    pub name: String,
    /// Image: a stored image name, or `oci:DIR[:TAG]`.
    pub image: String,
    /// Overrides the image's Entrypoint.
    #[serde(default)]
    pub command: Option<Vec<String>>,
    /// Overrides the image's Cmd.
    #[serde(default)]
    pub args: Option<Vec<String>>,
    /// Environment variables.
    #[serde(default)]
    pub env: Vec<EnvVar>,
    /// Overrides the image's WorkingDir.
    #[serde(default)]
    pub working_dir: Option<String>,
    /// Privileges.
    #[serde(default)]
    pub security_context: Option<SecurityContext>,
    /// Volume mounts.
    #[serde(default)]
    pub volume_mounts: Vec<VolumeMount>,
    /// Liveness probe (exec only).
    #[serde(default)]
    pub liveness_probe: Option<Probe>,
    /// Readiness probe (exec only).
    #[serde(default)]
    pub readiness_probe: Option<Probe>,
    /// Startup probe (exec only).
    #[serde(default)]
    pub startup_probe: Option<Probe>,
    /// Lifecycle hooks (exec only).
    #[serde(default)]
    pub lifecycle: Option<Lifecycle>,
    /// Resource limits (cgroups).
    #[serde(default)]
    pub resources: Option<Resources>,
    /// Accepted for compatibility; images come from the local store.
    #[serde(default)]
    pub image_pull_policy: Option<String>,
    /// Ports the container listens on; those with a `hostPort` are published on the host.
    #[serde(default)]
    pub ports: Vec<ContainerPort>,
}

/// A port of a container (`containerPort`); with `hostPort`, published on the host.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ContainerPort {
    /// The port the container listens on in the group's network namespace.
    pub container_port: u32,
    /// Published on this port of the host.
    #[serde(default)]
    pub host_port: Option<u32>,
    /// `TCP` (default) or `UDP`.
    #[serde(default)]
    pub protocol: Option<String>,
    /// An IANA service name (informational).
    #[serde(default)]
    pub name: Option<String>,
    /// The host address to publish on (IPv4); default: the launcher's publish address.
    #[serde(default, rename = "hostIP")]
    pub host_ip: Option<String>,
}

impl ContainerPort {
    /// `TCP` or `UDP` (upper case; default `TCP`).
    pub fn protocol(&self) -> String {
        self.protocol
            .as_deref()
            .unwrap_or("TCP")
            .to_ascii_uppercase()
    }
}

/// An environment variable: a literal value, or a value supplied at run time.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EnvVar {
    /// Name.
    pub name: String,
    /// Literal value.
    #[serde(default)]
    pub value: Option<String>,
    /// A reference resolved outside the policy's knowledge: any non-empty value is allowed.
    #[serde(default)]
    pub value_from: Option<serde_yaml::Value>,
}

/// Security context.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SecurityContext {
    /// Run privileged (all capabilities).
    #[serde(default)]
    pub privileged: Option<bool>,
    /// `false` sets no_new_privileges.
    #[serde(default)]
    pub allow_privilege_escalation: Option<bool>,
    /// Capabilities to add or drop.
    #[serde(default)]
    pub capabilities: Option<Capabilities>,
    /// User id.
    #[serde(default)]
    pub run_as_user: Option<u32>,
    /// Group id.
    #[serde(default)]
    pub run_as_group: Option<u32>,
    /// Refuse (at policy generation) a container that would run as uid 0.
    #[serde(default)]
    pub run_as_non_root: Option<bool>,
    /// The container's root file system is mounted read-only (volumes keep their own mode).
    #[serde(default)]
    pub read_only_root_filesystem: Option<bool>,
}

/// Pod security context (the fields Coffer supports; others are refused by name).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PodSecurityContext {
    /// User id of every container that does not set its own.
    #[serde(default)]
    pub run_as_user: Option<u32>,
    /// Group id of every container that does not set its own.
    #[serde(default)]
    pub run_as_group: Option<u32>,
    /// Refuse a container that would run as uid 0, unless the container says otherwise.
    #[serde(default)]
    pub run_as_non_root: Option<bool>,
    /// Groups added to every container's process (besides its primary group).
    #[serde(default)]
    pub supplemental_groups: Vec<u32>,
    /// A group added to every container's process, which owns the group's emptyDir volumes
    /// (setgid directories, group-writable), as Kubernetes does.
    #[serde(default)]
    pub fs_group: Option<u32>,
}

/// Capability changes (names with or without `CAP_`, or `ALL`).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Capabilities {
    /// Added.
    #[serde(default)]
    pub add: Vec<String>,
    /// Dropped.
    #[serde(default)]
    pub drop: Vec<String>,
}

/// A volume mount.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct VolumeMount {
    /// Volume name.
    pub name: String,
    /// Where in the container.
    pub mount_path: String,
    /// Read-only.
    #[serde(default)]
    pub read_only: Option<bool>,
}

/// A volume.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Volume {
    /// Name.
    pub name: String,
    /// Scratch space shared by the group's containers.
    #[serde(default)]
    pub empty_dir: Option<EmptyDir>,
    /// An encrypted volume (driver `encfs.coffer.dev`): a LUKS2 image opened inside the TEE with
    /// a key released to the group.
    #[serde(default)]
    pub csi: Option<CsiVolume>,
}

/// The CSI inline volume Coffer understands: `driver: encfs.coffer.dev` with attributes
/// `source` (LUKS2 image on the host), `keyName`, `attestationEndpoint`, `keyBrokerEndpoint`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CsiVolume {
    /// Must be `encfs.coffer.dev`.
    pub driver: String,
    /// Read-only (the only mode implemented).
    #[serde(default)]
    pub read_only: Option<bool>,
    /// Attributes.
    #[serde(default)]
    pub volume_attributes: BTreeMap<String, String>,
}

/// CSI driver name of Coffer's encrypted volumes.
pub const ENCFS_DRIVER: &str = "encfs.coffer.dev";

/// emptyDir volume.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EmptyDir {
    /// `Memory` or empty.
    #[serde(default)]
    pub medium: Option<String>,
    /// Size limit.
    #[serde(default)]
    pub size_limit: Option<String>,
}

/// A probe (exec only; httpGet and tcpSocket are not supported).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Probe {
    /// Command run in the container.
    pub exec: ExecAction,
    /// Timing (accepted).
    #[serde(default)]
    pub initial_delay_seconds: Option<u32>,
    /// Timing (accepted).
    #[serde(default)]
    pub period_seconds: Option<u32>,
    /// Timing (accepted).
    #[serde(default)]
    pub timeout_seconds: Option<u32>,
    /// Timing (accepted).
    #[serde(default)]
    pub failure_threshold: Option<u32>,
    /// Timing (accepted).
    #[serde(default)]
    pub success_threshold: Option<u32>,
}

/// An exec action.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecAction {
    /// argv.
    pub command: Vec<String>,
}

/// Lifecycle hooks.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Lifecycle {
    /// After start.
    #[serde(default)]
    pub post_start: Option<Handler>,
    /// Before stop.
    #[serde(default)]
    pub pre_stop: Option<Handler>,
}

/// A hook handler (exec only).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Handler {
    /// The command.
    pub exec: ExecAction,
}

/// Resource limits and requests (e.g. `memory: 64Mi`, `cpu: 500m`). Limits of `memory` and `cpu`
/// become the container's cgroup limits; other resources are refused.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// Limits, enforced with cgroups.
    #[serde(default)]
    pub limits: BTreeMap<String, serde_yaml::Value>,
    /// Requests (accepted).
    #[serde(default)]
    pub requests: BTreeMap<String, serde_yaml::Value>,
}

/// Parse and validate a Pod manifest.
pub fn parse_pod(yaml: &str) -> Result<Pod, PolicyError> {
    let de = serde_yaml::Deserializer::from_str(yaml);
    let pod: Pod = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        if inner.contains("unknown field") {
            // serde_path_to_error's path already ends with the unknown field's name.
            PolicyError::Unsupported {
                field: path,
                why: "coffer does not support this field (it would otherwise be silently ignored)"
                    .into(),
            }
        } else {
            PolicyError::Pod(format!("{path}: {inner}"))
        }
    })?;
    validate(&pod)?;
    Ok(pod)
}

/// Ports: valid numbers and protocols, IPv4 host addresses, and no host port published twice
/// (same protocol and overlapping host addresses).
fn validate_ports(pod: &Pod) -> Result<(), PolicyError> {
    let bad = |m: String| Err(PolicyError::Pod(m));
    // Published so far: (protocol, host port, host address, where).
    let mut published: Vec<(String, u32, Option<std::net::Ipv4Addr>, String)> = Vec::new();
    for (i, c) in pod.spec.containers.iter().enumerate() {
        for (j, p) in c.ports.iter().enumerate() {
            let at = format!("spec.containers[{i}].ports[{j}]");
            if !(1..=65535).contains(&p.container_port) {
                return bad(format!(
                    "{at}.containerPort {} is not a port (1-65535)",
                    p.container_port
                ));
            }
            let proto = p.protocol();
            match proto.as_str() {
                "TCP" | "UDP" => {}
                "SCTP" => {
                    return Err(PolicyError::Unsupported {
                        field: format!("{at}.protocol"),
                        why: "only TCP and UDP ports are supported".into(),
                    })
                }
                other => return bad(format!("{at}.protocol '{other}' is not TCP or UDP")),
            }
            if let Some(n) = &p.name {
                let ok = !n.is_empty()
                    && n.len() <= 15
                    && n.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                    && n.bytes().any(|b| b.is_ascii_lowercase());
                if !ok {
                    return bad(format!(
                        "{at}.name '{}' is not a service name (1-15 characters: a-z, 0-9, '-', at least one letter)",
                        n.escape_debug()
                    ));
                }
            }
            let ip = match p.host_ip.as_deref() {
                None | Some("") => None,
                Some(a) => match a.parse::<std::net::IpAddr>() {
                    Ok(std::net::IpAddr::V4(v4)) => Some(v4),
                    Ok(std::net::IpAddr::V6(_)) => {
                        return Err(PolicyError::Unsupported {
                            field: format!("{at}.hostIP"),
                            why: "the group network is IPv4 only".into(),
                        })
                    }
                    Err(_) => {
                        return bad(format!(
                            "{at}.hostIP '{}' is not an IPv4 address",
                            a.escape_debug()
                        ))
                    }
                },
            };
            let Some(host_port) = p.host_port else {
                if ip.is_some() {
                    return bad(format!("{at}.hostIP needs a hostPort"));
                }
                continue;
            };
            if !(1..=65535).contains(&host_port) {
                return bad(format!("{at}.hostPort {host_port} is not a port (1-65535)"));
            }
            // Unspecified (the launcher's address, or 0.0.0.0) overlaps every address.
            let any = |x: &Option<std::net::Ipv4Addr>| x.filter(|a| !a.is_unspecified()).is_none();
            if let Some((.., first)) = published.iter().find(|(pr, hp, a, _)| {
                *pr == proto && *hp == host_port && (any(a) || any(&ip) || *a == ip)
            }) {
                return bad(format!(
                    "{at}: hostPort {host_port}/{proto} is already published by {first}"
                ));
            }
            published.push((proto, host_port, ip, at));
        }
    }
    Ok(())
}

/// An RFC 1123 label, as Kubernetes requires of names that become host paths and identifiers.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn validate(pod: &Pod) -> Result<(), PolicyError> {
    let bad = |m: String| Err(PolicyError::Pod(m));
    if pod.api_version != "v1" || pod.kind != "Pod" {
        return bad(format!(
            "expected apiVersion: v1 and kind: Pod, got {} {}",
            pod.api_version, pod.kind
        ));
    }
    if !is_dns_label(&pod.metadata.name) {
        return bad(format!(
            "metadata.name '{}' must be an RFC 1123 label (1-63 characters: a-z, 0-9, '-', \
             starting and ending with a letter or digit); it names the group on the host",
            pod.metadata.name.escape_debug()
        ));
    }
    if pod.spec.containers.is_empty() {
        return bad("spec.containers is empty".into());
    }
    let mut names = BTreeSet::new();
    for (i, c) in pod.spec.containers.iter().enumerate() {
        if c.name.is_empty() || !names.insert(&c.name) {
            return bad(format!(
                "spec.containers[{i}].name '{}' is empty or repeated",
                c.name
            ));
        }
        if c.image.is_empty() {
            return bad(format!("spec.containers[{i}].image is empty"));
        }
        for (j, e) in c.env.iter().enumerate() {
            if e.value.is_some() && e.value_from.is_some() {
                return bad(format!(
                    "spec.containers[{i}].env[{j}] has both value and valueFrom"
                ));
            }
            if e.name.is_empty() || e.name.contains('=') {
                return bad(format!(
                    "spec.containers[{i}].env[{j}].name '{}' is invalid",
                    e.name
                ));
            }
        }
        for (j, m) in c.volume_mounts.iter().enumerate() {
            if !pod.spec.volumes.iter().any(|v| v.name == m.name) {
                return bad(format!(
                    "spec.containers[{i}].volumeMounts[{j}] names volume '{}', which spec.volumes does not define",
                    m.name
                ));
            }
            if !m.mount_path.starts_with('/') {
                return bad(format!(
                    "spec.containers[{i}].volumeMounts[{j}].mountPath must be absolute"
                ));
            }
        }
    }
    for (i, v) in pod.spec.volumes.iter().enumerate() {
        const REQUIRED: [&str; 5] = [
            "source",
            "keyName",
            "attestationEndpoint",
            "keyBrokerEndpoint",
            "keyBrokerKey",
        ];
        const ATTRS: [&str; 8] = [
            "source",
            "keyName",
            "attestationEndpoint",
            "keyBrokerEndpoint",
            "keyBrokerKey",
            "keyDerivationSalt",
            "keyDerivationLabel",
            "verityRootHash",
        ];
        match (&v.empty_dir, &v.csi) {
            (Some(_), None) => {}
            (None, Some(csi)) => {
                if csi.driver != ENCFS_DRIVER {
                    return bad(format!("spec.volumes[{i}].csi.driver '{}' is not supported (only {ENCFS_DRIVER})", csi.driver));
                }
                for a in REQUIRED {
                    if !csi.volume_attributes.contains_key(a) {
                        return bad(format!("spec.volumes[{i}].csi.volumeAttributes.{a} is missing"));
                    }
                }
                if let Some(root) = csi.volume_attributes.get("verityRootHash") {
                    if csi.read_only == Some(false) {
                        return bad(format!("spec.volumes[{i}].csi.volumeAttributes.verityRootHash pins a read-only volume's content; this volume is readOnly: false"));
                    }
                    if root.len() != 64 || !root.bytes().all(|b| b.is_ascii_hexdigit()) {
                        return bad(format!("spec.volumes[{i}].csi.volumeAttributes.verityRootHash '{root}' is not 64 hex digits"));
                    }
                }
                if let Some(extra) = csi.volume_attributes.keys().find(|k| !ATTRS.contains(&k.as_str())) {
                    return Err(PolicyError::Unsupported {
                        field: format!("spec.volumes[{i}].csi.volumeAttributes.{extra}"),
                        why: "unknown encfs attribute".into(),
                    });
                }
            }
            _ => {
                return bad(format!(
                    "spec.volumes[{i}] ('{}') needs exactly one kind (emptyDir, or csi with driver {ENCFS_DRIVER})",
                    v.name
                ))
            }
        }
        if !is_dns_label(&v.name) {
            return bad(format!(
                "spec.volumes[{i}].name '{}' must be a DNS label",
                v.name
            ));
        }
    }
    for (i, c) in pod.spec.containers.iter().enumerate() {
        if let Some(r) = &c.resources {
            for k in r.limits.keys().chain(r.requests.keys()) {
                if k != "memory" && k != "cpu" {
                    return Err(PolicyError::Unsupported {
                        field: format!("spec.containers[{i}].resources.*.{k}"),
                        why: "only cpu and memory are supported".into(),
                    });
                }
            }
        }
    }
    validate_ports(pod)?;
    if let Some(p) = &pod.spec.restart_policy {
        if !matches!(p.as_str(), "Never" | "OnFailure" | "Always") {
            return bad(format!(
                "spec.restartPolicy '{p}' is not Never, OnFailure or Always"
            ));
        }
    }
    Ok(())
}
