#!/usr/bin/env bash
# Build a real Debian application image: bookworm with redis-server (mmdebstrap through the host's
# apt mirror), packed by umoci into one layer, serving on port 6379 as the redis user.
#
#   examples/redis/build-image.sh OUT_DIR      -> OCI layout at OUT_DIR, tag "latest"
set -euo pipefail
out=${1:?usage: build-image.sh OUT_DIR}
for tool in mmdebstrap umoci; do
  command -v "$tool" >/dev/null || { echo "build-image.sh: '$tool' is missing (apt-get install $tool)" >&2; exit 1; }
done
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mmdebstrap --quiet --variant=apt --include=redis-server bookworm "$work/rootfs.tar"
rm -rf "$out"
umoci init --layout "$out"
umoci new --image "$out:latest"
umoci unpack --image "$out:latest" "$work/bundle" >/dev/null
# Device nodes are the runtime's business (runc makes /dev).
tar -xpf "$work/rootfs.tar" -C "$work/bundle/rootfs" --numeric-owner --exclude='./dev/*'
umoci repack --image "$out:latest" "$work/bundle" >/dev/null
# As Docker's redis image runs it: in the foreground, reachable from outside the group, as the
# image's own `redis` user (resolved from the image's /etc/passwd by the policy generator).
umoci config --image "$out:latest" \
  --config.cmd redis-server --config.cmd --protected-mode --config.cmd no \
  --config.cmd --bind --config.cmd 0.0.0.0 --config.cmd --dir --config.cmd /tmp \
  --config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  --config.workingdir / --config.user redis >/dev/null
umoci gc --layout "$out"
echo "built $out:latest"
