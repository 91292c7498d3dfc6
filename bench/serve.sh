#!/usr/bin/env bash
# Load on `coffer serve`: CLIENTS concurrent clients, each looping attest (emulated evidence) +
# release over loopback for SECONDS, server and load generator on this machine's cores.
# usage: bench/serve.sh [CLIENTS...]   (default: 64 16); SECONDS=10 by default.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_=${SECONDS_:-10}
clients=("$@"); [ ${#clients[@]} -gt 0 ] || clients=(64 16)
work=$(mktemp -d)
server=
# On any exit: stop the server, wait for it, remove the temporary directory, and exit with the
# script's own status. `wait` on the killed server returns 143 (SIGTERM); under `set -e` that used
# to end the trap before `rm`, leaving $work behind and making every run exit 143.
cleanup() {
  local status=$?
  set +e
  if [ -n "$server" ]; then
    kill "$server" 2>/dev/null
    wait "$server" 2>/dev/null
  fi
  rm -rf "$work"
  exit "$status"
}
trap cleanup EXIT
unset RUST_BACKTRACE   # costs ~30% on a server
cargo build --release -q --bin coffer -p coffer-cli
cargo build --release -q --example load -p coffer-server
export COFFER_HOME="$work/home"
port=$((20000 + RANDOM % 20000))
target/release/coffer serve --allow-emulated --listen "127.0.0.1:$port" >"$work/serve.log" 2>&1 &
server=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/certs" >/dev/null && break; sleep 0.1; done
# Warm-up: development keys, chain cache, connection pool.
target/release/examples/load "http://127.0.0.1:$port" "$COFFER_HOME" 8 2 >/dev/null
for c in "${clients[@]}"; do
  target/release/examples/load "http://127.0.0.1:$port" "$COFFER_HOME" "$c" "$SECONDS_"
done
