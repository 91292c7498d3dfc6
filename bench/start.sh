#!/usr/bin/env bash
# Group start with cached layer images, small image against a big one: time to the first output
# line of `coffer run`, and the host memory a running group holds in tmpfs (Shmem), N runs each.
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
    command: ["/bin/sh", "-c", "echo ready; sleep 2"]
POD
  $C policy gen "$work/$img.yaml" -o "$work/$img.rego" >/dev/null   # measures, builds layer images
done
[ "$ISOLATION" = vm ] && $C uvm build >/dev/null
python3 - "$N" "$work" "$C" "$ISOLATION" $images <<'PY'
import statistics, subprocess, sys, time
n, work, c, isolation, images = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:]
def shmem():
    for l in open("/proc/meminfo"):
        if l.startswith("Shmem:"):
            return int(l.split()[1])
for img in images:
    times, mem = [], []
    for _ in range(n):
        before = shmem()
        t = time.perf_counter()
        p = subprocess.Popen([c, "run", f"{work}/{img}.yaml", "--policy", f"{work}/{img}.rego",
                              "--isolation", isolation],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        p.stdout.readline()
        times.append((time.perf_counter() - t) * 1e3)
        mem.append((shmem() - before) / 1024)
        p.wait()
    print(f"{img:6} ({isolation}) first line: median {statistics.median(times):7.1f} ms  min {min(times):7.1f}  max {max(times):7.1f}"
          f"   tmpfs held while running: median {statistics.median(mem):6.1f} MiB  (n={n})")
PY
