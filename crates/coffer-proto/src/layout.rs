//! The I/O directory the host shares with the agent (a bind mount in the namespace backend, the
//! guest's tmpfs fed over the channel in the VM backend). Everything in it is host data.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

/// Where the I/O directory appears inside the TEE.
pub const IO_DIR: &str = "/run/coffer/io";
/// The agent's work directory inside the TEE.
pub const WORK_DIR: &str = "/run/coffer";
/// The policy the host hands over (checked against HOST_DATA before anything is served).
pub const POLICY_FILE: &str = "policy.rego";
/// The agent's socket (the protocol).
pub const AGENT_SOCKET: &str = "agent.sock";
/// The emulated secure processor's socket.
pub const SP_SOCKET: &str = "sp.sock";
/// The egress relay's socket.
pub const EGRESS_SOCKET: &str = "egress.sock";
/// Layer images placed by the host.
pub const LAYERS_DIR: &str = "layers";
/// Encrypted volume images (or `.url` files naming remote ones) placed by the host.
pub const VOLUMES_DIR: &str = "volumes";

/// What the agent learns about its network ([`GROUP_FILE`] in the I/O directory): the data for
/// the containers' `/etc/hosts` and `/etc/resolv.conf`. Host data, like the network itself.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupNet {
    /// The group's name as the host knows it.
    pub name: String,
    /// The group's address on the bridge (none: loopback only).
    #[serde(default)]
    pub address: Option<Ipv4Addr>,
    /// The host's resolver configuration.
    pub resolv_conf: String,
}

/// Name of [`GroupNet`]'s file in the I/O directory.
pub const GROUP_FILE: &str = "net.json";
/// Largest `resolv.conf` passed on.
pub const MAX_RESOLV_CONF: usize = 64 << 10;

/// The guest image's kernel modules, in sets the agent loads only when the group needs them
/// (under TCG a module takes 3-160 ms to load). Each set is a list in the initramfs, one module
/// path per line, dependencies first; a later set lists only what the sets before it lack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModuleSet {
    /// First, at boot: the channel's port and `sev-guest` (which decides the secure processor).
    Channel,
    /// When the guest has a PCI bus (SNP's q35 machine; microvm has none): virtio-pci.
    Pci,
    /// At boot, beside the policy check: disks, dm-verity, ext4, overlayfs.
    Storage,
    /// When the group has a network: virtio-net.
    Net,
    /// When the group has encrypted volumes: dm-crypt, its ciphers, and loop (a pinned
    /// volume's hash tree).
    Volumes,
}

impl ModuleSet {
    /// Every set, in the order their lists are made.
    pub const ALL: [ModuleSet; 5] = [
        ModuleSet::Channel,
        ModuleSet::Pci,
        ModuleSet::Storage,
        ModuleSet::Net,
        ModuleSet::Volumes,
    ];

    /// Its list in the initramfs (an absolute path in the guest).
    pub fn list(self) -> &'static str {
        match self {
            ModuleSet::Channel => "/etc/coffer/modules.channel",
            ModuleSet::Pci => "/etc/coffer/modules.pci",
            ModuleSet::Storage => "/etc/coffer/modules.storage",
            ModuleSet::Net => "/etc/coffer/modules.net",
            ModuleSet::Volumes => "/etc/coffer/modules.volumes",
        }
    }
}
