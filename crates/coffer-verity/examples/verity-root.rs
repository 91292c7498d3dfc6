//! Print the dm-verity root hash of a file (for benchmarks against `veritysetup format`).

fn main() -> std::process::ExitCode {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: verity-root FILE");
        return std::process::ExitCode::from(2);
    };
    match std::fs::File::open(&path)
        .map_err(coffer_verity::VerityError::from)
        .and_then(coffer_verity::root_hash)
    {
        Ok(root) => {
            println!("{}", hex::encode(root));
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("verity-root: {path}: {e}");
            std::process::ExitCode::from(1)
        }
    }
}
