#!/usr/bin/env bash
# Time `ctr run` of the hello image through containerd-shim-coffer-v2, `coffer run` of the same
# group (--network none), and `ctr run` with runc, in the same run, against a private containerd.
#   bench/shim.sh [BIN_DIR (default target/release)] [RUNS (default 5)]
set -euo pipefail
bin=$(realpath "${1:-target/release}"); runs=${2:-5}
work=$(mktemp -d); home=$work/home; mkdir -p "$home"
cat > "$work/config.toml" <<CFG
version = 2
root = "$work/root"
state = "$work/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$work/containerd.sock"
CFG
PATH="$bin:$PATH" COFFER_HOME=$home containerd --config "$work/config.toml" 2>"$work/containerd.log" &
ctrd=$!
trap 'kill $ctrd; wait $ctrd 2>/dev/null; rm -rf "$work"' EXIT
ctr() { command ctr --address "$work/containerd.sock" --namespace default "$@"; }
for _ in $(seq 100); do ctr version >/dev/null 2>&1 && break; sleep 0.1; done
bash "$(dirname "$0")/../examples/hello/build-image.sh" "$work/hello" >/dev/null
tar -C "$work/hello" -cf "$work/hello.tar" .
ctr image import --base-name hello "$work/hello.tar" >/dev/null
COFFER_HOME=$home "$bin/coffer" image import "oci:$work/hello:latest" --name hello:latest >/dev/null
printf 'apiVersion: v1\nkind: Pod\nmetadata:\n  name: hello\nspec:\n  restartPolicy: Never\n  containers:\n    - name: hello\n      image: hello:latest\n      env:\n        - name: GREETING\n          value: bonjour\n' > "$work/pod.yaml"
COFFER_HOME=$home "$bin/coffer" policy gen "$work/pod.yaml" -o "$work/hello.rego" >/dev/null
ann=$(base64 -w0 "$work/hello.rego")
ms() { local s e; s=$(date +%s%N); "$@" >/dev/null 2>&1 || { echo "failed: $*" >&2; exit 1; }; e=$(date +%s%N); echo $(( (e - s) / 1000000 )); }
shim() { ctr run --rm --runtime io.containerd.coffer.v2 --env GREETING=bonjour --annotation "coffer.dev/policy=$ann" hello:latest "b$1"; }
crun() { COFFER_HOME=$home "$bin/coffer" run "$work/pod.yaml" --policy "$work/hello.rego" --network none; }
runc_run() { ctr run --rm --env GREETING=bonjour hello:latest "r$1"; }
shim warm >/dev/null; crun >/dev/null 2>&1; runc_run warm >/dev/null   # layer images cached
for what in shim crun runc_run; do
  t=(); for i in $(seq "$runs"); do t+=("$(ms $what "$i")"); done
  sorted=$(printf '%s\n' "${t[@]}" | sort -n | tr '\n' ' ')
  echo "$what: ms per run (sorted): $sorted median $(printf '%s\n' "${t[@]}" | sort -n | sed -n "$(( (runs + 1) / 2 ))p")"
done
