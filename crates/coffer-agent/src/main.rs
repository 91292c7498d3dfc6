//! `coffer-agent`: the binary that runs inside the TEE, and the only one the launch measurement
//! covers. Started by the host, never by a user:
//!
//! * `coffer-agent --vm`: init (PID 1) of a group's VM, the channel is the virtio-serial port;
//! * `coffer-agent --io DIR`: PID 1 of the namespace sandbox, `DIR` is the host's I/O directory.
//!
//! No argument parser: the agent's surface stays as small as the two forms above.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

const USAGE: &str = "usage: coffer-agent --vm | --io DIR
The agent of a Coffer confidential group, started by `coffer run` (never by hand):
  --vm       run as the init of the group's VM (the channel is the virtio-serial port)
  --io DIR   run as PID 1 of the namespace sandbox; DIR is the host's I/O directory";

fn main() -> ExitCode {
    coffer_policy::no_library_backtraces();
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["--vm"] => coffer_agent::vm::main(),
        ["--io", dir] => match namespace(PathBuf::from(dir)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("coffer-agent: {e}");
                ExitCode::FAILURE
            }
        },
        ["--version"] => {
            println!("coffer-agent {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        ["--help"] | ["-h"] => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
    }
}

/// Inside the namespace sandbox: build the root, check the launch data, serve.
fn namespace(io_host: PathBuf) -> Result<(), coffer_agent::AgentError> {
    coffer_agent::sandbox::enter(&io_host)?;
    let io = PathBuf::from(coffer_proto::IO_DIR);
    let policy = std::fs::read(io.join(coffer_proto::layout::POLICY_FILE)).map_err(|source| {
        coffer_agent::AgentError::Io {
            what: "reading the policy".into(),
            source,
        }
    })?;
    let sp = Arc::new(coffer_sp::EmulatedClient::new(
        &io.join(coffer_proto::layout::SP_SOCKET),
    ));
    let agent = coffer_agent::start(&policy, sp)?;
    agent.serve(&io.join(coffer_proto::layout::AGENT_SOCKET))
}
