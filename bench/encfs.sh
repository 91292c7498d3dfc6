#!/usr/bin/env bash
# Read throughput of the same 256 MiB file through: coffer's encrypted mount (LUKS2 + FUSE block
# file + loop ext4), gocryptfs, and the plain file. Sequential (dd, 1 MiB) and 4 KiB random reads,
# page cache dropped before each run.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q --bin coffer -p coffer-cli
w=$(mktemp -d /var/tmp/coffer-encfs-bench.XXXX)
cleanup() { umount "$w/gmnt" 2>/dev/null || true; kill "${cpid:-0}" 2>/dev/null || true; sleep 0.5; rm -rf "$w"; }
trap cleanup EXIT
mkdir -p "$w/src" "$w/cmnt" "$w/gcipher" "$w/gmnt"
head -c $((256 << 20)) /dev/urandom > "$w/src/data.bin"
head -c 32 /dev/urandom > "$w/key"
target/release/coffer encfs create --from "$w/src" --key-file "$w/key" -o "$w/vol.img" --size-mib 320 >/dev/null
target/release/coffer encfs mount "$w/vol.img" --key-file "$w/key" "$w/cmnt" >/dev/null & cpid=$!
for i in $(seq 1 100); do [ -f "$w/cmnt/data.bin" ] && break; sleep 0.1; done
head -c 32 /dev/urandom | base64 > "$w/gpass"
gocryptfs -q -init -passfile "$w/gpass" "$w/gcipher"
gocryptfs -q -passfile "$w/gpass" "$w/gcipher" "$w/gmnt"
cp "$w/src/data.bin" "$w/gmnt/data.bin"
sync
python3 - "$w" <<'PY'
import os, random, sys, time
w = sys.argv[1]
def drop():
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")
def seq(path):
    drop()
    t = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        n = 0
        while True:
            b = f.read(1 << 20)
            if not b:
                break
            n += len(b)
    return n / (1 << 20) / (time.perf_counter() - t)
def rnd(path, count=20000):
    drop()
    size = os.path.getsize(path)
    rng = random.Random(7)
    fd = os.open(path, os.O_RDONLY)
    t = time.perf_counter()
    for _ in range(count):
        os.pread(fd, 4096, rng.randrange(0, size // 4096) * 4096)
    os.close(fd)
    dt = time.perf_counter() - t
    return count * 4096 / (1 << 20) / dt, count / dt
for name, p in (("coffer encfs", f"{w}/cmnt/data.bin"), ("gocryptfs", f"{w}/gmnt/data.bin"), ("plain file", f"{w}/src/data.bin")):
    s = [seq(p) for _ in range(2)]
    r = rnd(p)
    print(f"{name:13} sequential {max(s):7.1f} MiB/s   4K random {r[0]:6.1f} MiB/s ({r[1]:7.0f} reads/s)")
PY
