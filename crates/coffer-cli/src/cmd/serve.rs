//! `coffer serve` and the operator's `coffer key` commands.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context as _, Result};
use clap::{Args, Subcommand};
use coffer_server::ServerConfig;
use serde_json::{json, Value};

use crate::cmd::snp::roots;
use crate::home::coffer_home;

/// Default address of `coffer serve`.
pub(crate) const DEFAULT_LISTEN: &str = "127.0.0.1:7070";

#[derive(Args, Debug)]
pub(crate) struct ServeArgs {
    /// Address to listen on (loopback by default).
    #[arg(long, default_value = DEFAULT_LISTEN)]
    listen: SocketAddr,
    /// Issuer URL in tokens (default: `http://<listen address>`).
    #[arg(long)]
    issuer: Option<String>,
    /// Accept evidence from coffer's emulated secure processor (and tokens that attest it).
    #[arg(long)]
    allow_emulated: bool,
    /// Reference values (JSON: measurements, min_tcb, allow_debug, max_vmpl; "tdx": mrtd, rtmr0-3,
    /// mrconfigid; "sgx": mrenclave, mrsigner, product_id, min_svn) every report or quote must meet.
    #[arg(long, value_name = "FILE")]
    reference_values: Option<PathBuf>,
    /// Accept debuggable guests (POLICY.DEBUG: the host can read their memory). Refused by default.
    #[arg(long)]
    allow_debug: bool,
    /// Accept reports requested from VMPL 0 to N (default: VMPL 0 only).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(0..=3))]
    allow_vmpl: Option<u32>,
    /// Trust another token issuer: ISS=JWKS_FILE (repeatable).
    #[arg(long, value_name = "ISS=JWKS_FILE")]
    trust_issuer: Vec<String>,
    /// Token lifetime in seconds.
    #[arg(long, default_value_t = 8 * 3600)]
    token_lifetime: u64,
    /// Attest Intel SGX and TDX quotes (attest/SgxEnclave, attest/TdxVm) with the Intel collateral
    /// in DIR: a directory of PCS responses, or a directory of collateral sets (dcap-qvl JSON
    /// files, PCS subdirectories); re-read when it changes, never fetched.
    #[arg(long, value_name = "DIR")]
    dcap_collateral: Option<PathBuf>,
    /// TEST ONLY: fix the clock (RFC 3339) used for certificates, collateral and tokens.
    #[arg(long, value_parser = crate::cmd::snp::parse_time, hide = true)]
    now: Option<u64>,
}

pub(crate) fn serve_config(
    home: &Path,
    listen: SocketAddr,
    allow_emulated: bool,
) -> Result<ServerConfig> {
    Ok(ServerConfig {
        dir: home.join("serve"),
        listen,
        issuer: None,
        roots: roots(home, allow_emulated)?,
        allow_emulated,
        reference: None,
        trusted_issuers: Vec::new(),
        token_lifetime: 8 * 3600,
        now: None,
        dcap: None,
        limits: coffer_server::Limits::default(),
    })
}

pub(crate) fn serve(a: ServeArgs) -> Result<ExitCode> {
    let home = coffer_home()?;
    let mut cfg = serve_config(&home, a.listen, a.allow_emulated)?;
    cfg.issuer = a.issuer;
    cfg.token_lifetime = a.token_lifetime;
    cfg.now = a.now;
    if let Some(dir) = &a.dcap_collateral {
        cfg.dcap =
            Some(coffer_server::dcap::DcapConfig::intel(dir.clone()).map_err(anyhow::Error::msg)?);
    }
    let mut rv = match &a.reference_values {
        Some(p) => {
            let bytes = std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?;
            coffer_attest::ReferenceValues::from_json(&bytes).map_err(anyhow::Error::msg)?
        }
        None => coffer_attest::ReferenceValues::default(),
    };
    rv.allow_debug |= a.allow_debug;
    rv.max_vmpl = rv.max_vmpl.max(a.allow_vmpl.unwrap_or(0));
    let (any_measurement, allow_debug, max_vmpl) =
        (rv.measurements.is_empty(), rv.allow_debug, rv.max_vmpl);
    let (any_td, any_enclave) = (rv.tdx.accepts_any_td(), rv.sgx.accepts_any_enclave());
    cfg.reference = Some(rv);
    for t in &a.trust_issuer {
        let Some((iss, file)) = t.split_once('=') else {
            bail!("--trust-issuer '{t}': expected ISS=JWKS_FILE");
        };
        let jwks: Value = serde_json::from_slice(
            &std::fs::read(file).with_context(|| format!("cannot read {file}"))?,
        )
        .with_context(|| format!("{file} is not JSON"))?;
        cfg.trusted_issuers.push((iss.to_string(), jwks));
    }
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let running = coffer_server::start(cfg)
            .await
            .map_err(anyhow::Error::msg)?;
        eprintln!(
            "coffer serve: listening on http://{} (issuer {})",
            running.addr, running.issuer
        );
        eprintln!(
            "coffer serve: release responses are signed by key {} (pin it in Pods as \
             keyBrokerKey / coffer.dev/skr-key-broker-key; also at /broker-key)",
            running.broker_key
        );
        eprintln!(
            "coffer serve: admin token in {}{}",
            coffer_server::admin_token_path(&home.join("serve")).display(),
            if a.allow_emulated {
                "; emulated evidence ACCEPTED"
            } else {
                ""
            }
        );
        match &running.dcap_collateral {
            Some(sets) => {
                eprintln!(
                    "coffer serve: Intel SGX/TDX attestation with {} collateral set(s) from {}",
                    sets.len(),
                    a.dcap_collateral
                        .as_deref()
                        .unwrap_or(Path::new(""))
                        .display()
                );
                for s in sets {
                    eprintln!("coffer serve:   {s}");
                }
                if any_td {
                    eprintln!(
                        "coffer serve: WARNING: no reference MRTD (--reference-values tdx.mrtd): \
                         any TD is accepted"
                    );
                }
                if any_enclave {
                    eprintln!(
                        "coffer serve: WARNING: no reference MRENCLAVE or MRSIGNER \
                         (--reference-values sgx): any enclave is accepted"
                    );
                }
            }
            None => eprintln!(
                "coffer serve: no --dcap-collateral: attest/SgxEnclave and attest/TdxVm answer \
                 not-configured"
            ),
        }
        if any_measurement {
            eprintln!(
                "coffer serve: WARNING: no reference measurements (--reference-values): \
                 any launch measurement is accepted"
            );
        }
        if allow_debug {
            eprintln!(
                "coffer serve: WARNING: debuggable guests are ACCEPTED (their memory is \
                 readable by the host)"
            );
        }
        if max_vmpl > 0 {
            eprintln!("coffer serve: reports from VMPL 0 to {max_vmpl} are accepted");
        }
        if a.now.is_some() {
            eprintln!("coffer serve: WARNING: the clock is fixed by --now (testing only)");
        }
        tokio::select! {
            r = running.task => { r??; }
            _ = tokio::signal::ctrl_c() => { eprintln!("coffer serve: stopping"); }
        }
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Subcommand, Debug)]
pub(crate) enum KeyCommand {
    /// Create a key (generated, or imported with --import-k for oct-HSM).
    Create(KeyCreateArgs),
    /// List keys (metadata only).
    List(ServerArgs),
    /// Show one key's metadata and release policy.
    Show(KeyNameArgs),
    /// Set a key's release policy from a JSON file.
    Policy(KeyPolicyArgs),
    /// Delete a key.
    Delete(KeyNameArgs),
}

#[derive(Args, Debug)]
pub(crate) struct ServerArgs {
    /// URL of coffer serve.
    #[arg(long, default_value = "http://127.0.0.1:7070")]
    server: String,
    /// Admin token (default: read from $COFFER_HOME/serve/admin-token).
    #[arg(long, env = "COFFER_ADMIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

#[derive(Args, Debug)]
pub(crate) struct KeyNameArgs {
    /// Key name.
    name: String,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Args, Debug)]
pub(crate) struct KeyCreateArgs {
    /// Key name (A-Z, a-z, 0-9, '-').
    name: String,
    /// oct-HSM (256-bit) or RSA-HSM.
    #[arg(long, default_value = "oct-HSM")]
    kty: String,
    /// RSA size: 2048 or 3072.
    #[arg(long)]
    size: Option<u32>,
    /// Import this oct-HSM key: a file holding exactly 32 bytes.
    #[arg(long, value_name = "FILE")]
    import_k: Option<PathBuf>,
    /// Release policy JSON file.
    #[arg(long, value_name = "FILE")]
    policy: Option<PathBuf>,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Args, Debug)]
pub(crate) struct KeyPolicyArgs {
    /// Key name.
    name: String,
    /// Release policy JSON file.
    policy: PathBuf,
    #[command(flatten)]
    server: ServerArgs,
}

fn token(s: &ServerArgs) -> Result<String> {
    if let Some(t) = &s.token {
        return Ok(t.clone());
    }
    let path = coffer_server::admin_token_path(&coffer_home()?.join("serve"));
    Ok(std::fs::read_to_string(&path)
        .with_context(|| {
            format!(
                "no admin token: pass --token or run coffer serve once ({} missing)",
                path.display()
            )
        })?
        .trim()
        .to_string())
}

fn call(s: &ServerArgs, method: reqwest::Method, path: &str, body: Option<Value>) -> Result<Value> {
    let client = reqwest::blocking::Client::new();
    let url = format!("{}{path}", s.server.trim_end_matches('/'));
    let mut req = client.request(method, &url).bearer_auth(token(s)?);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().with_context(|| format!("cannot reach {url}"))?;
    let status = resp.status();
    let text = resp.text().unwrap_or_default();
    let v: Value = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    if !status.is_success() {
        let msg = v
            .pointer("/error/message")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| v.to_string());
        bail!("{status}: {msg}");
    }
    Ok(v)
}

fn read_json(p: &Path) -> Result<Value> {
    serde_json::from_slice(
        &std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?,
    )
    .with_context(|| format!("{} is not JSON", p.display()))
}

pub(crate) fn key(cmd: KeyCommand) -> Result<ExitCode> {
    let out = match cmd {
        KeyCommand::Create(a) => {
            let mut body = json!({"name": a.name, "kty": a.kty});
            if let Some(s) = a.size {
                body["key_size"] = json!(s);
            }
            if let Some(p) = &a.import_k {
                use base64::Engine as _;
                let k = std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?;
                body["k"] = json!(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(k));
            }
            if let Some(p) = &a.policy {
                body["release_policy"] = read_json(p)?;
            }
            call(&a.server, reqwest::Method::POST, "/keys", Some(body))?
        }
        KeyCommand::List(s) => call(&s, reqwest::Method::GET, "/keys", None)?,
        KeyCommand::Show(a) => call(
            &a.server,
            reqwest::Method::GET,
            &format!("/keys/{}", a.name),
            None,
        )?,
        KeyCommand::Policy(a) => call(
            &a.server,
            reqwest::Method::PUT,
            &format!("/keys/{}/policy", a.name),
            Some(read_json(&a.policy)?),
        )?,
        KeyCommand::Delete(a) => {
            call(
                &a.server,
                reqwest::Method::DELETE,
                &format!("/keys/{}", a.name),
                None,
            )?;
            json!({"deleted": a.name})
        }
    };
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(ExitCode::SUCCESS)
}
