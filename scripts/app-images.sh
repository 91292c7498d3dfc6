#!/usr/bin/env bash
# Build the Debian application images the conformance tests run (examples/*/build-image.sh:
# nginx, redis, python, postgres) into the tests' cache, target/coffer-apps/<app>-bookworm-<hash>
# (hash: the first 16 hex digits of the build script's SHA-256, so a changed script builds anew).
# Optional: `cargo test` builds a missing image itself; CI runs this while it compiles, so the
# images are ready when net.rs starts. Two builds at a time (mmdebstrap mostly waits on the mirror).
set -euo pipefail
cd "$(dirname "$0")/.."
cache=${CARGO_TARGET_DIR:-target}/coffer-apps
mkdir -p "$cache"
build() {
  local app=$1 hash out
  hash=$(sha256sum "examples/$app/build-image.sh" | cut -c1-16)
  out="$cache/$app-bookworm-$hash"
  [ -e "$out/index.json" ] && return 0
  local t0=$SECONDS
  if bash "examples/$app/build-image.sh" "$out.building-$$" >"$cache/$app.log" 2>&1; then
    mv "$out.building-$$" "$out"
    echo "app-images: $app built in $((SECONDS - t0)) s"
  else
    rm -rf "$out.building-$$"
    echo "app-images: $app could not be built (see $cache/$app.log); the tests will try again" >&2
  fi
}
build nginx & build redis & wait
build python & build postgres & wait
