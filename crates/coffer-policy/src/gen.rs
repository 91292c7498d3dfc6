//! Policy generation: Pod spec + measured images -> Rego text, byte-stable.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Value};

use crate::pod::{Pod, PodSecurityContext};
use crate::PolicyError;

/// What the policy needs to know about an image (from its config and layer measurements).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImageFacts {
    /// Config Entrypoint.
    pub entrypoint: Vec<String>,
    /// Config Cmd.
    pub cmd: Vec<String>,
    /// Config Env (`NAME=value`).
    pub env: Vec<String>,
    /// Config WorkingDir.
    pub working_dir: String,
    /// Config User (`uid[:gid]` or names).
    pub user: String,
    /// Config StopSignal.
    pub stop_signal: Option<String>,
    /// dm-verity root hashes (hex), base layer first.
    pub layers: Vec<String>,
    /// The image's `/etc/passwd` (empty when it has none): user names and primary groups.
    pub passwd: String,
    /// The image's `/etc/group` (empty when it has none): group names.
    pub group: String,
}

/// Generation switches.
#[derive(Clone, Debug)]
pub struct GenOptions {
    /// Let the host read containers' stdio.
    pub allow_stdio_access: bool,
}

impl Default for GenOptions {
    fn default() -> Self {
        GenOptions {
            allow_stdio_access: true,
        }
    }
}

/// Pod annotation that enables the secure key release API on `127.0.0.1:<port>` in the group.
pub const SKR_ANNOTATION: &str = "coffer.dev/skr-port";

/// Pod annotations naming the one attestation service, key broker and broker signing key the SKR
/// API may use (all three, or none: then only `/status` and `/attest/raw` work).
pub const SKR_BROKER_ANNOTATIONS: [&str; 3] = [
    "coffer.dev/skr-attestation-endpoint",
    "coffer.dev/skr-key-broker-endpoint",
    "coffer.dev/skr-key-broker-key",
];

/// Capabilities of an unprivileged container (the container runtimes' defaults).
pub const DEFAULT_CAPS: [&str; 14] = [
    "CAP_AUDIT_WRITE",
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_MKNOD",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_RAW",
    "CAP_SETFCAP",
    "CAP_SETGID",
    "CAP_SETPCAP",
    "CAP_SETUID",
    "CAP_SYS_CHROOT",
];

/// Every capability (Linux 5.9+), for privileged containers.
const ALL_CAPS: [&str; 41] = [
    "CAP_AUDIT_CONTROL",
    "CAP_AUDIT_READ",
    "CAP_AUDIT_WRITE",
    "CAP_BLOCK_SUSPEND",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_KILL",
    "CAP_LEASE",
    "CAP_LINUX_IMMUTABLE",
    "CAP_MAC_ADMIN",
    "CAP_MAC_OVERRIDE",
    "CAP_MKNOD",
    "CAP_NET_ADMIN",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_RAW",
    "CAP_PERFMON",
    "CAP_SETFCAP",
    "CAP_SETGID",
    "CAP_SETPCAP",
    "CAP_SETUID",
    "CAP_SYSLOG",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_CHROOT",
    "CAP_SYS_MODULE",
    "CAP_SYS_NICE",
    "CAP_SYS_PACCT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_WAKE_ALARM",
];

/// Source of a group volume as the agent names it (the policy's mount `source`). An emptyDir
/// has ACI's name, so a policy Azure's tooling wrote (`sandbox:///tmp/atlas/emptydir/.+`) allows
/// it; an encrypted volume has a prefix of its own, so such a rule can never let the host bind a
/// decrypted volume where the policy means scratch space. Coffer's own policies pin the name
/// (a DNS label: nothing in it is special to a regex).
pub fn volume_source(name: &str, encrypted: bool) -> String {
    if encrypted {
        format!("sandbox:///coffer/encrypted/{name}")
    } else {
        format!("sandbox:///tmp/atlas/emptydir/{name}")
    }
}

fn signal_number(s: &str) -> Option<u32> {
    let name = s.trim().to_ascii_uppercase();
    let name = name.strip_prefix("SIG").unwrap_or(&name);
    let table = [
        ("HUP", 1),
        ("INT", 2),
        ("QUIT", 3),
        ("KILL", 9),
        ("USR1", 10),
        ("USR2", 12),
        ("TERM", 15),
        ("CONT", 18),
        ("STOP", 19),
        ("WINCH", 28),
    ];
    table
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, v)| *v)
        .or_else(|| s.trim().parse().ok())
}

fn cap_name(field: &str, raw: &str) -> Result<String, PolicyError> {
    let up = raw.trim().to_ascii_uppercase();
    let name = if up.starts_with("CAP_") {
        up
    } else {
        format!("CAP_{up}")
    };
    if name == "CAP_ALL" || ALL_CAPS.contains(&name.as_str()) {
        Ok(name)
    } else {
        Err(PolicyError::Pod(format!(
            "{field}: unknown capability '{raw}'"
        )))
    }
}

/// One line of `/etc/passwd` or `/etc/group`: name and the two numeric fields that follow the
/// password field (uid and gid, or gid alone).
fn account_entries(db: &str) -> impl Iterator<Item = (&str, Option<u32>, Option<u32>)> {
    db.lines().filter_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 3 && !f[0].is_empty() && !l.starts_with('#')).then(|| {
            (
                f[0],
                f[2].parse().ok(),
                f.get(3).and_then(|g| g.parse().ok()),
            )
        })
    })
}

/// The numeric uid and gid a container runs as, resolved as container runtimes do: the image's
/// `USER` (`user[:group]`, names from the image's own `/etc/passwd` and `/etc/group`), overridden
/// by `runAsUser`/`runAsGroup`; without a group, the user's primary group from `/etc/passwd`,
/// else 0. The result is pinned in the policy, so the host cannot choose another.
fn resolve_user(
    image_user: &str,
    run_as_user: Option<u32>,
    run_as_group: Option<u32>,
    img: &ImageFacts,
    what: &str,
) -> Result<(String, String), PolicyError> {
    let (u, g) = match image_user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (image_user, None),
    };
    let passwd = || account_entries(&img.passwd);
    let uid = match run_as_user {
        Some(uid) => uid,
        None if u.is_empty() => 0,
        None => match u.parse::<u32>() {
            Ok(uid) => uid,
            Err(_) => passwd()
                .find(|(name, ..)| *name == u)
                .and_then(|(_, uid, _)| uid)
                .ok_or_else(|| {
                    PolicyError::Pod(format!(
                        "{what}: user '{u}' is not in the image's /etc/passwd"
                    ))
                })?,
        },
    };
    let gid = match (run_as_group, g.filter(|g| !g.is_empty())) {
        (Some(gid), _) => gid,
        (None, Some(g)) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => account_entries(&img.group)
                .find(|(name, ..)| *name == g)
                .and_then(|(_, gid, _)| gid)
                .ok_or_else(|| {
                    PolicyError::Pod(format!(
                        "{what}: group '{g}' is not in the image's /etc/group"
                    ))
                })?,
        },
        (None, None) => passwd()
            .find(|(_, id, _)| *id == Some(uid))
            .and_then(|(.., gid)| gid)
            .unwrap_or(0),
    };
    Ok((uid.to_string(), gid.to_string()))
}

/// The gids of the groups the image's `/etc/group` lists `uid`'s user name as a member of (what
/// containerd adds for a named image user, and Kubernetes keeps by default).
fn image_memberships(uid: u32, img: &ImageFacts) -> Vec<u32> {
    let Some(name) = account_entries(&img.passwd)
        .find(|(_, id, _)| *id == Some(uid))
        .map(|(name, ..)| name)
    else {
        return Vec::new();
    };
    img.group
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            let members = f.get(3)?;
            members
                .split(',')
                .any(|m| m.trim() == name)
                .then(|| f[2].parse().ok())
                .flatten()
        })
        .collect()
}

fn idname(v: &str) -> Value {
    if v.is_empty() {
        json!({"pattern": "", "strategy": "any"})
    } else if v.bytes().all(|b| b.is_ascii_digit()) {
        json!({"pattern": v, "strategy": "id"})
    } else {
        json!({"pattern": v, "strategy": "name"})
    }
}

/// A container as it will run: the Pod spec merged with its image config, as Kubernetes merges
/// them. Policy generation and the launcher both use this, so they cannot disagree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedContainer {
    /// Container name.
    pub name: String,
    /// argv.
    pub args: Vec<String>,
    /// Literal environment (`NAME=value`), image first then Pod.
    pub env: Vec<String>,
    /// Names whose value comes from outside the Pod (`valueFrom`): any non-empty value allowed.
    pub env_from: Vec<String>,
    /// Working directory.
    pub working_dir: String,
    /// User (id or name).
    pub user: String,
    /// Group (id, name, or empty for any).
    pub group: String,
    /// Supplementary group ids, ascending, without the primary group: the image's `/etc/group`
    /// memberships of the user, the Pod's `supplementalGroups` and its `fsGroup`.
    pub supplemental_groups: Vec<u32>,
    /// The root file system is read-only (`readOnlyRootFilesystem`).
    pub read_only_root_filesystem: bool,
    /// Capabilities (bounding = effective = permitted).
    pub capabilities: Vec<String>,
    /// Privileged.
    pub privileged: bool,
    /// no_new_privileges.
    pub no_new_privileges: bool,
    /// (volume name, mount path, read-only).
    pub mounts: Vec<(String, String, bool)>,
    /// Processes the host may exec (probes, hooks).
    pub exec: Vec<Vec<String>>,
    /// Signal number that stops the container.
    pub stop_signal: u32,
    /// Memory limit in bytes (`resources.limits.memory`).
    pub memory_limit: Option<u64>,
    /// CPU limit in millicores (`resources.limits.cpu`).
    pub cpu_millis: Option<u64>,
}

/// Kubernetes quantities: `64Mi`, `1G`, `500m`, `2`.
fn quantity(field: &str, v: &serde_yaml::Value, cpu: bool) -> Result<u64, PolicyError> {
    let text = match v {
        serde_yaml::Value::String(s) => s.clone(),
        serde_yaml::Value::Number(n) => n.to_string(),
        _ => return Err(PolicyError::Pod(format!("{field} must be a quantity"))),
    };
    let bad = || PolicyError::Pod(format!("{field}: '{text}' is not a quantity"));
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (num, unit) = text.split_at(split);
    let n: f64 = num.parse().map_err(|_| bad())?;
    let mult: f64 = match (unit, cpu) {
        ("", true) => 1000.0,
        ("m", true) => 1.0,
        ("", false) => 1.0,
        ("Ki", false) => 1024.0,
        ("Mi", false) => 1024.0 * 1024.0,
        ("Gi", false) => 1024.0 * 1024.0 * 1024.0,
        ("k", false) | ("K", false) => 1e3,
        ("M", false) => 1e6,
        ("G", false) => 1e9,
        _ => return Err(bad()),
    };
    let v = (n * mult).round();
    if !(1.0..9.0e18).contains(&v) {
        return Err(bad());
    }
    Ok(v as u64)
}

/// Merge container `pod_index` of the Pod with its image config (and the Pod's security context).
pub fn resolve_container(
    pod: &Pod,
    pod_index: usize,
    img: &ImageFacts,
) -> Result<ResolvedContainer, PolicyError> {
    let c = pod
        .spec
        .containers
        .get(pod_index)
        .ok_or_else(|| PolicyError::Pod(format!("the Pod has no container {pod_index}")))?;
    let field = |f: &str| format!("spec.containers[{pod_index}].{f}");
    // Kubernetes: command replaces Entrypoint (and drops Cmd); args replace Cmd.
    let args: Vec<String> = match (&c.command, &c.args) {
        (Some(cmd), args) => cmd.iter().chain(args.iter().flatten()).cloned().collect(),
        (None, Some(args)) => img.entrypoint.iter().chain(args).cloned().collect(),
        (None, None) => img.entrypoint.iter().chain(&img.cmd).cloned().collect(),
    };
    if args.is_empty() {
        return Err(PolicyError::Pod(format!(
            "container '{}' has no command: neither the Pod nor the image config gives one",
            c.name
        )));
    }
    // Environment: the image's, then the Pod's (which wins for the same name).
    let mut order: Vec<String> = Vec::new();
    let mut values: BTreeMap<String, Option<String>> = BTreeMap::new();
    for e in &img.env {
        let (name, value) = e.split_once('=').unwrap_or((e.as_str(), ""));
        if values
            .insert(name.to_string(), Some(value.to_string()))
            .is_none()
        {
            order.push(name.to_string());
        }
    }
    for e in &c.env {
        let v = if e.value_from.is_some() {
            None
        } else {
            Some(e.value.clone().unwrap_or_default())
        };
        if values.insert(e.name.clone(), v).is_none() {
            order.push(e.name.clone());
        }
    }
    let mut env = Vec::new();
    let mut env_from = Vec::new();
    for n in &order {
        match values.get(n) {
            Some(Some(v)) => env.push(format!("{n}={v}")),
            _ => env_from.push(n.clone()),
        }
    }

    let sc = c.security_context.clone().unwrap_or_default();
    let privileged = sc.privileged.unwrap_or(false);
    let mut caps: BTreeSet<String> = if privileged {
        ALL_CAPS.iter().map(|s| s.to_string()).collect()
    } else {
        DEFAULT_CAPS.iter().map(|s| s.to_string()).collect()
    };
    if let Some(changes) = &sc.capabilities {
        for d in &changes.drop {
            let d = cap_name(&field("securityContext.capabilities.drop"), d)?;
            if d == "CAP_ALL" {
                caps.clear();
            } else {
                caps.remove(&d);
            }
        }
        for a in &changes.add {
            let a = cap_name(&field("securityContext.capabilities.add"), a)?;
            if a == "CAP_ALL" {
                caps.extend(ALL_CAPS.iter().map(|s| s.to_string()));
            } else {
                caps.insert(a);
            }
        }
    }
    // Kubernetes: the container's own settings override the Pod's.
    let psc = pod.spec.security_context.clone().unwrap_or_default();
    let what = format!("container '{}'", c.name);
    let (user, group) = resolve_user(
        &img.user,
        sc.run_as_user.or(psc.run_as_user),
        sc.run_as_group.or(psc.run_as_group),
        img,
        &what,
    )?;
    if sc.run_as_non_root.or(psc.run_as_non_root) == Some(true) && user == "0" {
        return Err(PolicyError::Pod(format!(
            "{what}: runAsNonRoot is set but the container would run as root (uid 0): set \
             runAsUser, or a non-root USER in the image"
        )));
    }
    let supplemental_groups = supplemental_groups(&user, &group, &psc, img);
    let mut exec: Vec<Vec<String>> = Vec::new();
    for p in [&c.liveness_probe, &c.readiness_probe, &c.startup_probe]
        .into_iter()
        .flatten()
    {
        exec.push(p.exec.command.clone());
    }
    if let Some(l) = &c.lifecycle {
        for h in [&l.post_start, &l.pre_stop].into_iter().flatten() {
            exec.push(h.exec.command.clone());
        }
    }
    let mut seen = BTreeSet::new();
    exec.retain(|cmd| seen.insert(cmd.clone()));
    let stop = img.stop_signal.as_deref().unwrap_or("SIGTERM");
    let stop_signal = signal_number(stop).ok_or_else(|| {
        PolicyError::Pod(format!(
            "image of container '{}' has an unknown StopSignal '{stop}'",
            c.name
        ))
    })?;
    Ok(ResolvedContainer {
        name: c.name.clone(),
        args,
        env,
        env_from,
        working_dir: c
            .working_dir
            .clone()
            .filter(|w| !w.is_empty())
            .unwrap_or_else(|| {
                if img.working_dir.is_empty() {
                    "/".into()
                } else {
                    img.working_dir.clone()
                }
            }),
        user,
        group,
        supplemental_groups,
        read_only_root_filesystem: sc.read_only_root_filesystem == Some(true),
        capabilities: caps.into_iter().collect(),
        privileged,
        no_new_privileges: sc.allow_privilege_escalation == Some(false),
        mounts: c
            .volume_mounts
            .iter()
            .map(|m| {
                (
                    m.name.clone(),
                    m.mount_path.clone(),
                    m.read_only.unwrap_or(false),
                )
            })
            .collect(),
        exec,
        stop_signal,
        memory_limit: match c.resources.as_ref().and_then(|r| r.limits.get("memory")) {
            Some(v) => Some(quantity(&field("resources.limits.memory"), v, false)?),
            None => None,
        },
        cpu_millis: match c.resources.as_ref().and_then(|r| r.limits.get("cpu")) {
            Some(v) => Some(quantity(&field("resources.limits.cpu"), v, true)?),
            None => None,
        },
    })
}

/// A container's supplementary groups (see [`ResolvedContainer::supplemental_groups`]).
fn supplemental_groups(
    user: &str,
    group: &str,
    psc: &PodSecurityContext,
    img: &ImageFacts,
) -> Vec<u32> {
    let mut gids: BTreeSet<u32> = user
        .parse()
        .map(|uid| image_memberships(uid, img))
        .unwrap_or_default()
        .into_iter()
        .chain(psc.supplemental_groups.iter().copied())
        .chain(psc.fs_group)
        .collect();
    if let Ok(primary) = group.parse() {
        gids.remove(&primary);
    }
    gids.into_iter().collect()
}

fn container_json(
    pod: &Pod,
    pod_index: usize,
    c: &crate::pod::Container,
    img: &ImageFacts,
    opts: &GenOptions,
) -> Result<Value, PolicyError> {
    let r = resolve_container(pod, pod_index, img)?;
    // The Pod's own literal variables are required: a host that strips e.g. AUTH_ENABLED=true
    // must not get the container started without it.
    let pod_literals: BTreeSet<&str> = c
        .env
        .iter()
        .filter(|e| e.value.is_some())
        .map(|e| e.name.as_str())
        .collect();
    let mut env_rules: Vec<Value> = r
        .env
        .iter()
        .map(|e| {
            let name = e.split_once('=').map_or(e.as_str(), |(n, _)| n);
            json!({"pattern": e, "required": pod_literals.contains(name), "strategy": "string"})
        })
        .collect();
    env_rules.extend(
        r.env_from
            .iter()
            .map(|n| json!({"pattern": format!("{n}=.+"), "required": false, "strategy": "re2"})),
    );
    let exec_processes: Vec<Value> = r
        .exec
        .iter()
        .map(|cmd| json!({"command": cmd, "signals": [], "allow_stdio_access": opts.allow_stdio_access}))
        .collect();
    let encrypted = |name: &str| {
        pod.spec
            .volumes
            .iter()
            .any(|v| v.name == name && v.csi.is_some())
    };
    let mounts: Vec<Value> = r
        .mounts
        .iter()
        .map(|(name, path, ro)| {
            json!({
                "destination": path,
                "options": ["rbind", "rshared", if *ro { "ro" } else { "rw" }],
                "source": volume_source(name, encrypted(name)),
                "type": "bind",
            })
        })
        .collect();
    let caps = &r.capabilities;
    Ok(json!({
        "allow_elevated": r.privileged,
        "allow_stdio_access": opts.allow_stdio_access,
        "capabilities": {
            "ambient": [],
            "bounding": caps,
            "effective": caps,
            "inheritable": [],
            "permitted": caps,
        },
        "command": r.args,
        "env_rules": env_rules,
        "exec_processes": exec_processes,
        "id": c.image,
        "layers": img.layers,
        "mounts": mounts,
        "name": r.name,
        "no_new_privileges": r.no_new_privileges,
        "resources": {"cpu_millis": r.cpu_millis, "memory_limit": r.memory_limit},
        "seccomp_profile_sha256": "",
        "signals": [r.stop_signal],
        "read_only_root_filesystem": r.read_only_root_filesystem,
        "user": {
            // The primary group first, then every supplementary group: the process gets exactly
            // these (the framework requires each id listed here, and the primary one first).
            "group_idnames": std::iter::once(idname(&r.group))
                .chain(r.supplemental_groups.iter().map(|g| idname(&g.to_string())))
                .collect::<Vec<_>>(),
            "umask": "0022",
            "user_idname": idname(&r.user),
        },
        "working_dir": r.working_dir,
    }))
}

const RULES: [&str; 17] = [
    "mount_device",
    "unmount_device",
    "mount_overlay",
    "unmount_overlay",
    "create_container",
    "exec_in_container",
    "exec_external",
    "shutdown_container",
    "signal_container_process",
    "plan9_mount",
    "plan9_unmount",
    "get_properties",
    "dump_stacks",
    "runtime_logging",
    "load_fragment",
    "scratch_mount",
    "scratch_unmount",
];

/// Generate the policy for `pod`; `images` maps each container's `image` to its facts.
pub fn generate(
    pod: &Pod,
    images: &BTreeMap<String, ImageFacts>,
    opts: &GenOptions,
) -> Result<String, PolicyError> {
    let mut containers = Vec::new();
    for (i, c) in pod.spec.containers.iter().enumerate() {
        let img = images
            .get(&c.image)
            .ok_or_else(|| PolicyError::MissingImage(c.image.clone()))?;
        containers.push(container_json(pod, i, c, img, opts)?);
    }
    // serde_json without preserve_order sorts object keys: the JSON is canonical.
    let containers =
        serde_json::to_string(&containers).map_err(|e| PolicyError::Pod(e.to_string()))?;
    let mut out = String::new();
    out.push_str("package policy\n\nimport future.keywords.every\nimport future.keywords.in\n\n");
    out.push_str(&format!(
        "api_version := \"0.10.0\"\nframework_version := \"{}\"\n\n",
        crate::FRAMEWORK_VERSION
    ));
    out.push_str(&format!(
        "# Generated by coffer from Pod '{}'.\n",
        pod.metadata.name
    ));
    out.push_str(&format!("containers := {containers}\n\n"));
    // The group's host name and the ports it publishes on the host: part of the measured policy,
    // so a relying party sees what the group exposes, and the launcher publishes exactly these.
    out.push_str(&format!(
        "{} := {}\n\n",
        crate::HOSTNAME,
        Value::from(pod.metadata.name.as_str())
    ));
    // fsGroup: the group that owns the emptyDir volumes (measured: the agent sets it).
    if let Some(g) = pod.spec.security_context.as_ref().and_then(|s| s.fs_group) {
        out.push_str(&format!("{} := {g}\n\n", crate::FS_GROUP));
    }
    let mut ports = Vec::new();
    for c in &pod.spec.containers {
        for p in &c.ports {
            let Some(host_port) = p.host_port else {
                continue;
            };
            let port = |n: u32| {
                u16::try_from(n).map_err(|_| PolicyError::Pod(format!("port {n} out of range")))
            };
            ports.push(crate::PortPolicy {
                container: c.name.clone(),
                container_port: port(p.container_port)?,
                host_port: port(host_port)?,
                protocol: p.protocol(),
                host_ip: p.host_ip.clone().unwrap_or_default(),
                name: p.name.clone().unwrap_or_default(),
            });
        }
    }
    if !ports.is_empty() {
        let list = serde_json::to_string(&ports).map_err(|e| PolicyError::Pod(e.to_string()))?;
        out.push_str(&format!("{} := {list}\n\n", crate::PORTS));
    }
    // Encrypted volumes: which key opens which volume, where it is released from and which key
    // signs the release are part of the measured policy, so the host cannot substitute any of them.
    let mut encrypted = Vec::new();
    for (v, c) in pod
        .spec
        .volumes
        .iter()
        .filter_map(|v| v.csi.as_ref().map(|c| (v, c)))
    {
        let a = |k: &str| c.volume_attributes.get(k).cloned().unwrap_or_default();
        let vol = crate::EncryptedVolumePolicy {
            name: v.name.clone(),
            key: a("keyName"),
            broker: crate::KeyBrokerPolicy {
                maa_endpoint: a("attestationEndpoint"),
                akv_endpoint: a("keyBrokerEndpoint"),
                broker_key: a("keyBrokerKey"),
            },
            salt: a("keyDerivationSalt"),
            label: a("keyDerivationLabel"),
            read_only: c.read_only != Some(false),
            verity_root: a("verityRootHash").to_ascii_lowercase(),
        };
        vol.broker
            .check(&format!("volume '{}'", v.name))
            .map_err(|e| PolicyError::Pod(e.to_string()))?;
        encrypted.push(vol);
    }
    if !encrypted.is_empty() {
        let list =
            serde_json::to_string(&encrypted).map_err(|e| PolicyError::Pod(e.to_string()))?;
        out.push_str(&format!("{} := {list}\n\n", crate::ENCRYPTED_VOLUMES));
    }
    // The in-group key release API, when the Pod asks for it: part of the measured policy.
    if let Some(port) = pod.metadata.annotations.get(SKR_ANNOTATION) {
        let port: u16 = port.parse().ok().filter(|p| *p > 0).ok_or_else(|| {
            PolicyError::Pod(format!(
                "annotation {SKR_ANNOTATION}: '{port}' is not a port"
            ))
        })?;
        let given: Vec<Option<&String>> = SKR_BROKER_ANNOTATIONS
            .iter()
            .map(|a| pod.metadata.annotations.get(*a))
            .collect();
        let broker = match given.as_slice() {
            [Some(maa), Some(akv), Some(key)] => {
                let b = crate::KeyBrokerPolicy {
                    maa_endpoint: maa.to_string(),
                    akv_endpoint: akv.to_string(),
                    broker_key: key.to_string(),
                };
                b.check("the SKR API")
                    .map_err(|e| PolicyError::Pod(e.to_string()))?;
                Some(b)
            }
            [None, None, None] => None,
            _ => {
                return Err(PolicyError::Pod(format!(
                    "the SKR API's key broker needs all of the annotations {} or none",
                    SKR_BROKER_ANNOTATIONS.join(", ")
                )))
            }
        };
        let skr = crate::SkrPolicy { port, broker };
        let skr = serde_json::to_string(&skr).map_err(|e| PolicyError::Pod(e.to_string()))?;
        out.push_str(&format!("{} := {skr}\n\n", crate::SKR));
    } else if let Some(a) = SKR_BROKER_ANNOTATIONS
        .iter()
        .find(|a| pod.metadata.annotations.contains_key(**a))
    {
        return Err(PolicyError::Pod(format!(
            "annotation {a} needs {SKR_ANNOTATION} (the SKR API is off without it)"
        )));
    }
    out.push_str(
        "allow_properties_access := true\n\
         allow_dump_stacks := false\n\
         allow_runtime_logging := false\n\
         allow_environment_variable_dropping := true\n\
         allow_unencrypted_scratch := true\n\
         allow_capability_dropping := true\n\n",
    );
    for r in RULES {
        out.push_str(&format!("{r} := data.framework.{r}\n"));
    }
    out.push_str("\nreason := {\"errors\": data.framework.errors}\n");
    Ok(out)
}

/// A debug policy that allows every enforcement point. It proves nothing about what runs.
pub fn allow_all_policy() -> String {
    let mut out = String::from(
        "package policy\n\n# DEBUG POLICY: allows everything. A group under it proves nothing about what runs.\n\napi_version := \"0.10.0\"\n\n",
    );
    for r in RULES {
        let v = match r {
            "create_container" | "exec_external" => {
                "{\"allowed\": true, \"allow_stdio_access\": true}"
            }
            _ => "{\"allowed\": true}",
        };
        out.push_str(&format!("{r} := {v}\n"));
    }
    out
}
