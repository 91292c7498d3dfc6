#!/usr/bin/env bash
# A VM group's start against the VM floor, side by side, N runs each: time to the first output
# line of `coffer run --isolation vm` (hello group) and time to the one line a bare QEMU boot of
# the same kernel prints from a one-line initramfs (busybox sh), same QEMU flags (microvm, TCG
# unless KVM is usable, the group's memory and vCPUs: 512 MiB, 2). Then one group's phases: the launcher's
# (COFFER_TIMING) and the guest's own `serving` line from its console; and QEMU's RSS.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-3}
work=$(mktemp -d)
trap 'target/release/coffer rm --force hello >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
cargo build --release -q -p coffer-cli -p coffer-agent
export COFFER_HOME="$work/home"
C=target/release/coffer
examples/hello/build-image.sh "$work/oci" >/dev/null
$C image import "oci:$work/oci:latest" --name hello:latest >/dev/null
$C policy gen examples/hello/pod.yaml -o "$work/p.rego" >/dev/null   # measures the layers once
uvm=$($C uvm build)
kernel="$uvm/vmlinux"; [ -f "$kernel" ] || kernel="$uvm/vmlinuz"
# The floor's initramfs: busybox (static) as /bin/sh, and an init that prints one line.
python3 - "$work/bare.cpio" <<'PY'
import os, sys
def entry(name, mode, data=b"", nlink=1, rdev=(0, 0)):
    hdr = "070701" + "".join(f"{v:08x}" for v in (
        0, mode, 0, 0, nlink, 0, len(data), 0, 0, rdev[0], rdev[1], len(name) + 1, 0))
    b = hdr.encode() + name.encode() + b"\0"
    b += b"\0" * (-len(b) % 4) + data
    return b + b"\0" * (-len(b) % 4)
out = entry("bin", 0o40755, nlink=2) + entry("dev", 0o40755, nlink=2)
out += entry("bin/busybox", 0o100755, open("/bin/busybox", "rb").read())
out += entry("bin/sh", 0o120777, b"busybox")
out += entry("dev/console", 0o20600, rdev=(5, 1))
out += entry("init", 0o100755, b"#!/bin/sh\necho coffer-bare-init\n")
out += entry("TRAILER!!!", 0)
out += b"\0" * (-len(out) % 512)
open(sys.argv[1], "wb").write(out)
PY
python3 - "$N" "$work" "$C" "$kernel" <<'PY'
import os, statistics, subprocess, sys, time
n, work, c, kernel = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
mhz = next((float(l.split(":")[1]) for l in open("/proc/cpuinfo") if l.startswith("cpu MHz")), 2000.0)
kvm = any(os.path.exists(f"/sys/module/{m}") for m in ("kvm_amd", "kvm_intel"))
accel = ["-accel", "kvm", "-cpu", "host"] if kvm else ["-accel", "tcg", "-cpu", "max"]
append = "console=ttyS0 loglevel=3 panic=-1" + ("" if kvm else f" tsc_early_khz={int(mhz * 1000)}")
def first_line(cmd, needle=None):
    t = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    for line in p.stdout:
        if needle is None or needle in line:
            break
    dt = time.perf_counter() - t
    p.kill() if needle else None
    p.wait()
    return dt
bare_cmd = ["qemu-system-x86_64", "-M", "microvm", *accel, "-m", "512M", "-smp", "2", "-nodefaults",
            "-no-user-config", "-display", "none", "-no-reboot", "-serial", "stdio",
            "-kernel", kernel, "-initrd", f"{work}/bare.cpio", "-append", append]
bare, group = [], []
for _ in range(n):   # alternated, so both see the same machine
    bare.append(first_line(bare_cmd, b"coffer-bare-init"))
    group.append(first_line([c, "run", "--isolation", "vm", "examples/hello/pod.yaml"]))
med = statistics.median
for name, xs in (("bare QEMU boot", bare), ("coffer run vm", group)):
    print(f"{name:15} first line: median {med(xs):5.2f} s  min {min(xs):5.2f}  max {max(xs):5.2f}  (n={n})")
print(f"ratio (median): {med(group) / med(bare):.2f}x  ({'KVM' if kvm else 'TCG'})")
PY
echo "phases of one group (launcher; guest console):"
COFFER_TIMING=1 $C run --isolation vm --detach examples/hello/pod.yaml 2>&1 >/dev/null | grep coffer-timing || true
grep -h "coffer agent: serving" "$COFFER_HOME"/run/hello/console.log || true
pid=$(cat "$COFFER_HOME/run/hello/pid" 2>/dev/null || true)
[ -n "$pid" ] && grep VmRSS "/proc/$pid/status" | sed 's/^/QEMU /' || true
$C rm --force hello >/dev/null 2>&1 || true
