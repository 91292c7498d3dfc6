//! `coffer demo`: the whole story on embedded defaults, in a throw-away $COFFER_HOME.
//!
//! 1. builds the example image (embedded script: busybox-static + umoci) and imports it;
//! 2. starts `coffer serve` in-process on a free loopback port (SQLite, emulation enabled);
//! 3. makes a 256-bit key, an encrypted volume (LUKS2, as `coffer encfs create`) holding a secret, and puts the
//!    key in the broker with a release policy requiring this group's policy digest (HOST_DATA);
//! 4. runs the group: the app calls the SKR API, the agent opens the volume with the released
//!    key, the app prints the secret;
//! 5. runs the same group under a policy with one changed line: attestation works, release is
//!    denied, the volume stays closed;
//! 6. prints a summary.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

use anyhow::{bail, Context as _, Result};
use base64::Engine as _;
use clap::Args;
use coffer_image::{ImageRef, Store};
use serde_json::{json, Value};

use crate::cmd::serve::serve_config;

const BUILD_SCRIPT: &str = include_str!("../../../../examples/hello/build-image.sh");

#[derive(Args, Debug)]
pub(crate) struct DemoArgs {
    /// Keep the temporary $COFFER_HOME and print where it is.
    #[arg(long)]
    keep: bool,
}

struct Steps {
    started: Instant,
    timings: Vec<(String, f64)>,
    current: Option<(String, Instant)>,
}

impl Steps {
    fn begin(&mut self, n: u32, what: &str) {
        self.end();
        eprintln!("\n[{n}/6] {what}");
        self.current = Some((format!("{n}. {what}"), Instant::now()));
    }
    fn end(&mut self) {
        if let Some((w, t)) = self.current.take() {
            self.timings.push((w, t.elapsed().as_secs_f64()));
        }
    }
}

fn sh(cmd: &mut Command, what: &str) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("{what}: cannot start"))?;
    if !out.status.success() {
        bail!(
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn make_volume(dir: &Path, secret: &str, key: &[u8]) -> Result<PathBuf> {
    let src = dir.join("volume-content");
    std::fs::create_dir_all(&src)?;
    std::fs::write(src.join("secret.txt"), format!("{secret}\n"))?;
    let img = dir.join("secret.img");
    crate::cmd::encfs::create_volume(&src, key, &img, Some(32))?;
    Ok(img)
}

fn pod_yaml(img: &Path, endpoint: &str, broker_key: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: demo
  annotations:
    coffer.dev/skr-port: "8080"
    coffer.dev/skr-attestation-endpoint: "{endpoint}"
    coffer.dev/skr-key-broker-endpoint: "{endpoint}"
    coffer.dev/skr-key-broker-key: "{broker_key}"
spec:
  containers:
    - name: app
      image: hello:latest
      command: ["/bin/sh", "-c"]
      args:
        - >-
          echo "SKR API: $(wget -q -O - http://127.0.0.1:8080/status)";
          echo "raw report through the SKR API: $(wget -q -O - --header 'Content-Type: application/json'
          --post-data '{{"runtime_data":"eyJhIjoxfQ=="}}' http://127.0.0.1:8080/attest/raw | grep -o 'report...........')";
          echo "token through the SKR API: $(wget -q -O - --header 'Content-Type: application/json'
          --post-data '{{"maa_endpoint":"{endpoint}","runtime_data":"eyJhIjoxfQ=="}}' http://127.0.0.1:8080/attest/maa | grep -o 'token...eyJ')";
          echo "key released through the SKR API: $(wget -q -O - --header 'Content-Type: application/json'
          --post-data '{{"maa_endpoint":"{endpoint}","akv_endpoint":"{endpoint}","kid":"demo-key"}}'
          http://127.0.0.1:8080/key/release | grep -o 'kty[^,]*')";
          echo "secret read from the encrypted volume: $(cat /secret/secret.txt)"
      volumeMounts:
        - name: secret
          mountPath: /secret
          readOnly: true
  volumes:
    - name: secret
      csi:
        driver: encfs.coffer.dev
        readOnly: true
        volumeAttributes:
          source: {img}
          keyName: demo-key
          attestationEndpoint: "{endpoint}"
          keyBrokerEndpoint: "{endpoint}"
          keyBrokerKey: "{broker_key}"
"#,
        img = img.display()
    )
}

fn run_group(home: &Path, pod: &Path, policy: &Path) -> Result<(bool, String, String)> {
    let out = Command::new(std::env::current_exe()?)
        .arg("run")
        .arg(pod)
        .arg("--policy")
        .arg(policy)
        .env("COFFER_HOME", home)
        .output()?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

pub(crate) fn run(a: DemoArgs) -> Result<ExitCode> {
    let mut steps = Steps {
        started: Instant::now(),
        timings: Vec::new(),
        current: None,
    };
    let tmp = tempfile::Builder::new().prefix("coffer-demo-").tempdir()?;
    let home = tmp.path().to_path_buf();

    steps.begin(
        1,
        "building the example image (busybox-static + umoci) and generating its policy",
    );
    let script = home.join("build-image.sh");
    std::fs::write(&script, BUILD_SCRIPT)?;
    let oci = home.join("hello-oci");
    sh(
        Command::new("bash").arg(&script).arg(&oci),
        "step 1: building the example image (needs umoci and busybox-static)",
    )?;
    let store = Store::open(&home)?;
    let img = store
        .import(
            &ImageRef::parse(&format!("oci:{}:latest", oci.display()))?,
            Some("hello:latest"),
            None,
        )
        .context("step 1: import")?;
    let layers = store.measure(&img, None)?;
    for l in &layers {
        eprintln!(
            "      layer {} dm-verity root {}",
            l.diff_id,
            hex::encode(l.root_hash)
        );
    }

    steps.begin(
        2,
        "starting coffer serve in-process (SQLite, emulated evidence enabled)",
    );
    let rt = tokio::runtime::Runtime::new()?;
    let cfg = serve_config(&home, "127.0.0.1:0".parse()?, true)?;
    let running = rt
        .block_on(coffer_server::start(cfg))
        .map_err(anyhow::Error::msg)
        .context("step 2: coffer serve")?;
    let endpoint = format!("http://{}", running.addr);
    eprintln!(
        "      listening on {endpoint}; release responses signed by key {}",
        running.broker_key
    );

    steps.begin(
        3,
        "making a key, an encrypted volume with a secret, and the release policy",
    );
    let mut key = [0u8; 32];
    openssl::rand::rand_bytes(&mut key)?;
    let mut nonce = [0u8; 8];
    openssl::rand::rand_bytes(&mut nonce)?;
    let secret = format!("coffer-demo-secret-{}", hex::encode(nonce));
    let volume = make_volume(&home, &secret, &key).context("step 3: encrypted volume")?;
    let pod = home.join("pod.yaml");
    std::fs::write(&pod, pod_yaml(&volume, &endpoint, &running.broker_key))?;
    let (_, policy) =
        crate::cmd::policy::generate_for(&pod, &home, &coffer_policy::GenOptions::default())
            .context("step 3: policy")?;
    let policy_path = home.join("policy.rego");
    std::fs::write(&policy_path, &policy)?;
    let host_data = hex::encode(coffer_policy::digest(policy.as_bytes()));
    eprintln!("      policy HOST_DATA {host_data}");
    let admin = std::fs::read_to_string(coffer_server::admin_token_path(&home.join("serve")))?;
    // HOST_DATA says which policy governs the group; the launch measurement says which agent
    // enforces it. A host that boots a guest of its own with the right HOST_DATA gets nothing.
    let measurement = hex::encode(coffer_host::launch::expected_measurement(
        &home,
        &coffer_host::launch::agent_exe()?,
    )?);
    let release_policy = json!({"version": "1.0.0", "anyOf": [{"authority": running.issuer, "allOf": [
        {"claim": "x-ms-sevsnpvm-hostdata", "equals": host_data},
        {"claim": "x-ms-sevsnpvm-launchmeasurement", "equals": measurement},
        {"claim": "x-ms-sevsnpvm-is-debuggable", "equals": "false"}]}]});
    let client = reqwest::blocking::Client::new();
    let resp = client
        .post(format!("{endpoint}/keys"))
        .bearer_auth(admin.trim())
        .json(&json!({"name": "demo-key", "k": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key), "release_policy": release_policy}))
        .send()
        .context("step 3: key broker")?;
    if resp.status() != 201 {
        bail!(
            "step 3: creating the key: {}",
            resp.text().unwrap_or_default()
        );
    }
    eprintln!(
        "      key demo-key released only to HOST_DATA {host_data} and launch measurement {}",
        &measurement[..16]
    );

    steps.begin(
        4,
        "running the group in the emulated TEE: SKR API, key release, encrypted volume",
    );
    let (ok, out, err) = run_group(&home, &pod, &policy_path)?;
    print!("{out}");
    if !ok || !out.contains(&secret) {
        bail!("step 4: the group did not read the secret: {}", err.trim());
    }
    println!("demo: the group read its secret from the encrypted volume");

    steps.begin(
        5,
        "running the same group with one changed line in its policy",
    );
    let changed = policy.replacen("allow_dump_stacks := false", "allow_dump_stacks := true", 1);
    if changed == policy {
        bail!("step 5: could not change the policy");
    }
    let changed_path = home.join("policy-changed.rego");
    std::fs::write(&changed_path, &changed)?;
    eprintln!(
        "      changed: allow_dump_stacks := true  (HOST_DATA {})",
        hex::encode(coffer_policy::digest(changed.as_bytes()))
    );
    let (ok2, out2, err2) = run_group(&home, &pod, &changed_path)?;
    if ok2 || out2.contains(&secret) {
        bail!("step 5: the changed group got the secret");
    }
    let why = err2
        .lines()
        .find(|l| l.contains("stays closed"))
        .unwrap_or(err2.trim())
        .to_string();
    println!(
        "demo: key release DENIED to the changed group; the volume stayed closed:\n  {}",
        why.trim_start_matches("coffer: error: ")
    );
    let audit: Value = client
        .get(format!("{endpoint}/audit"))
        .bearer_auth(admin.trim())
        .send()?
        .json()?;
    let releases: Vec<&Value> = audit["entries"]
        .as_array()
        .map(|e| e.iter().filter(|x| x["action"] == "release").collect())
        .unwrap_or_default();

    steps.begin(6, "summary");
    steps.end();
    let _ = running.shutdown.send(());
    println!("\nsummary");
    println!("  measured : 2 image layers (dm-verity roots), policy HOST_DATA {host_data}");
    println!(
        "  attested : emulated SEV-SNP reports (tee emulated-snp), each bound to a fresh RSA key"
    );
    println!(
        "  released : {} of {} key release requests (audit log): granted to the group, denied to the changed one",
        releases.iter().filter(|r| r["allowed"] == true).count(),
        releases.len()
    );
    for (w, t) in &steps.timings {
        println!("  {t:6.2}s  {w}");
    }
    println!("  total {:.1}s", steps.started.elapsed().as_secs_f64());
    if a.keep {
        let kept = tmp.keep();
        println!("kept COFFER_HOME at {}", kept.display());
    }
    Ok(ExitCode::SUCCESS)
}
