#!/usr/bin/env bash
# Installs what Coffer's demo and tests use on a Debian 12 machine (idempotent; needs root, which
# groups need anyway: namespaces, mounts, loop devices). README's two commands and CI run it.
set -euo pipefail

if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null; then exec sudo -E "$0" "$@"; fi
  echo "setup: run as root (groups need namespaces, mounts and loop devices)" >&2
  exit 1
fi

# Demo: runc, umoci + busybox-static (the example image), e2fsprogs (encrypted volume), util-linux
# (unshare, mount), iproute2 + iptables + containernetworking-plugins (group networks, ports).
# Tests add: cryptsetup-bin (LUKS2 interop), skopeo + docker-registry (registry pull), golang-go
# (hcsshim's reference tar2ext4), mmdebstrap + curl (a real Debian nginx image), qemu-system-x86
# (VM-isolated groups under TCG), containerd (the shim's tests start their own; no systemd),
# protobuf-compiler (containerd's gRPC API is compiled by containerd-client's build script),
# build dependencies.
packages="pkg-config libssl-dev libsqlite3-dev runc umoci busybox-static e2fsprogs util-linux
  iproute2 iptables containernetworking-plugins cryptsetup-bin skopeo docker-registry golang-go
  mmdebstrap curl postgresql-client qemu-system-x86 python3 python3-pip containerd protobuf-compiler"
if command -v apt-get >/dev/null; then
  need=""
  for p in $packages; do
    dpkg -s "$p" >/dev/null 2>&1 || need="$need $p"
  done
  if [ -n "$need" ]; then
    echo "setup: installing$need"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $need >/dev/null
  fi
else
  echo "setup: not a Debian system; install by hand: $packages" >&2
fi

# Interop tests check tokens and released keys with PyJWT and jwcrypto.
if ! python3 -c "import jwt, jwcrypto" 2>/dev/null; then
  echo "setup: installing PyJWT and jwcrypto"
  python3 -m pip install --quiet --disable-pip-version-check pyjwt cryptography jwcrypto 2>/dev/null ||
    python3 -m pip install --quiet --disable-pip-version-check --break-system-packages pyjwt cryptography jwcrypto
fi
