//! Policy generation: Pod spec + measured images -> Rego text, byte-stable.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Value};

use crate::pod::{Container, Pod};
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

/// Capabilities of an unprivileged container (the container runtime defaults).
const DEFAULT_CAPS: [&str; 14] = [
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

/// Source of an emptyDir volume as the agent names it.
pub(crate) fn volume_source(name: &str) -> String {
    format!("sandbox:///volumes/{name}")
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

fn idname(v: &str) -> Value {
    if v.is_empty() {
        json!({"pattern": "", "strategy": "any"})
    } else if v.bytes().all(|b| b.is_ascii_digit()) {
        json!({"pattern": v, "strategy": "id"})
    } else {
        json!({"pattern": v, "strategy": "name"})
    }
}

fn container_json(
    pod_index: usize,
    c: &Container,
    img: &ImageFacts,
    opts: &GenOptions,
) -> Result<Value, PolicyError> {
    let field = |f: &str| format!("spec.containers[{pod_index}].{f}");
    // Kubernetes: command replaces Entrypoint (and drops Cmd); args replace Cmd.
    let command: Vec<String> = match (&c.command, &c.args) {
        (Some(cmd), args) => cmd.iter().chain(args.iter().flatten()).cloned().collect(),
        (None, Some(args)) => img.entrypoint.iter().chain(args).cloned().collect(),
        (None, None) => img.entrypoint.iter().chain(&img.cmd).cloned().collect(),
    };
    if command.is_empty() {
        return Err(PolicyError::Pod(format!(
            "container '{}' has no command: neither the Pod nor the image config gives one",
            c.name
        )));
    }

    // Environment: the image's, then the Pod's (which wins for the same name).
    let mut order: Vec<String> = Vec::new();
    let mut rules: BTreeMap<String, Value> = BTreeMap::new();
    for e in &img.env {
        let name = e.split('=').next().unwrap_or_default().to_string();
        if rules
            .insert(
                name.clone(),
                json!({"pattern": e, "required": false, "strategy": "string"}),
            )
            .is_none()
        {
            order.push(name);
        }
    }
    for e in &c.env {
        let rule = match (&e.value, &e.value_from) {
            (_, Some(_)) => {
                json!({"pattern": format!("{}=.+", e.name), "required": false, "strategy": "re2"})
            }
            (v, None) => {
                json!({"pattern": format!("{}={}", e.name, v.as_deref().unwrap_or("")), "required": false, "strategy": "string"})
            }
        };
        if rules.insert(e.name.clone(), rule).is_none() {
            order.push(e.name.clone());
        }
    }
    let env_rules: Vec<Value> = order.iter().filter_map(|n| rules.get(n).cloned()).collect();

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
    let caps: Vec<String> = caps.into_iter().collect();

    let (img_user, img_group) = match img.user.split_once(':') {
        Some((u, g)) => (u.to_string(), g.to_string()),
        None => (img.user.clone(), String::new()),
    };
    let user = sc.run_as_user.map(|u| u.to_string()).unwrap_or_else(|| {
        if img_user.is_empty() {
            "0".to_string()
        } else {
            img_user.clone()
        }
    });
    let group = sc.run_as_group.map(|g| g.to_string()).unwrap_or_else(|| {
        if !img_group.is_empty() {
            img_group.clone()
        } else if user == "0" || user == "root" {
            "0".to_string()
        } else {
            String::new()
        }
    });

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
    let exec_processes: Vec<Value> = exec
        .into_iter()
        .map(|cmd| json!({"command": cmd, "signals": [], "allow_stdio_access": opts.allow_stdio_access}))
        .collect();

    let mounts: Vec<Value> = c
        .volume_mounts
        .iter()
        .map(|m| {
            let mode = if m.read_only.unwrap_or(false) {
                "ro"
            } else {
                "rw"
            };
            json!({
                "destination": m.mount_path,
                "options": ["rbind", "rshared", mode],
                "source": volume_source(&m.name),
                "type": "bind",
            })
        })
        .collect();

    let stop = img.stop_signal.as_deref().unwrap_or("SIGTERM");
    let stop = signal_number(stop).ok_or_else(|| {
        PolicyError::Pod(format!(
            "image of container '{}' has an unknown StopSignal '{stop}'",
            c.name
        ))
    })?;

    Ok(json!({
        "allow_elevated": privileged,
        "allow_stdio_access": opts.allow_stdio_access,
        "capabilities": {
            "ambient": [],
            "bounding": caps,
            "effective": caps,
            "inheritable": [],
            "permitted": caps,
        },
        "command": command,
        "env_rules": env_rules,
        "exec_processes": exec_processes,
        "id": c.image,
        "layers": img.layers,
        "mounts": mounts,
        "name": c.name,
        "no_new_privileges": sc.allow_privilege_escalation == Some(false),
        "seccomp_profile_sha256": "",
        "signals": [stop],
        "user": {
            "group_idnames": [idname(&group)],
            "umask": "0022",
            "user_idname": idname(&user),
        },
        "working_dir": c.working_dir.clone().filter(|w| !w.is_empty()).unwrap_or_else(|| {
            if img.working_dir.is_empty() { "/".into() } else { img.working_dir.clone() }
        }),
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
        containers.push(container_json(i, c, img, opts)?);
    }
    // serde_json without preserve_order sorts object keys: the JSON is canonical.
    let containers =
        serde_json::to_string(&containers).map_err(|e| PolicyError::Pod(e.to_string()))?;
    let mut out = String::new();
    out.push_str("package policy\n\nimport future.keywords.every\nimport future.keywords.in\n\n");
    out.push_str("api_version := \"0.10.0\"\nframework_version := \"0.2.3\"\n\n");
    out.push_str(&format!(
        "# Generated by coffer from Pod '{}'.\n",
        pod.metadata.name
    ));
    out.push_str(&format!("containers := {containers}\n\n"));
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
