#!/usr/bin/env bash
# Newcomer's first run: install dependencies, build, start berthd on a throwaway root, and drive it
# with containerd's own `ctr` client: import a busybox image (built by berth-testkit from Debian's
# busybox-static), run a container, exec into another, pause it, kill it. Run as root. Stops
# berthd, its containers and removes the root on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "run as root (berthd manages mounts and cgroups)" >&2; exit 1; }
scripts/deps.sh
cargo build --release -p berthd -p berth-shim -p berth-testkit
dir=$(mktemp -d /tmp/berth-demo.XXXXXX)
sock="$dir/berthd.sock"
target/release/berthd --root "$dir/root" --state "$dir/state" --address "$sock" >"$dir/berthd.log" 2>&1 &
pid=$!
ctr() { command ctr -a "$sock" "$@"; }
cleanup() {
  ctr -n demo tasks kill -s SIGKILL web >/dev/null 2>&1 || true
  sleep 0.2
  ctr -n demo tasks delete web >/dev/null 2>&1 || true
  kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT
for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.05; done
run() { echo "\$ $*"; "$@"; echo; }

# A one-layer OCI image archive holding busybox and its applets: the end-to-end tests' image
# (berth-testkit), with a few more applets for the commands below.
image=docker.io/berth/busybox:demo
archive=$(target/release/busybox-oci "$dir" "$image" ls hostname id ps tr)

run ctr version
run ctr namespaces create demo team=berth
run ctr -n demo images import "$archive"
run ctr -n demo images ls
run ctr -n demo run --rm "$image" hello echo "hello from a berth container"
run ctr -n demo run -d "$image" web sh -c 'while :; do sleep 1; done'
run ctr -n demo tasks ls
run ctr -n demo tasks exec --exec-id look web sh -c 'echo "uid $(id -u), PID 1 is: $(tr "\\0" " " </proc/1/cmdline)"; ls /sys/class/net'
run ctr -n demo tasks pause web
run ctr -n demo tasks ls
run ctr -n demo tasks resume web
run ctr -n demo tasks kill -s SIGKILL web
sleep 0.2
run ctr -n demo tasks ls
run ctr -n demo tasks delete web
run ctr -n demo containers rm web
echo "berthd log: $dir/berthd.log (removed on exit)"
