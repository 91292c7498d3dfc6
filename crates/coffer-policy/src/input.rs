//! What the agent asks the policy: one type per enforcement point, each the input document that
//! point's rule reads (`input.*`), with the field names Azure's generated policies and its
//! framework use (`containerID`, `argList`, `deviceHash`, ...). [`Enforcer::ask`] takes one and
//! asks the point it belongs to, so an input can only reach its own rule, and a field name
//! mistyped in one caller cannot make a rule read `undefined`.
//!
//! [`Enforcer::ask`]: crate::Enforcer::ask

use serde::Serialize;

use crate::EnforcementPoint;

/// A request to the policy, typed by its enforcement point.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Input<'a> {
    /// `mount_device`: a layer the agent measured.
    MountDevice(MountDevice<'a>),
    /// `mount_overlay`: a container's root from mounted layers.
    MountOverlay(MountOverlay<'a>),
    /// `scratch_mount`: a container's writable layer.
    ScratchMount(ScratchMount<'a>),
    /// `create_container`: the process and its mounts.
    CreateContainer(Box<CreateContainer<'a>>),
    /// `exec_in_container`: another process in a running container.
    ExecInContainer(ExecInContainer<'a>),
    /// `signal_container_process`: a signal to a container's process.
    SignalContainerProcess(SignalContainerProcess<'a>),
    /// `shutdown_container`: a container's end.
    ShutdownContainer(ContainerId<'a>),
    /// `unmount_overlay`: a container's root going away.
    UnmountOverlay(UnmountTarget<'a>),
    /// `scratch_unmount`: a container's writable layer going away.
    ScratchUnmount(UnmountTarget<'a>),
    /// `get_properties`: the group's properties (no input).
    GetProperties(NoInput),
}

impl Input<'_> {
    /// The enforcement point this input is for.
    pub fn point(&self) -> EnforcementPoint {
        match self {
            Input::MountDevice(_) => EnforcementPoint::MountDevice,
            Input::MountOverlay(_) => EnforcementPoint::MountOverlay,
            Input::ScratchMount(_) => EnforcementPoint::ScratchMount,
            Input::CreateContainer(_) => EnforcementPoint::CreateContainer,
            Input::ExecInContainer(_) => EnforcementPoint::ExecInContainer,
            Input::SignalContainerProcess(_) => EnforcementPoint::SignalContainerProcess,
            Input::ShutdownContainer(_) => EnforcementPoint::ShutdownContainer,
            Input::UnmountOverlay(_) => EnforcementPoint::UnmountOverlay,
            Input::ScratchUnmount(_) => EnforcementPoint::ScratchUnmount,
            Input::GetProperties(_) => EnforcementPoint::GetProperties,
        }
    }
}

/// `mount_device`'s input.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MountDevice<'a> {
    /// Where the layer is mounted.
    pub target: &'a str,
    /// Its dm-verity root, hex.
    pub device_hash: &'a str,
}

/// `mount_overlay`'s input.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MountOverlay<'a> {
    /// The container.
    #[serde(rename = "containerID")]
    pub container_id: &'a str,
    /// The mounted layers, top first.
    pub layer_paths: &'a [String],
    /// The container's root.
    pub target: &'a str,
}

/// `scratch_mount`'s input.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ScratchMount<'a> {
    /// The writable layer's directory.
    pub target: &'a str,
    /// Whether it is encrypted.
    pub encrypted: bool,
}

/// A mount as `create_container` sees it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Mount<'a> {
    /// Where in the container.
    pub destination: &'a str,
    /// What (`sandbox:///...` for the group's volumes).
    pub source: String,
    /// Mount options.
    pub options: Vec<&'a str>,
    /// `bind`.
    #[serde(rename = "type")]
    pub kind: &'a str,
}

/// A user or group id (`name` empty: by number).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct IdName {
    /// The number, as text.
    pub id: String,
    /// The name, when known.
    pub name: String,
}

/// The five capability sets.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Capabilities<'a> {
    /// Bounding set.
    pub bounding: &'a [String],
    /// Effective set.
    pub effective: &'a [String],
    /// Permitted set.
    pub permitted: &'a [String],
    /// Inheritable set.
    pub inheritable: &'a [String],
    /// Ambient set.
    pub ambient: &'a [String],
}

/// Resource limits asked for.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Resources {
    /// Memory, bytes.
    pub memory_limit: Option<u64>,
    /// CPU, thousandths of a CPU.
    pub cpu_millis: Option<u64>,
}

/// `create_container`'s input.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateContainer<'a> {
    /// The container.
    #[serde(rename = "containerID")]
    pub container_id: &'a str,
    /// The command.
    pub arg_list: &'a [String],
    /// `NAME=value` each.
    pub env_list: &'a [String],
    /// The working directory.
    pub working_dir: &'a str,
    /// Volumes bound in.
    pub mounts: Vec<Mount<'a>>,
    /// Never asked for by Coffer's host: always false.
    pub privileged: bool,
    /// `allowPrivilegeEscalation: false`.
    pub no_new_privileges: bool,
    /// The process's user.
    pub user: IdName,
    /// The process's umask, octal text.
    pub umask: &'a str,
    /// `readOnlyRootFilesystem`.
    pub read_only_root_filesystem: bool,
    /// Primary group first, then the supplementary ones.
    pub groups: Vec<IdName>,
    /// The capability sets asked for.
    pub capabilities: Capabilities<'a>,
    /// The limits asked for.
    pub resources: Resources,
}

/// `exec_in_container`'s input.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecInContainer<'a> {
    /// The container.
    #[serde(rename = "containerID")]
    pub container_id: &'a str,
    /// The command.
    pub arg_list: &'a [String],
    /// `NAME=value` each.
    pub env_list: &'a [String],
    /// The working directory.
    pub working_dir: &'a str,
}

/// `signal_container_process`'s input.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SignalContainerProcess<'a> {
    /// The container.
    #[serde(rename = "containerID")]
    pub container_id: &'a str,
    /// The signal's number.
    pub signal: i32,
    /// Whether it goes to the container's first process.
    pub is_init_process: bool,
    /// The process's command (for signals to exec'd processes).
    pub arg_list: &'a [String],
}

/// An input that names only a container.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ContainerId<'a> {
    /// The container.
    #[serde(rename = "containerID")]
    pub container_id: &'a str,
}

/// An input that names only what is unmounted.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UnmountTarget<'a> {
    /// The mount point.
    pub unmount_target: &'a str,
}

/// No input (`{}`).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct NoInput {}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn inputs_carry_the_field_names_the_rules_read() {
        let layers = ["/l1".to_string()];
        let cases = [
            (
                Input::MountDevice(MountDevice {
                    target: "/t",
                    device_hash: "ab",
                }),
                json!({"target": "/t", "deviceHash": "ab"}),
            ),
            (
                Input::MountOverlay(MountOverlay {
                    container_id: "c",
                    layer_paths: &layers,
                    target: "/r",
                }),
                json!({"containerID": "c", "layerPaths": ["/l1"], "target": "/r"}),
            ),
            (
                Input::SignalContainerProcess(SignalContainerProcess {
                    container_id: "c",
                    signal: 15,
                    is_init_process: true,
                    arg_list: &[],
                }),
                json!({"containerID": "c", "signal": 15, "isInitProcess": true, "argList": []}),
            ),
            (
                Input::UnmountOverlay(UnmountTarget {
                    unmount_target: "/r",
                }),
                json!({"unmountTarget": "/r"}),
            ),
            (Input::GetProperties(NoInput {}), json!({})),
        ];
        for (input, expected) in cases {
            assert_eq!(serde_json::to_value(&input).unwrap(), expected, "{input:?}");
        }
    }

    #[test]
    fn each_input_names_its_own_point() {
        let id = ContainerId { container_id: "c" };
        assert_eq!(
            Input::ShutdownContainer(id).point(),
            EnforcementPoint::ShutdownContainer
        );
        let t = UnmountTarget {
            unmount_target: "/s",
        };
        assert_eq!(
            Input::ScratchUnmount(t).point(),
            EnforcementPoint::ScratchUnmount
        );
    }
}
