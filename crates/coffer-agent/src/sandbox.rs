//! The sandbox's own root filesystem, built by the agent as PID 1 of its fresh namespaces.
//!
//! The launcher starts the agent with `unshare --fork --pid --mount --net --uts --ipc` (util-linux),
//! so the agent is PID 1 of new PID, mount, network, UTS and IPC namespaces. Here it makes a tmpfs
//! root holding read-only binds of the system directories it runs from (its binary, runc, libc),
//! a fresh /proc, /dev, /sys, the host-shared I/O directory, and pivots into it. Everything it
//! mounts lives in its mount namespace and disappears with it.

use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::{sys, AgentError};

use coffer_proto::IO_DIR;

fn bind(src: &Path, dst: &Path, read_only: bool) -> Result<(), AgentError> {
    std::fs::create_dir_all(dst).map_err(crate::io(format!("mkdir {}", dst.display())))?;
    mount(
        Some(src),
        dst,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(sys(format!("bind {} -> {}", src.display(), dst.display())))?;
    if read_only {
        mount(
            None::<&str>,
            dst,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .map_err(sys(format!("remount {} read-only", dst.display())))?;
    }
    Ok(())
}

/// Build the sandbox root and pivot into it. `io_host` is the host path of the I/O directory.
pub fn enter(io_host: &Path) -> Result<(), AgentError> {
    // Nothing mounted here may propagate back to the host.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(sys("making mounts private"))?;
    let root = PathBuf::from(format!("/tmp/.coffer-sandbox-{}", std::process::id()));
    std::fs::create_dir_all(&root).map_err(crate::io(format!("mkdir {}", root.display())))?;
    mount(
        Some("tmpfs"),
        &root,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=0755"),
    )
    .map_err(sys("mounting the sandbox root"))?;
    for dir in ["bin", "sbin", "lib", "lib64", "usr", "etc"] {
        let src = Path::new("/").join(dir);
        if src.is_symlink() {
            let target = std::fs::read_link(&src)
                .map_err(crate::io(format!("readlink {}", src.display())))?;
            std::os::unix::fs::symlink(&target, root.join(dir))
                .map_err(crate::io(format!("symlink {dir}")))?;
        } else if src.is_dir() {
            bind(&src, &root.join(dir), true)?;
        }
    }
    bind(Path::new("/dev"), &root.join("dev"), false)?;
    bind(Path::new("/sys"), &root.join("sys"), false)?;
    let proc_dir = root.join("proc");
    std::fs::create_dir_all(&proc_dir).map_err(crate::io("mkdir proc"))?;
    mount(
        Some("proc"),
        &proc_dir,
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(sys("mounting /proc"))?;
    for t in ["tmp", "run"] {
        let d = root.join(t);
        std::fs::create_dir_all(&d).map_err(crate::io(format!("mkdir {t}")))?;
        mount(
            Some("tmpfs"),
            &d,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=0755"),
        )
        .map_err(sys(format!("mounting /{t}")))?;
    }
    bind(io_host, &root.join(IO_DIR.trim_start_matches('/')), false)?;
    let old = root.join(".old-root");
    std::fs::create_dir_all(&old).map_err(crate::io("mkdir .old-root"))?;
    nix::unistd::pivot_root(&root, &old).map_err(sys("pivot_root"))?;
    nix::unistd::chdir("/").map_err(sys("chdir /"))?;
    umount2("/.old-root", MntFlags::MNT_DETACH).map_err(sys("detaching the old root"))?;
    let _ = std::fs::remove_dir("/.old-root");
    Ok(())
}
