//! containerd's OCI bundle, read into what the agent is asked for.
//!
//! The shim forwards the process containerd's spec describes (argv, environment, working
//! directory, user and groups, capabilities, no_new_privileges, read-only root, limits); the
//! agent compares it with the policy and runs what the policy decides. Mounts, namespaces, hooks
//! and devices of containerd's spec are not forwarded: the agent builds those itself.

use std::collections::HashMap;
use std::path::Path;

use coffer_proto::ProcessSpec;
use oci_spec::runtime::Spec;

use crate::ShimError;

/// CRI's annotation naming the Pod sandbox a container belongs to.
pub const SANDBOX_ID_ANNOTATION: &str = "io.kubernetes.cri.sandbox-id";

fn bundle_err(bundle: &Path, reason: impl Into<String>) -> ShimError {
    ShimError::Bundle {
        bundle: bundle.display().to_string(),
        reason: reason.into(),
    }
}

/// The bundle's `config.json`.
pub fn load(bundle: &Path) -> Result<Spec, ShimError> {
    Spec::load(bundle.join("config.json"))
        .map_err(|e| bundle_err(bundle, format!("config.json: {e}")))
}

/// The spec's annotations (none: empty).
pub fn annotations(spec: &Spec) -> HashMap<String, String> {
    spec.annotations().clone().unwrap_or_default()
}

/// Which shim serves a container: its CRI sandbox's, else its own.
pub fn grouping(annotations: &HashMap<String, String>, id: &str) -> String {
    annotations
        .get(SANDBOX_ID_ANNOTATION)
        .filter(|s| !s.is_empty())
        .cloned()
        .unwrap_or_else(|| id.to_string())
}

/// The group's name under `$COFFER_HOME/run`: derived from containerd's namespace and the
/// grouping id, so that it is a safe file name whatever containerd's ids hold.
pub fn group_name(namespace: &str, grouping: &str) -> String {
    let h = coffer_policy::digest(format!("{namespace}/{grouping}").as_bytes());
    format!("ctrd-{}", &hex::encode(h)[..16])
}

/// The process containerd asks for, as the agent's request.
pub fn process_spec(bundle: &Path, spec: &Spec) -> Result<ProcessSpec, ShimError> {
    let p = spec
        .process()
        .as_ref()
        .ok_or_else(|| bundle_err(bundle, "the spec has no process"))?;
    let args = p.args().clone().unwrap_or_default();
    if args.is_empty() {
        return Err(bundle_err(bundle, "the process has no arguments"));
    }
    let user = p.user();
    let gid = user.gid();
    let mut additional_gids: Vec<u32> = Vec::new();
    for g in user.additional_gids().clone().unwrap_or_default() {
        if g != gid && !additional_gids.contains(&g) {
            additional_gids.push(g);
        }
    }
    let mut capabilities: Vec<String> = p
        .capabilities()
        .as_ref()
        .and_then(|c| c.bounding().clone())
        .unwrap_or_default()
        .iter()
        // oci-spec displays `CHOWN`; the spec and the policy say `CAP_CHOWN`.
        .map(|c| {
            let name = c.to_string();
            if name.starts_with("CAP_") {
                name
            } else {
                format!("CAP_{name}")
            }
        })
        .collect();
    capabilities.sort();
    let resources = spec.linux().as_ref().and_then(|l| l.resources().clone());
    let memory_limit = resources
        .as_ref()
        .and_then(|r| r.memory().as_ref())
        .and_then(|m| m.limit())
        .and_then(|l| u64::try_from(l).ok())
        .filter(|&l| l > 0);
    let cpu_millis = resources
        .as_ref()
        .and_then(|r| r.cpu().as_ref())
        .and_then(|c| match (c.quota(), c.period()) {
            (Some(q), Some(p)) if q > 0 && p > 0 => {
                Some((u64::try_from(q).ok()? * 1000).div_ceil(p))
            }
            _ => None,
        });
    Ok(ProcessSpec {
        args,
        env: p.env().clone().unwrap_or_default(),
        cwd: p.cwd().display().to_string(),
        uid: user.uid(),
        gid,
        additional_gids,
        read_only_rootfs: spec
            .root()
            .as_ref()
            .and_then(|r| r.readonly())
            .unwrap_or(false),
        capabilities,
        no_new_privileges: p.no_new_privileges().unwrap_or(false),
        memory_limit,
        cpu_millis,
    })
}

/// An exec'd process from the `spec` of containerd's Exec request (the OCI process as JSON).
pub fn exec_process(json: &[u8]) -> Result<ProcessSpec, ShimError> {
    let p: oci_spec::runtime::Process =
        serde_json::from_slice(json).map_err(|e| ShimError::Bundle {
            bundle: "exec".into(),
            reason: format!("the exec process is not an OCI process: {e}"),
        })?;
    let args = p.args().clone().unwrap_or_default();
    if args.is_empty() {
        return Err(ShimError::Bundle {
            bundle: "exec".into(),
            reason: "the exec process has no arguments".into(),
        });
    }
    Ok(ProcessSpec {
        args,
        env: p.env().clone().unwrap_or_default(),
        cwd: p.cwd().display().to_string(),
        uid: p.user().uid(),
        gid: p.user().gid(),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: serde_json::Value) -> Spec {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn groups_by_sandbox_id_else_by_container() {
        let mut a = HashMap::new();
        assert_eq!(grouping(&a, "c1"), "c1");
        a.insert(SANDBOX_ID_ANNOTATION.to_string(), "pod9".to_string());
        assert_eq!(grouping(&a, "c1"), "pod9");
        let n = group_name("default", "pod9");
        assert!(n.starts_with("ctrd-") && n.len() == 21);
        assert_ne!(n, group_name("k8s.io", "pod9"));
    }

    #[test]
    fn the_process_is_forwarded_as_containerd_asks() {
        let s = spec(serde_json::json!({
            "ociVersion": "1.0.2",
            "root": {"path": "rootfs", "readonly": true},
            "process": {
                "args": ["/bin/sh", "/app/hello.sh"], "env": ["PATH=/bin"], "cwd": "/app",
                "user": {"uid": 0, "gid": 0, "additionalGids": [0, 10, 10]},
                "capabilities": {"bounding": ["CAP_KILL", "CAP_CHOWN"]},
                "noNewPrivileges": true
            },
            "linux": {"resources": {"memory": {"limit": 1048576}, "cpu": {"quota": 50000, "period": 100000}}}
        }));
        let p = process_spec(Path::new("/b"), &s).unwrap();
        assert_eq!(p.args, ["/bin/sh", "/app/hello.sh"]);
        assert_eq!(p.cwd, "/app");
        assert_eq!(p.additional_gids, [10]);
        assert_eq!(p.capabilities, ["CAP_CHOWN", "CAP_KILL"]);
        assert!(p.no_new_privileges && p.read_only_rootfs);
        assert_eq!((p.memory_limit, p.cpu_millis), (Some(1048576), Some(500)));
        let none = spec(
            serde_json::json!({"ociVersion": "1.0.2", "process": {"cwd": "/", "user": {"uid": 0, "gid": 0}}}),
        );
        assert!(matches!(
            process_spec(Path::new("/b"), &none),
            Err(ShimError::Bundle { .. })
        ));
    }

    #[test]
    fn exec_processes_parse_and_empty_ones_are_refused() {
        let p =
            exec_process(br#"{"args":["/bin/true"],"cwd":"/","user":{"uid":0,"gid":0}}"#).unwrap();
        assert_eq!(p.args, ["/bin/true"]);
        assert!(exec_process(br#"{"cwd":"/","user":{"uid":0,"gid":0}}"#).is_err());
        assert!(exec_process(b"not json").is_err());
    }
}
