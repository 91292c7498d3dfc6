#!/usr/bin/env bash
# Time from start to the container's first output line: `coffer run` (cached layers) against
# `runc run` of an equivalent bundle (same image, unpacked by umoci), side by side, N runs each.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-20}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cargo build --release -q -p coffer-cli -p coffer-agent
export COFFER_HOME="$work/home"
examples/hello/build-image.sh "$work/oci" >/dev/null
target/release/coffer image import "oci:$work/oci:latest" --name hello:latest >/dev/null
target/release/coffer policy gen examples/hello/pod.yaml -o "$work/p.rego" >/dev/null   # warms the measurement cache
target/release/coffer run examples/hello/pod.yaml >/dev/null 2>&1   # warm-up: creates the emulated root once
umoci unpack --image "$work/oci:latest" "$work/bundle" >/dev/null
python3 - "$work/bundle/config.json" <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))
c["process"]["terminal"] = False
c["process"]["args"] = ["/bin/sh", "/app/hello.sh"]
c["process"]["env"] = ["PATH=/bin", "GREETING=bonjour"]
c["process"]["cwd"] = "/app"
json.dump(c, open(sys.argv[1], "w"))
PY
python3 - "$N" "$work" <<'PY'
import os, statistics, subprocess, sys, time
n, work = int(sys.argv[1]), sys.argv[2]
def first_line(cmd):
    t = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    p.stdout.readline()
    dt = time.perf_counter() - t
    p.wait()
    return dt * 1e3
coffer, alone, runc = [], [], []
# Round robin, so that whatever else the machine does falls on all three alike. runc's bundle
# gets a network namespace with loopback only: the same as --network none.
for i in range(n):
    coffer.append(first_line(["target/release/coffer", "run", "examples/hello/pod.yaml"]))
    alone.append(first_line(["target/release/coffer", "run", "--network", "none", "examples/hello/pod.yaml"]))
    runc.append(first_line(["runc", "run", "--bundle", f"{work}/bundle", f"bench{i}"]))
rows = (("coffer run", coffer), ("  --network none", alone), ("runc run", runc))
for name, xs in rows:
    print(f"{name:16} first line: median {statistics.median(xs):6.1f} ms  min {min(xs):6.1f}  max {max(xs):6.1f}  (n={n})")
med = statistics.median
print(f"ratio (median): {med(coffer) / med(runc):.2f}x, with --network none {med(alone) / med(runc):.2f}x")
PY
echo "phases of one coffer run:"
COFFER_TIMING=1 target/release/coffer run examples/hello/pod.yaml 2>&1 >/dev/null | grep coffer-timing
