#!/usr/bin/env bash
# Build a real Debian application image: bookworm with nginx-light (mmdebstrap through the host's
# apt mirror), packed by umoci into one layer, serving /var/www/html (with coffer.txt) on port 80,
# its access and error logs linked to stdout and stderr (as Docker's nginx image does) for `coffer logs`.
#
#   examples/nginx/build-image.sh OUT_DIR      -> OCI layout at OUT_DIR, tag "latest"
set -euo pipefail
out=${1:?usage: build-image.sh OUT_DIR}
for tool in mmdebstrap umoci; do
  command -v "$tool" >/dev/null || { echo "build-image.sh: '$tool' is missing (apt-get install $tool)" >&2; exit 1; }
done
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mmdebstrap --quiet --variant=apt --include=nginx-light \
  --customize-hook='echo "hello from nginx in a confidential group" > "$1/var/www/html/coffer.txt"' \
  --customize-hook='ln -sf /dev/stdout "$1/var/log/nginx/access.log"; ln -sf /dev/stderr "$1/var/log/nginx/error.log"' \
  bookworm "$work/rootfs.tar"
rm -rf "$out"
umoci init --layout "$out"
umoci new --image "$out:latest"
umoci unpack --image "$out:latest" "$work/bundle" >/dev/null
# Device nodes are the runtime's business (runc makes /dev).
tar -xpf "$work/rootfs.tar" -C "$work/bundle/rootfs" --numeric-owner --exclude='./dev/*'
umoci repack --image "$out:latest" "$work/bundle" >/dev/null
umoci config --image "$out:latest" \
  --config.cmd /usr/sbin/nginx --config.cmd -g --config.cmd 'daemon off;' \
  --config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  --config.workingdir / --config.user 0:0 >/dev/null
umoci gc --layout "$out"
echo "built $out:latest"
