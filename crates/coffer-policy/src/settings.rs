//! Settings the policy carries for the agent besides its rules: which key opens which encrypted
//! volume and from which broker, the in-group key release API, the group's host name and the
//! ports it publishes. Written by [`crate::generate`],
//! read by the agent; one type each, so both sides agree on every field.

use serde::{Deserialize, Serialize};

/// Rego name of the encrypted volumes' list.
pub const ENCRYPTED_VOLUMES: &str = "coffer_encrypted_volumes";
/// Rego name of the SKR API settings.
pub const SKR: &str = "coffer_skr";
/// Rego name of the group's host name (the Pod's name).
pub const HOSTNAME: &str = "coffer_hostname";
/// Rego name of the published ports' list.
pub const PORTS: &str = "coffer_ports";
/// Rego name of the group that owns the group's emptyDir volumes (the Pod's `fsGroup`).
pub const FS_GROUP: &str = "coffer_fs_group";

/// A port published on the host: connections to `host_ip:host_port` reach `container_port` in
/// the group's network namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortPolicy {
    /// The container that declares it.
    pub container: String,
    /// Port in the group.
    pub container_port: u16,
    /// Port on the host.
    pub host_port: u16,
    /// `TCP` or `UDP`.
    pub protocol: String,
    /// Host address (IPv4); empty: the launcher's publish address (`--publish-address`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub host_ip: String,
    /// Service name (informational).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
}

impl PortPolicy {
    /// Check the fields.
    pub fn check(&self) -> Result<(), String> {
        if self.container_port == 0 || self.host_port == 0 {
            return Err(format!("port {self:?}: port 0"));
        }
        if self.protocol != "TCP" && self.protocol != "UDP" {
            return Err(format!("port {self:?}: protocol is not TCP or UDP"));
        }
        if !self.host_ip.is_empty() && self.host_ip.parse::<std::net::Ipv4Addr>().is_err() {
            return Err(format!("port {self:?}: host_ip is not an IPv4 address"));
        }
        Ok(())
    }
}

/// Where keys come from: the attestation service, the key broker, and the broker's signing key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyBrokerPolicy {
    /// Attestation service (`http://host:port`).
    pub maa_endpoint: String,
    /// Key broker (`http://host:port`).
    pub akv_endpoint: String,
    /// RFC 7638 thumbprint of the key that signs the broker's release responses.
    pub broker_key: String,
}

impl KeyBrokerPolicy {
    /// Check the endpoints and the thumbprint; `what` names the source in errors.
    pub fn check(&self, what: &str) -> Result<(), String> {
        for (field, v) in [
            ("attestation endpoint", &self.maa_endpoint),
            ("key broker endpoint", &self.akv_endpoint),
        ] {
            coffer_release::Endpoint::parse(v).map_err(|e| format!("{what}: {field}: {e}"))?;
        }
        if !coffer_release::is_thumbprint(&self.broker_key) {
            return Err(format!(
                "{what}: key broker key '{}' is not an RFC 7638 SHA-256 thumbprint (43 base64url \
                 characters; `coffer serve` prints its own at start and serves it at /broker-key)",
                self.broker_key
            ));
        }
        Ok(())
    }
}

/// An encrypted volume.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncryptedVolumePolicy {
    /// Volume name.
    pub name: String,
    /// Name of the key at the broker.
    pub key: String,
    /// Where the key comes from.
    #[serde(flatten)]
    pub broker: KeyBrokerPolicy,
    /// HKDF salt (hex) for RSA keys.
    pub salt: String,
    /// HKDF label for RSA keys.
    pub label: String,
    /// Mounted read-only.
    pub read_only: bool,
    /// dm-verity root (hex) of the volume's plaintext file system, for read-only volumes: a
    /// volume whose plaintext differs is refused even when the key opens it. Empty: not pinned.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub verity_root: String,
}

/// The in-group key release API.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SkrPolicy {
    /// Port on the group's localhost.
    pub port: u16,
    /// The only attestation service and key broker its callers may use; `None`: only `/status`
    /// and `/attest/raw` work.
    #[serde(default, flatten, skip_serializing_if = "Option::is_none")]
    pub broker: Option<KeyBrokerPolicy>,
}

/// The policy's settings, read from its text.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    /// Encrypted volumes.
    pub encrypted_volumes: Vec<EncryptedVolumePolicy>,
    /// The SKR API.
    pub skr: Option<SkrPolicy>,
    /// The group's host name (an RFC 1123 label); `None` in policies that do not set one.
    pub hostname: Option<String>,
    /// Ports published on the host.
    pub ports: Vec<PortPolicy>,
    /// The group that owns emptyDir volumes (setgid, group-writable); `None`: root's, as made.
    pub fs_group: Option<u32>,
}

impl Settings {
    /// Read and check the settings of a loaded policy; a setting that does not parse is an error
    /// (an agent cannot follow a policy it cannot read).
    pub fn of(enforcer: &mut crate::Enforcer) -> Result<Self, crate::PolicyError> {
        let bad = |name: &str, e: String| {
            crate::PolicyError::BadInput(format!("the policy's {name}: {e}"))
        };
        let skr: Option<SkrPolicy> = enforcer
            .policy_value(SKR)?
            .map(serde_json::from_value)
            .transpose()
            .map_err(|e| bad(SKR, e.to_string()))?;
        let encrypted_volumes: Vec<EncryptedVolumePolicy> = enforcer
            .policy_value(ENCRYPTED_VOLUMES)?
            .map(serde_json::from_value)
            .transpose()
            .map_err(|e| bad(ENCRYPTED_VOLUMES, e.to_string()))?
            .unwrap_or_default();
        for v in &encrypted_volumes {
            v.broker
                .check(&format!("volume '{}'", v.name))
                .map_err(|e| bad(ENCRYPTED_VOLUMES, e))?;
        }
        if let Some(b) = skr.as_ref().and_then(|s| s.broker.as_ref()) {
            b.check("the SKR API").map_err(|e| bad(SKR, e))?;
        }
        let hostname: Option<String> = enforcer
            .policy_value(HOSTNAME)?
            .map(serde_json::from_value)
            .transpose()
            .map_err(|e| bad(HOSTNAME, e.to_string()))?;
        if let Some(h) = hostname.as_deref().filter(|h| !crate::is_dns_label(h)) {
            return Err(bad(
                HOSTNAME,
                format!("'{}' is not an RFC 1123 label", h.escape_debug()),
            ));
        }
        let ports: Vec<PortPolicy> = enforcer
            .policy_value(PORTS)?
            .map(serde_json::from_value)
            .transpose()
            .map_err(|e| bad(PORTS, e.to_string()))?
            .unwrap_or_default();
        let mut seen = std::collections::BTreeSet::new();
        for p in &ports {
            p.check().map_err(|e| bad(PORTS, e))?;
            if !seen.insert((p.protocol.as_str(), p.host_port, p.host_ip.as_str())) {
                return Err(bad(
                    PORTS,
                    format!("host port {}/{} is listed twice", p.host_port, p.protocol),
                ));
            }
        }
        let fs_group: Option<u32> = enforcer
            .policy_value(FS_GROUP)?
            .map(serde_json::from_value)
            .transpose()
            .map_err(|e| bad(FS_GROUP, e.to_string()))?;
        Ok(Settings {
            encrypted_volumes,
            skr,
            hostname,
            ports,
            fs_group,
        })
    }

    /// Every `host:port` the group may reach through the host's egress relay: the attestation
    /// services and key brokers the policy names.
    pub fn egress_destinations(&self) -> Vec<String> {
        let brokers = self
            .encrypted_volumes
            .iter()
            .map(|v| &v.broker)
            .chain(self.skr.iter().filter_map(|s| s.broker.as_ref()));
        let mut out: Vec<String> = brokers
            .flat_map(|b| [&b.maa_endpoint, &b.akv_endpoint])
            .filter_map(|e| coffer_release::Endpoint::parse(e).ok())
            .map(|e| e.host_port())
            .collect();
        out.sort();
        out.dedup();
        out
    }
}
