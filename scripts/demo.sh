#!/usr/bin/env bash
# Newcomer's first run: install dependencies, build, start berthd on a throwaway root, and drive it
# with containerd's own `ctr` client. Run as root. Stops berthd and removes the root on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "run as root (berthd manages mounts and cgroups)" >&2; exit 1; }
scripts/deps.sh
cargo build --release -p berthd
dir=$(mktemp -d /tmp/berth-demo.XXXXXX)
sock="$dir/berthd.sock"
target/release/berthd --root "$dir/root" --state "$dir/state" --address "$sock" >"$dir/berthd.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.05; done
run() { echo "\$ $*"; "$@"; echo; }
ctr() { command ctr -a "$sock" "$@"; }
run ctr version
run ctr plugins ls
run ctr namespaces create demo team=berth
run ctr namespaces ls
echo "hello from berth" > "$dir/hello.txt"
run ctr -n demo content ingest hello-ref < "$dir/hello.txt"
run ctr -n demo content ls
run ctr -n demo content get "sha256:$(sha256sum "$dir/hello.txt" | cut -d' ' -f1)"
run ctr -n demo leases create --id demo-lease --expires 1h
run ctr -n demo leases ls
echo "berthd log: $dir/berthd.log (removed on exit)"
