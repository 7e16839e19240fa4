#!/usr/bin/env bash
# Newcomer's first run: install dependencies, build, start berthd on a throwaway root, and drive it
# with containerd's own `ctr` client: import a busybox image (built here from Debian's
# busybox-static), run a container, exec into another, pause it, kill it. Run as root. Stops
# berthd, its containers and removes the root on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "run as root (berthd manages mounts and cgroups)" >&2; exit 1; }
scripts/deps.sh
cargo build --release -p berthd -p berth-shim
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

# A one-layer OCI image archive holding busybox and its applets.
image=docker.io/berth/busybox:demo
build_busybox_archive() {
  local w="$dir/image" digest
  mkdir -p "$w/rootfs/bin" "$w/oci/blobs/sha256"
  cp /bin/busybox "$w/rootfs/bin/busybox"
  for a in sh echo cat ls hostname id sleep ps true; do ln -s busybox "$w/rootfs/bin/$a"; done
  tar -C "$w/rootfs" --owner=0 --group=0 --numeric-owner -cf "$w/layer.tar" .
  local diff_id; diff_id=$(sha256sum "$w/layer.tar" | cut -d' ' -f1)
  gzip -n "$w/layer.tar"
  blob() { digest=$(sha256sum "$1" | cut -d' ' -f1); cp "$1" "$w/oci/blobs/sha256/$digest"; }
  blob "$w/layer.tar.gz"; local layer=$digest layer_size; layer_size=$(stat -c %s "$w/layer.tar.gz")
  printf '{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/bin"],"Cmd":["sh"]},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' "$diff_id" >"$w/config.json"
  blob "$w/config.json"; local config=$digest
  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%d},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:%s","size":%d}]}' \
    "$config" "$(stat -c %s "$w/config.json")" "$layer" "$layer_size" >"$w/manifest.json"
  blob "$w/manifest.json"
  printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%d,"annotations":{"io.containerd.image.name":"%s","org.opencontainers.image.ref.name":"demo"}}]}' \
    "$digest" "$(stat -c %s "$w/manifest.json")" "$image" >"$w/oci/index.json"
  echo '{"imageLayoutVersion":"1.0.0"}' >"$w/oci/oci-layout"
  tar -C "$w/oci" -cf "$dir/busybox.tar" oci-layout index.json blobs
}
build_busybox_archive

run ctr version
run ctr namespaces create demo team=berth
run ctr -n demo images import "$dir/busybox.tar"
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
