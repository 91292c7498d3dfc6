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

/// Why a setting the policy carries is refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SettingError {
    /// A published port is unusable.
    #[error("port {port:?}: {why}")]
    Port {
        /// The port as written.
        port: Box<PortPolicy>,
        /// What is wrong with it.
        why: PortProblem,
    },
    /// An attestation or key broker endpoint is not `http://host:port`.
    #[error("{what}: {field}: {source}")]
    Endpoint {
        /// Which setting (a volume, the SKR API).
        what: String,
        /// "attestation endpoint" or "key broker endpoint".
        field: &'static str,
        /// Why the endpoint does not parse.
        source: coffer_release::ReleaseError,
    },
    /// The broker key is not an RFC 7638 thumbprint.
    #[error(
        "{what}: key broker key '{key}' is not an RFC 7638 SHA-256 thumbprint (43 base64url \
         characters; `coffer serve` prints its own at start and serves it at /broker-key)"
    )]
    BrokerKey {
        /// Which setting (a volume, the SKR API).
        what: String,
        /// The key as written.
        key: String,
    },
}

/// What is wrong with a published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PortProblem {
    /// Container or host port 0.
    #[error("port 0")]
    Zero,
    /// Neither TCP nor UDP.
    #[error("protocol is not TCP or UDP")]
    Protocol,
    /// `host_ip` is set and is not an IPv4 address.
    #[error("host_ip is not an IPv4 address")]
    HostIp,
}

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
    pub fn check(&self) -> Result<(), SettingError> {
        let bad = |why| SettingError::Port {
            port: Box::new(self.clone()),
            why,
        };
        if self.container_port == 0 || self.host_port == 0 {
            return Err(bad(PortProblem::Zero));
        }
        if self.protocol != "TCP" && self.protocol != "UDP" {
            return Err(bad(PortProblem::Protocol));
        }
        if !self.host_ip.is_empty() && self.host_ip.parse::<std::net::Ipv4Addr>().is_err() {
            return Err(bad(PortProblem::HostIp));
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
    pub fn check(&self, what: &str) -> Result<(), SettingError> {
        for (field, v) in [
            ("attestation endpoint", &self.maa_endpoint),
            ("key broker endpoint", &self.akv_endpoint),
        ] {
            coffer_release::Endpoint::parse(v).map_err(|source| SettingError::Endpoint {
                what: what.to_string(),
                field,
                source,
            })?;
        }
        if !coffer_release::is_thumbprint(&self.broker_key) {
            return Err(SettingError::BrokerKey {
                what: what.to_string(),
                key: self.broker_key.clone(),
            });
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
        fn bad(name: &str, e: impl std::fmt::Display) -> crate::PolicyError {
            crate::PolicyError::BadInput(format!("the policy's {name}: {e}"))
        }
        let skr: Option<SkrPolicy> = enforcer
            .policy_value(SKR)?
            .map(serde_json::from_value)
            .transpose()
            .map_err(|e| bad(SKR, e))?;
        let encrypted_volumes: Vec<EncryptedVolumePolicy> = enforcer
            .policy_value(ENCRYPTED_VOLUMES)?
            .map(serde_json::from_value)
            .transpose()
            .map_err(|e| bad(ENCRYPTED_VOLUMES, e))?
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
            .map_err(|e| bad(HOSTNAME, e))?;
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
            .map_err(|e| bad(PORTS, e))?
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
            .map_err(|e| bad(FS_GROUP, e))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn port() -> PortPolicy {
        PortPolicy {
            container: "app".into(),
            container_port: 80,
            host_port: 8080,
            protocol: "TCP".into(),
            host_ip: String::new(),
            name: String::new(),
        }
    }

    fn problem(p: PortPolicy) -> Option<PortProblem> {
        match p.check() {
            Ok(()) => None,
            Err(SettingError::Port { why, .. }) => Some(why),
            Err(other) => panic!("not a port error: {other}"),
        }
    }

    #[test]
    fn ports_are_checked_field_by_field() {
        assert_eq!(problem(port()), None);
        let zero = PortPolicy {
            host_port: 0,
            ..port()
        };
        assert_eq!(problem(zero), Some(PortProblem::Zero));
        let sctp = PortPolicy {
            protocol: "SCTP".into(),
            ..port()
        };
        assert_eq!(problem(sctp), Some(PortProblem::Protocol));
        let v6 = PortPolicy {
            host_ip: "::1".into(),
            ..port()
        };
        assert_eq!(problem(v6), Some(PortProblem::HostIp));
    }

    #[test]
    fn broker_settings_name_the_bad_field() {
        let good = KeyBrokerPolicy {
            maa_endpoint: "http://127.0.0.1:7070".into(),
            akv_endpoint: "http://127.0.0.1:7070".into(),
            broker_key: "A".repeat(43),
        };
        assert!(good.check("v").is_ok(), "{:?}", good.check("v"));
        let bad_endpoint = KeyBrokerPolicy {
            akv_endpoint: "https://x".into(),
            ..good.clone()
        };
        assert!(matches!(
            bad_endpoint.check("v"),
            Err(SettingError::Endpoint {
                field: "key broker endpoint",
                ..
            })
        ));
        let bad_key = KeyBrokerPolicy {
            broker_key: "short".into(),
            ..good
        };
        assert!(matches!(
            bad_key.check("v"),
            Err(SettingError::BrokerKey { ref key, .. }) if key == "short"
        ));
    }
}
