//! `coffer`: run unmodified containers in a TEE and prove it.
//!
//! This binary only parses arguments and wires library calls; each subcommand lives in `cmd/`.

mod cmd;
mod home;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Coffer: confidential containers on AMD SEV-SNP, real or emulated.
///
/// State lives in $COFFER_HOME (default ~/.local/share/coffer).
#[derive(Parser, Debug)]
#[command(name = "coffer", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// AMD SEV-SNP evidence: show, verify and emulate attestation reports.
    #[command(subcommand)]
    Snp(cmd::snp::SnpCommand),
    /// Intel SGX and TDX evidence (DCAP quotes): show and verify with Intel's collateral.
    #[command(subcommand)]
    Dcap(cmd::dcap::DcapCommand),
    /// OCI images: import into the local store, list, measure layers (Azure's layer hash).
    #[command(subcommand)]
    Image(cmd::image::ImageCommand),
    /// Security policies: generate from a Pod manifest, digest, evaluate.
    #[command(subcommand)]
    Policy(cmd::policy::PolicyCommand),
    /// Run a Pod's containers as a confidential group in an (emulated) SEV-SNP TEE.
    ///
    /// Generates the policy (or takes --policy), binds its digest into HOST_DATA, starts the
    /// sandbox whose agent enforces the policy on every request, streams the containers' output
    /// prefixed by name, and exits with the first (main) container's status.
    Run(cmd::run::RunArgs),
    /// Run a process in a running group's container, if the policy's exec_processes allow it.
    Exec(cmd::run::ExecArgs),
    /// List groups: name, state, isolation, uptime, exit status, restarts, containers, network.
    Ps,
    /// Print a group's container output (kept when the policy lets the host read it).
    Logs(cmd::lifecycle::LogsArgs),
    /// Stop a group: SIGTERM through the policy, SIGKILL after the grace period.
    Stop(cmd::lifecycle::StopArgs),
    /// Remove a stopped group's state and logs.
    Rm(cmd::lifecycle::RmArgs),
    /// Run the attestation service and key broker (HTTP, SQLite; no other setup).
    Serve(cmd::serve::ServeArgs),
    /// Manage keys in a running coffer serve (admin token required).
    #[command(subcommand)]
    Key(cmd::serve::KeyCommand),
    /// Encrypted volumes (LUKS2): create, open, mount.
    #[command(subcommand)]
    Encfs(cmd::encfs::EncfsCommand),
    /// Run the end-to-end demonstration on embedded defaults (no setup, no outside files).
    Demo(cmd::demo::DemoArgs),
    /// The utility VM of a group: build its guest image, compute its SEV-SNP launch measurement.
    #[command(subcommand)]
    Uvm(cmd::uvm::UvmCommand),
}

fn main() -> ExitCode {
    coffer_policy::no_library_backtraces();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Snp(c) => cmd::snp::run(c),
        Command::Dcap(c) => cmd::dcap::run(c),
        Command::Uvm(c) => cmd::uvm::run(c),
        Command::Image(c) => cmd::image::run(c),
        Command::Policy(c) => cmd::policy::run(c),
        Command::Run(a) => cmd::run::run(a),
        Command::Exec(a) => cmd::run::exec(a),
        Command::Ps => cmd::lifecycle::ps(),
        Command::Logs(a) => cmd::lifecycle::logs(a),
        Command::Stop(a) => cmd::lifecycle::stop(a),
        Command::Rm(a) => cmd::lifecycle::rm(a),
        Command::Serve(a) => cmd::serve::serve(a),
        Command::Key(c) => cmd::serve::key(c),
        Command::Encfs(c) => cmd::encfs::run(c),
        Command::Demo(a) => cmd::demo::run(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("coffer: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
