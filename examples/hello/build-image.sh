#!/usr/bin/env bash
# Build the example image into an OCI layout with real tools: busybox from Debian's busybox-static,
# packed by umoci. Two layers: busybox (base), then the app script.
#
#   examples/hello/build-image.sh OUT_DIR      -> OCI layout at OUT_DIR, tag "latest"
set -euo pipefail
out=${1:?usage: build-image.sh OUT_DIR}
busybox=$(command -v busybox || true)
for tool in umoci; do
  command -v "$tool" >/dev/null || { echo "build-image.sh: '$tool' is missing (apt-get install umoci)" >&2; exit 1; }
done
if [ -z "$busybox" ] || ! file -L "$busybox" 2>/dev/null | grep -q 'statically linked'; then
  busybox=/bin/busybox
fi
[ -x "$busybox" ] || { echo "build-image.sh: busybox is missing (apt-get install busybox-static)" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
rm -rf "$out"
umoci init --layout "$out"
umoci new --image "$out:latest"

# Layer 1: a static busybox and its applet links.
umoci unpack --rootless --image "$out:latest" "$work/bundle" >/dev/null
root="$work/bundle/rootfs"
mkdir -p "$root/bin" "$root/tmp" "$root/etc" "$root/app"
cp "$busybox" "$root/bin/busybox"
for applet in sh echo cat ls sleep env id pwd true false wget printf; do
  ln -sf busybox "$root/bin/$applet"
done
echo 'root:x:0:0:root:/:/bin/sh' > "$root/etc/passwd"
echo 'root:x:0:' > "$root/etc/group"
umoci repack --image "$out:latest" "$work/bundle" >/dev/null
rm -rf "$work/bundle"

# Layer 2: the application.
umoci unpack --rootless --image "$out:latest" "$work/bundle" >/dev/null
cat > "$work/bundle/rootfs/app/hello.sh" <<'APP'
#!/bin/sh
echo "hello from a confidential container"
echo "GREETING=${GREETING:-unset}"
APP
chmod 0755 "$work/bundle/rootfs/app/hello.sh"
umoci repack --image "$out:latest" "$work/bundle" >/dev/null

umoci config --image "$out:latest" \
  --config.entrypoint /bin/sh --config.cmd /app/hello.sh \
  --config.env PATH=/bin --config.env GREETING=hello \
  --config.workingdir /app --config.user 0:0 >/dev/null
umoci gc --layout "$out"
echo "built $out:latest"
