#!/usr/bin/env bash
# Group start with cached layer images, small image against a big one: time to the first output
# line of `coffer run`, the host memory a running group holds (RSS of its launcher and agent or QEMU,
# tmpfs), and in a VM the memory the guest has in use, N runs each.
# A big image to compare with: BIG_OCI=oci-layout-dir:tag (e.g. a 200 MB Debian rootfs made with
# mmdebstrap + umoci); without it only the small image runs. ISOLATION=vm runs the groups in VMs
# (layers as dm-verity disks: the start should not grow with the image).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-5}
ISOLATION=${ISOLATION:-namespace}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cargo build --release -q -p coffer-cli -p coffer-agent
export COFFER_HOME="$work/home"
C=target/release/coffer
examples/hello/build-image.sh "$work/oci" >/dev/null
$C image import "oci:$work/oci:latest" --name small:latest >/dev/null
images="small"
if [ -n "${BIG_OCI:-}" ]; then
  $C image import "oci:$BIG_OCI" --name big:latest >/dev/null
  images="small big"
fi
for img in $images; do
  cat > "$work/$img.yaml" <<POD
apiVersion: v1
kind: Pod
metadata: {name: start-$img}
spec:
  containers:
  - name: c
    image: $img:latest
    command: ["/bin/sh", "-c", "echo ready; while read k v u; do case \$k in MemTotal:|MemAvailable:) echo \$k \$v;; esac; done < /proc/meminfo; sleep 2"]
POD
  $C policy gen "$work/$img.yaml" -o "$work/$img.rego" >/dev/null   # measures, builds layer images
done
[ "$ISOLATION" = vm ] && $C uvm build >/dev/null
python3 - "$N" "$work" "$C" "$ISOLATION" $images <<'PY'
import os, statistics, subprocess, sys, time
n, work, c, isolation, images = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:]
def shmem():
    for l in open("/proc/meminfo"):
        if l.startswith("Shmem:"):
            return int(l.split()[1])
def group_rss(home):
    """Resident memory (MiB) of every process started with this COFFER_HOME: the launcher, the
    sandbox's agent or QEMU (containers' env is their own, so in the namespace backend they are
    not counted)."""
    marker, total = f"COFFER_HOME={home}".encode(), 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if marker in open(f"/proc/{pid}/environ", "rb").read().split(b"\0"):
                for l in open(f"/proc/{pid}/status"):
                    if l.startswith("VmRSS:"):
                        total += int(l.split()[1])
        except OSError:
            pass
    return total / 1024
for img in images:
    times, mem, rss, guest = [], [], [], []
    for _ in range(n):
        before = shmem()
        t = time.perf_counter()
        p = subprocess.Popen([c, "run", f"{work}/{img}.yaml", "--policy", f"{work}/{img}.rego",
                              "--isolation", isolation],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        p.stdout.readline()
        times.append((time.perf_counter() - t) * 1e3)
        # The memory the group's kernel sees in use (the guest's in a VM; the host's otherwise).
        info = dict(p.stdout.readline().split(":")[-2:] for _ in range(2))
        kib = {k.split()[-1]: int(v.split()[0]) for k, v in info.items()}
        guest.append((kib["MemTotal"] - kib["MemAvailable"]) / 1024)
        mem.append((shmem() - before) / 1024)
        rss.append(group_rss(os.environ["COFFER_HOME"]))
        p.wait()
    med = statistics.median
    print(f"{img:6} ({isolation}) first line: median {med(times):7.1f} ms  min {min(times):7.1f}  max {max(times):7.1f}"
          f"   host: RSS {med(rss):6.1f} MiB, tmpfs {med(mem):5.1f} MiB"
          + (f"   guest in use {med(guest):6.1f} MiB" if isolation == "vm" else "") + f"  (n={n})")
PY
