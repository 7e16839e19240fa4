#!/usr/bin/env bash
# `bench/cri-berth.sh COMMAND [ARG…]`: berthd with its CRI on a throwaway root and socket, for as
# long as COMMAND runs; COMMAND gets the endpoint in $CRI_ENDPOINT, like scripts/critest/peer.sh
# gives containerd 2.4's (so `bench/cri-berth.sh bench/cri.sh` is berthd's side of issue 14's
# figures). Same fixtures registry (its hosts.toml dir as `[cri] registry_config_path`), same kind
# of network: a bridge + host-local + portmap conflist over Debian's CNI plugins, on a bridge and
# subnet of its own. berthd, berth-shim come from target/$PROFILE (default release). Everything it
# starts is removed on exit: pods (CNI DEL through the CRI), the daemon, leftover shims and
# holders of this root, mounts under the root, the bridge. A benchmark helper, never run by CI.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
TEST_BIN=${BERTH_TEST_BIN:-/usr/local/lib/berth-test/bin}
bin=$here/../target/${PROFILE:-release}
BRIDGE=${BERTH_CRI_BENCH_BRIDGE:-bcriberth0}
SUBNET=${BERTH_CRI_BENCH_SUBNET:-10.252.0.0/22}

[ $# -gt 0 ] || { echo "usage: $0 COMMAND [ARG...]" >&2; exit 2; }
[ -x "$bin/berthd" ] && [ -x "$bin/berth-shim" ] ||
  { echo "build berthd and berth-shim first (cargo build --release -p berthd -p berth-shim)" >&2; exit 1; }

# shellcheck source=../scripts/critest/fixtures.sh
source "$here/../scripts/critest/fixtures.sh"
root=$(mktemp -d /tmp/berth-cri-bench.XXXXXX)
berthd_pid=

cleanup() {
  set +e
  if [ -n "$berthd_pid" ]; then
    "$TEST_BIN/crictl" -r "unix://$root/cri.sock" rmp -fa >/dev/null 2>&1
    kill "$berthd_pid" 2>/dev/null
    wait "$berthd_pid" 2>/dev/null
  fi
  # Shims and pod holders outlive berthd by design: end the ones under this root only.
  local pid
  for pid in $(pgrep -f "berth-shim .*$root/" || true) $(pgrep -f "cri-holder .*$root/" || true); do
    kill -9 "$pid" 2>/dev/null
  done
  awk -v r="$root" 'index($2, r) == 1 { print $2 }' /proc/self/mounts | sort -r |
    while read -r m; do umount -l "$m"; done
  ip link del "$BRIDGE" 2>/dev/null
  rm -rf /var/lib/cni/networks/berth-cri-bench
  rm -rf "$root"
  fixtures_down
}
trap cleanup EXIT
fixtures_up

mkdir -p "$root/net.d"
fixtures_conflist "$root/net.d/10-berth-cri-bench.conflist" berth-cri-bench "$BRIDGE" "$SUBNET"
cat >"$root/config.toml" <<TOML
root = "$root/root"
state = "$root/state"

[grpc]
address = "$root/berthd.sock"

[cri]
address = "$root/cri.sock"
cni_conf_dir = "$root/net.d"
cni_bin_dirs = ["/usr/lib/cni", "/opt/cni/bin"]
registry_config_path = "$CRITEST_HOSTS_DIR"
TOML

PATH="$bin:$PATH" "$bin/berthd" --config "$root/config.toml" --log-level warn \
  >"$root/berthd.log" 2>&1 &
berthd_pid=$!
export CRI_ENDPOINT=unix://$root/cri.sock
for _ in $(seq 200); do
  "$TEST_BIN/crictl" -r "$CRI_ENDPOINT" version >/dev/null 2>&1 && break
  kill -0 "$berthd_pid" 2>/dev/null || break
  sleep 0.1
done
if ! "$TEST_BIN/crictl" -r "$CRI_ENDPOINT" version >/dev/null 2>&1; then
  echo "cri-berth: berthd did not serve the CRI; log:" >&2
  tail -50 "$root/berthd.log" >&2
  exit 1
fi
export BERTH_CRITEST_FIXTURES_UP=1
export BERTH_CRI_DAEMON_PID=$berthd_pid
export BERTH_CRI_SHIM_PATTERN="berth-shim .*$root/"
status=0
"$@" || status=$?
exit $status
