#!/usr/bin/env bash
# Layer hash (tar -> compact ext4 -> dm-verity root) throughput, coffer-ext4 against hcsshim's own
# tar2ext4 (Go, built from /work/shared/reference by its build.sh), same tars, same run:
#   (1) a Debian bookworm minbase rootfs (mmdebstrap; skipped if it cannot be built),
#   (2) /usr/share and /usr/bin of this machine (many small files),
#   (3) one 1 GiB random file (data-bound; peak RSS shows memory does not grow with the data).
# Each tar is read once before timing (page cache warm for both); each tool runs 3 times and the
# best time counts. Both must print the same root. BENCH_DIR keeps the tars between runs.
set -euo pipefail
cd "$(dirname "$0")/.."
work=${BENCH_DIR:-$(mktemp -d /var/tmp/coffer-ext4-bench.XXXX)}
trap '[ -z "${BENCH_DIR:-}" ] && rm -rf "$work"' EXIT
ref=${COFFER_TAR2EXT4_REF:-$(cd .. && pwd)/shared/reference/tar2ext4-go}
go_tool=$("$ref/build.sh")
cargo build --release -q -p coffer-ext4 --example layer-root
target=${CARGO_TARGET_DIR:-target}
ours="$target/release/examples/layer-root"

if [ ! -s "$work/rootfs.tar" ] && command -v mmdebstrap >/dev/null; then
  mmdebstrap --variant=minbase --mode=root -q bookworm "$work/rootfs.tar" >/dev/null 2>&1 || rm -f "$work/rootfs.tar"
fi
[ -s "$work/usr.tar" ] || tar -C / -cf "$work/usr.tar" usr/share usr/bin 2>/dev/null || true
if [ ! -s "$work/big.tar" ]; then
  mkdir -p "$work/big" && head -c $((1 << 30)) /dev/urandom > "$work/big/data.bin"
  tar -C "$work/big" -cf "$work/big.tar" data.bin && rm -rf "$work/big"
fi

best() { # best wall time of 3 runs of "$@" and their peak RSS, prints "seconds root MB"
  python3 - "$@" <<'PY'
import resource, subprocess, sys, time
best, root = None, None
for _ in range(3):
    t = time.perf_counter()
    out = subprocess.run(sys.argv[1:], check=True, capture_output=True, text=True).stdout.strip()
    dt = time.perf_counter() - t
    best = dt if best is None else min(best, dt)
    root = out
rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024
print(f"{best:.3f} {root} {rss}")
PY
}

for t in rootfs usr big; do
  tar="$work/$t.tar"
  [ -s "$tar" ] || { echo "$t: skipped (no tar)"; continue; }
  cat "$tar" > /dev/null
  mb=$(( $(stat -c %s "$tar") / 1000000 ))
  read -r gs groot grss < <(best "$go_tool" "$tar")
  read -r cs croot crss < <(best "$ours" "$tar")
  [ "$groot" = "$croot" ] || { echo "$t: ROOTS DIFFER: hcsshim $groot coffer $croot"; exit 1; }
  echo "$t.tar ($mb MB, $(tar -tf "$tar" | wc -l) entries): hcsshim ${gs}s ($(python3 -c "print(round($mb/$gs))") MB/s, peak RSS ${grss} MB)  coffer-ext4 ${cs}s ($(python3 -c "print(round($mb/$cs))") MB/s, peak RSS ${crss} MB)  speedup $(python3 -c "print(round($gs/$cs,1))")x  root $croot"
done
