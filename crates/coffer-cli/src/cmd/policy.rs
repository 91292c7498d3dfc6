//! `coffer policy gen|digest|eval`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::{Args, Subcommand};
use coffer_image::{ImageRef, Store};
use coffer_policy::{Enforcer, GenOptions, ImageFacts, Pod};
use serde_json::json;

use crate::cmd::image::with_progress;
use crate::home::coffer_home;

#[derive(Subcommand, Debug)]
pub(crate) enum PolicyCommand {
    /// Generate the security policy for a Pod manifest, measuring every image layer.
    ///
    /// Images are stored names (coffer image ls) or `oci:DIR[:TAG]`. Prints host_data: the SHA-256
    /// the TEE's HOST_DATA must hold for this policy.
    Gen(GenArgs),
    /// Print the SHA-256 of a policy file's exact bytes (its HOST_DATA).
    Digest(DigestArgs),
    /// Evaluate one enforcement point: prints {"allowed","reason","result","state"}; exits 1 if denied.
    Eval(EvalArgs),
}

#[derive(Args, Debug)]
pub(crate) struct GenArgs {
    /// Pod manifest (apiVersion: v1, kind: Pod).
    pod: PathBuf,
    /// Write the policy here (default: standard output, host_data then goes to stderr).
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Write a debug policy that allows everything (proves nothing about what runs).
    #[arg(long)]
    allow_all: bool,
    /// Do not let the host read the containers' stdout/stderr.
    #[arg(long)]
    disable_stdio: bool,
    /// `rego`: the policy text; `arm`: its base64, the value of an ARM template's
    /// `confidentialComputeProperties.ccePolicy` (as `az confcom acipolicygen` prints it).
    /// HOST_DATA is the SHA-256 of the Rego text either way.
    #[arg(long, value_enum, default_value_t = Format::Rego)]
    format: Format,
    /// Print the Pod itself with the policy in its annotation `coffer.dev/policy` (base64 of
    /// the Rego text), for containerd's `coffer` runtime (containerd-shim-coffer-v2).
    #[arg(long, conflicts_with = "format")]
    annotate: bool,
    /// With --annotate: gzip the policy first (the value is then `gzip:` and the base64 of
    /// the compressed text), for Pods near Kubernetes' 256 KiB annotation limit.
    #[arg(long, requires = "annotate")]
    gzip: bool,
}

/// How `policy gen` writes the policy.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Format {
    /// Rego text.
    Rego,
    /// Base64 of the Rego text (ARM `ccePolicy`).
    Arm,
}

#[derive(Args, Debug)]
pub(crate) struct DigestArgs {
    /// Policy file.
    file: PathBuf,
}

#[derive(Args, Debug)]
pub(crate) struct EvalArgs {
    /// Policy file (package policy).
    #[arg(long)]
    policy: PathBuf,
    /// Enforcement point, e.g. mount_device, create_container.
    #[arg(long)]
    rule: String,
    /// Input JSON file ("-" for stdin).
    #[arg(long)]
    input: PathBuf,
    /// State JSON from a previous eval (data.metadata).
    #[arg(long)]
    state: Option<PathBuf>,
}

pub(crate) fn run(cmd: PolicyCommand) -> Result<ExitCode> {
    match cmd {
        PolicyCommand::Gen(a) => gen(a),
        PolicyCommand::Digest(a) => {
            let bytes = std::fs::read(&a.file)
                .with_context(|| format!("cannot read {}", a.file.display()))?;
            println!("{}", hex::encode(coffer_policy::digest(&bytes)));
            Ok(ExitCode::SUCCESS)
        }
        PolicyCommand::Eval(a) => eval(a),
    }
}

/// Resolve and measure every image the Pod names.
pub(crate) fn image_facts(store: &Store, pod: &Pod) -> Result<BTreeMap<String, ImageFacts>> {
    let mut out = BTreeMap::new();
    for c in &pod.spec.containers {
        if out.contains_key(&c.image) {
            continue;
        }
        let img = store
            .resolve(&ImageRef::parse(&c.image)?)
            .with_context(|| format!("container '{}': image {}", c.name, c.image))?;
        let layers = with_progress(&format!("measuring {}", c.image), |p| {
            store.measure(&img, Some(p))
        })?;
        let cfg = img.image.config.config().clone().unwrap_or_default();
        out.insert(
            c.image.clone(),
            ImageFacts {
                entrypoint: cfg.entrypoint().clone().unwrap_or_default(),
                cmd: cfg.cmd().clone().unwrap_or_default(),
                env: cfg.env().clone().unwrap_or_default(),
                working_dir: cfg.working_dir().clone().unwrap_or_default(),
                user: cfg.user().clone().unwrap_or_default(),
                stop_signal: cfg.stop_signal().clone(),
                layers: layers.iter().map(|m| hex::encode(m.root_hash)).collect(),
                passwd: account_db(store, &img, "etc/passwd")?,
                group: account_db(store, &img, "etc/group")?,
            },
        );
    }
    Ok(out)
}

/// An account database of the image, as text (empty when the image has none).
fn account_db(store: &Store, img: &coffer_image::StoredImage, path: &str) -> Result<String> {
    let bytes = store
        .read_image_file(img, path)
        .with_context(|| format!("{}: reading /{path}", img.name))?;
    Ok(String::from_utf8_lossy(&bytes.unwrap_or_default()).into_owned())
}

/// Generate the policy text for a Pod file.
pub(crate) fn generate_for(
    pod_path: &Path,
    home: &Path,
    opts: &GenOptions,
) -> Result<(Pod, String)> {
    let yaml = std::fs::read_to_string(pod_path)
        .with_context(|| format!("cannot read {}", pod_path.display()))?;
    let pod = coffer_policy::parse_pod(&yaml).with_context(|| pod_path.display().to_string())?;
    let store = Store::open(home)?;
    let facts = image_facts(&store, &pod)?;
    let text = coffer_policy::generate(&pod, &facts, opts)?;
    Ok((pod, text))
}

fn gen(a: GenArgs) -> Result<ExitCode> {
    let text = if a.allow_all {
        eprintln!("coffer: WARNING: --allow-all writes a DEBUG policy that allows EVERYTHING;");
        eprintln!(
            "coffer: WARNING: attestation of a group under it proves nothing about what runs."
        );
        coffer_policy::allow_all_policy()
    } else {
        let opts = GenOptions {
            allow_stdio_access: !a.disable_stdio,
        };
        generate_for(&a.pod, &coffer_home()?, &opts)?.1
    };
    let host_data = hex::encode(coffer_policy::digest(text.as_bytes()));
    let text = match a.format {
        _ if a.annotate => annotate(&a.pod, &text, a.gzip)?,
        Format::Rego => text,
        Format::Arm => {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD.encode(text.as_bytes()) + "\n"
        }
    };
    match &a.output {
        Some(path) => {
            std::fs::write(path, &text)
                .with_context(|| format!("cannot write {}", path.display()))?;
            println!("host_data: {host_data}");
        }
        None => {
            print!("{text}");
            eprintln!("host_data: {host_data}");
        }
    }
    // The other value a release policy should require: HOST_DATA says which policy governs the
    // group, the launch measurement which agent enforces it.
    let home = coffer_home()?;
    let measured = coffer_host::launch::agent_exe()
        .and_then(|agent| coffer_host::launch::expected_measurement(&home, &agent));
    match measured {
        Ok(m) => eprintln!(
            "launch measurement: {} (--isolation namespace, this coffer-agent; a release policy \
             should require it with host_data)",
            hex::encode(m)
        ),
        Err(e) => eprintln!("launch measurement: unknown ({e})"),
    }
    Ok(ExitCode::SUCCESS)
}

/// The Pod manifest at `pod` with the policy in its `coffer.dev/policy` annotation.
fn annotate(pod: &Path, policy: &str, gzip: bool) -> Result<String> {
    use serde_yaml::{Mapping, Value};
    let yaml =
        std::fs::read_to_string(pod).with_context(|| format!("cannot read {}", pod.display()))?;
    let mut doc: Value =
        serde_yaml::from_str(&yaml).with_context(|| format!("{} is not YAML", pod.display()))?;
    let root = doc
        .as_mapping_mut()
        .with_context(|| format!("{}: not a Pod manifest (no mapping)", pod.display()))?;
    let metadata = root
        .entry("metadata".into())
        .or_insert_with(|| Value::Mapping(Mapping::new()));
    let metadata = metadata
        .as_mapping_mut()
        .with_context(|| format!("{}: metadata is not a mapping", pod.display()))?;
    let annotations = metadata
        .entry("annotations".into())
        .or_insert_with(|| Value::Mapping(Mapping::new()));
    if annotations.is_null() {
        *annotations = Value::Mapping(Mapping::new());
    }
    let annotations = annotations
        .as_mapping_mut()
        .with_context(|| format!("{}: metadata.annotations is not a mapping", pod.display()))?;
    annotations.insert(
        coffer_host::annotation::POLICY_ANNOTATION.into(),
        coffer_host::annotation::encode(policy.as_bytes(), gzip).into(),
    );
    Ok(serde_yaml::to_string(&doc)?)
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let bytes = crate::cmd::read_input(path)?;
    serde_json::from_slice(&bytes).with_context(|| format!("{} is not JSON", path.display()))
}

fn eval(a: EvalArgs) -> Result<ExitCode> {
    let policy = std::fs::read_to_string(&a.policy)
        .with_context(|| format!("cannot read {}", a.policy.display()))?;
    let mut e = Enforcer::new(&policy).with_context(|| a.policy.display().to_string())?;
    if let Some(s) = &a.state {
        e.set_state(read_json(s)?)?;
    }
    let d = e.decide_named(&a.rule, &read_json(&a.input)?)?;
    println!(
        "{}",
        serde_json::to_string_pretty(&json!({
            "allowed": d.allowed, "reason": d.reason, "result": d.result, "state": e.state()
        }))?
    );
    Ok(if d.allowed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
