#!/usr/bin/env bash
# Layer measurement throughput, side by side with veritysetup, on the same bytes.
#   (1) one 1 GiB input: coffer-verity (example verity-root) vs `veritysetup format --no-superblock`
#   (2) an OCI layout with 4 uncompressed 256 MiB layers: `coffer image measure oci:DIR` (digest,
#       diff_id and dm-verity root of every layer, layers in parallel) vs veritysetup on each layer.
set -euo pipefail
cd "$(dirname "$0")/.."
work=${BENCH_DIR:-$(mktemp -d)}
trap '[ -z "${BENCH_DIR:-}" ] && rm -rf "$work"' EXIT
cargo build --release -q --bin coffer -p coffer-cli
cargo build --release -q -p coffer-verity --example verity-root
salt=$(printf '0%.0s' {1..64})
secs() { python3 -c "import time,sys; s=time.perf_counter(); import subprocess; subprocess.run(sys.argv[1:],check=True,stdout=subprocess.DEVNULL); print(f'{time.perf_counter()-s:.3f}')" "$@"; }

head -c $((1024*1024*1024)) /dev/urandom > "$work/one.bin"
sync
cat "$work/one.bin" > /dev/null
for i in 1 2 3; do
  v=$(secs veritysetup format --no-superblock --salt="$salt" "$work/one.bin" "$work/one.hash")
  c=$(secs target/release/examples/verity-root "$work/one.bin")
  echo "1GiB run $i: veritysetup ${v}s ($(python3 -c "print(round(1024/$v))") MiB/s)  coffer-verity ${c}s ($(python3 -c "print(round(1024/$c))") MiB/s)"
done
[ "$(veritysetup format --no-superblock --salt="$salt" "$work/one.bin" "$work/one.hash" | awk '/Root hash/{print $3}')" = "$(target/release/examples/verity-root "$work/one.bin")" ] && echo "roots equal"
rm -f "$work/one.bin" "$work/one.hash"

# Four uncompressed layers in an OCI layout.
mkdir -p "$work/oci/blobs/sha256"
echo '{"imageLayoutVersion":"1.0.0"}' > "$work/oci/oci-layout"
layers=""; diffs=""
for i in 1 2 3 4; do
  head -c $((256*1024*1024)) /dev/urandom > "$work/l$i"
  d=$(sha256sum "$work/l$i" | cut -d' ' -f1)
  mv "$work/l$i" "$work/oci/blobs/sha256/$d"
  layers="$layers{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar\",\"digest\":\"sha256:$d\",\"size\":$((256*1024*1024))},"
  diffs="$diffs\"sha256:$d\","
done
cfg="{\"architecture\":\"amd64\",\"os\":\"linux\",\"rootfs\":{\"type\":\"layers\",\"diff_ids\":[${diffs%,}]}}"
cd_=$(printf '%s' "$cfg" | sha256sum | cut -d' ' -f1); printf '%s' "$cfg" > "$work/oci/blobs/sha256/$cd_"
man="{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"config\":{\"mediaType\":\"application/vnd.oci.image.config.v1+json\",\"digest\":\"sha256:$cd_\",\"size\":${#cfg}},\"layers\":[${layers%,}]}"
md=$(printf '%s' "$man" | sha256sum | cut -d' ' -f1); printf '%s' "$man" > "$work/oci/blobs/sha256/$md"
echo "{\"schemaVersion\":2,\"manifests\":[{\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"digest\":\"sha256:$md\",\"size\":${#man}}]}" > "$work/oci/index.json"
cat "$work"/oci/blobs/sha256/* > /dev/null
export COFFER_HOME="$work/home"
for i in 1 2; do
  rm -rf "$COFFER_HOME"
  c=$(secs target/release/coffer image measure "oci:$work/oci")
  s=$(python3 -c "import time,subprocess,glob,sys
t=time.perf_counter()
for f in sorted(glob.glob('$work/oci/blobs/sha256/*')):
    import os
    if os.path.getsize(f) > 1<<20: subprocess.run(['veritysetup','format','--no-superblock','--salt=$salt',f,'$work/h'],check=True,stdout=subprocess.DEVNULL)
print(f'{time.perf_counter()-t:.3f}')")
  echo "4x256MiB run $i: veritysetup (sequential, root only) ${s}s ($(python3 -c "print(round(1024/$s))") MiB/s)  coffer image measure ${c}s ($(python3 -c "print(round(1024/$c))") MiB/s)"
done
