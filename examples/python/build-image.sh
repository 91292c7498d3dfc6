#!/usr/bin/env bash
# Build a real Debian application image: bookworm with python3 (mmdebstrap through the host's
# apt mirror), packed by umoci into one layer, running python3 as root.
#
#   examples/python/build-image.sh OUT_DIR      -> OCI layout at OUT_DIR, tag "latest"
set -euo pipefail
out=${1:?usage: build-image.sh OUT_DIR}
for tool in mmdebstrap umoci; do
  command -v "$tool" >/dev/null || { echo "build-image.sh: '$tool' is missing (apt-get install $tool)" >&2; exit 1; }
done
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mmdebstrap --quiet --variant=apt --include=python3 bookworm "$work/rootfs.tar"
rm -rf "$out"
umoci init --layout "$out"
umoci new --image "$out:latest"
umoci unpack --image "$out:latest" "$work/bundle" >/dev/null
# Device nodes are the runtime's business (runc makes /dev).
tar -xpf "$work/rootfs.tar" -C "$work/bundle/rootfs" --numeric-owner --exclude='./dev/*'
umoci repack --image "$out:latest" "$work/bundle" >/dev/null
umoci config --image "$out:latest" --config.cmd python3 \
  --config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  --config.workingdir / >/dev/null
umoci gc --layout "$out"
echo "built $out:latest"
