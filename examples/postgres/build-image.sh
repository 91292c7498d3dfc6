#!/usr/bin/env bash
# Build a real Debian application image: bookworm with postgresql (mmdebstrap through the host's
# apt mirror), packed by umoci into one layer, whose server runs as the postgres user.
#
#   examples/postgres/build-image.sh OUT_DIR      -> OCI layout at OUT_DIR, tag "latest"
set -euo pipefail
out=${1:?usage: build-image.sh OUT_DIR}
for tool in mmdebstrap umoci; do
  command -v "$tool" >/dev/null || { echo "build-image.sh: '$tool' is missing (apt-get install $tool)" >&2; exit 1; }
done
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mmdebstrap --quiet --variant=apt --include=postgresql bookworm "$work/rootfs.tar"
rm -rf "$out"
umoci init --layout "$out"
umoci new --image "$out:latest"
umoci unpack --image "$out:latest" "$work/bundle" >/dev/null
# Device nodes are the runtime's business (runc makes /dev).
tar -xpf "$work/rootfs.tar" -C "$work/bundle/rootfs" --numeric-owner --exclude='./dev/*'
umoci repack --image "$out:latest" "$work/bundle" >/dev/null
# As Docker's postgres image does on first start: a fresh cluster, then the server in the
# foreground, listening on every address and trusting every client (a test database: the
# group's network is reached only through its published port), as the image's `postgres` user.
umoci config --image "$out:latest" \
  --config.cmd /bin/sh --config.cmd -c \
  --config.cmd 'initdb -D /tmp/pgdata -A trust -U postgres >/dev/null && echo "host all all all trust" >> /tmp/pgdata/pg_hba.conf && exec postgres -D /tmp/pgdata -c listen_addresses=* -c unix_socket_directories=/tmp' \
  --config.env PATH=/usr/lib/postgresql/15/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  --config.workingdir / --config.user postgres >/dev/null
umoci gc --layout "$out"
echo "built $out:latest"
