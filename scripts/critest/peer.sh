#!/usr/bin/env bash
# `scripts/critest/peer.sh COMMAND [ARG…]`: the CRI peer, containerd 2.4.2 with its CRI plugin, on
# a throwaway root with its own socket, for as long as COMMAND runs; COMMAND gets its endpoint in
# $CRI_ENDPOINT (e.g. `peer.sh scripts/critest.sh`, `peer.sh bench/cri.sh`).
# BERTH_CRI_PEER=containerd-1.6 runs Debian's containerd 1.6 (/usr/bin) with its CRI plugin instead,
# configured the same way in 1.6's config format (version 2).
#
# Its images come from the critest fixtures' loopback registry (scripts/critest/fixtures.sh, via
# `config_path`), its sandbox image is the fixtures' pause:3.10, its network a bridge +
# host-local + portmap conflist of its own over Debian's CNI plugins, its cgroups cgroupfs.
# containerd and its shim come from bench/peers.sh ($BERTH_BENCH_BIN). Everything it starts is
# removed on exit: pods (so their shims, netns, veths and per-pod iptables rules go through CNI
# DEL), the daemon, mounts under its root, its bridge.
# Not run by CI: a benchmark and fixture check, like bench/peers.sh.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
BENCH_BIN=${BERTH_BENCH_BIN:-/usr/local/lib/berth-bench/bin}
TEST_BIN=${BERTH_TEST_BIN:-/usr/local/lib/berth-test/bin}
# The bridge and subnet of the peer's pods: a /22, room for the bench's 100 containers.
BRIDGE=${BERTH_CRI_PEER_BRIDGE:-bcripeer0}
SUBNET=${BERTH_CRI_PEER_SUBNET:-10.251.0.0/22}

[ $# -gt 0 ] || { echo "usage: $0 COMMAND [ARG...]" >&2; exit 2; }
PEER=${BERTH_CRI_PEER:-containerd-2.4}
case "$PEER" in
containerd-2.4)
  [ -x "$BENCH_BIN/containerd" ] && [ -x "$BENCH_BIN/containerd-shim-runc-v2" ] ||
    "$here/../../bench/peers.sh"
  ;;
containerd-1.6) BENCH_BIN=/usr/bin ;;
*)
  echo "peer: BERTH_CRI_PEER is containerd-2.4 or containerd-1.6, not $PEER" >&2
  exit 2
  ;;
esac
[ -x "$TEST_BIN/crictl" ] || "$here/../deps-cri-tools.sh"

# shellcheck source=fixtures.sh
source "$here/fixtures.sh"
root=$(mktemp -d /tmp/berth-cri-peer.XXXXXX)
containerd_pid=

cleanup() {
  set +e
  if [ -n "$containerd_pid" ]; then
    # Through the CRI, so CNI DEL runs for every pod before the daemon goes.
    "$TEST_BIN/crictl" -r "unix://$root/containerd.sock" rmp -fa >/dev/null 2>&1
    kill "$containerd_pid" 2>/dev/null
    wait "$containerd_pid" 2>/dev/null
  fi
  # Shims outlive containerd by design: end the ones this root started (their -address).
  local pid
  for pid in $(pgrep -f "containerd-shim-runc-v2 .*-address $root/containerd.sock\$" || true); do
    kill -9 "$pid" 2>/dev/null
  done
  awk -v r="$root" 'index($2, r) == 1 { print $2 }' /proc/self/mounts | sort -r |
    while read -r m; do umount -l "$m"; done
  ip link del "$BRIDGE" 2>/dev/null
  rm -rf /var/lib/cni/networks/berth-cri-peer
  rm -rf "$root"
  fixtures_down
}
trap cleanup EXIT
fixtures_up

mkdir -p "$root/net.d"
fixtures_conflist "$root/net.d/10-berth-cri-peer.conflist" berth-cri-peer "$BRIDGE" "$SUBNET"
# The parts both versions share, then each version's CRI sections in its own config format.
cat >"$root/config.toml" <<EOF
version = $([ "$PEER" = containerd-1.6 ] && echo 2 || echo 3)
root = "$root/root"
state = "$root/state"

[grpc]
  address = "$root/containerd.sock"

[ttrpc]
  address = "$root/containerd.sock.ttrpc"

EOF
if [ "$PEER" = containerd-1.6 ]; then
  cat >>"$root/config.toml" <<EOF
[plugins."io.containerd.grpc.v1.cri"]
  disable_tcp_service = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  sandbox_image = "$CRITEST_SANDBOX_IMAGE"
  # As for 2.4 below: runc cannot lower oom_score_adj below ours here.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$root/net.d"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "$CRITEST_HOSTS_DIR"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
      SystemdCgroup = false
      BinaryName = "${BERTH_CRI_PEER_RUNTIME:-runc}"
EOF
else
  cat >>"$root/config.toml" <<EOF
[plugins."io.containerd.cri.v1.images"]
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "$CRITEST_SANDBOX_IMAGE"
  [plugins."io.containerd.cri.v1.images".registry]
    config_path = "$CRITEST_HOSTS_DIR"

[plugins."io.containerd.cri.v1.runtime"]
  # This machine's root lacks CAP_SYS_RESOURCE: runc cannot lower oom_score_adj below ours (the
  # sandbox's -998 fails in runc init with EPERM), so keep it at or above containerd's own.
  restrict_oom_score_adj = true

[plugins."io.containerd.cri.v1.runtime".cni]
  bin_dirs = ["/usr/lib/cni", "/opt/cni/bin"]
  conf_dir = "$root/net.d"

[plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
  SystemdCgroup = false
  BinaryName = "${BERTH_CRI_PEER_RUNTIME:-runc}"

[plugins."io.containerd.grpc.v1.cri"]
  disable_tcp_service = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
EOF
fi

PATH="$BENCH_BIN:$PATH" "$BENCH_BIN/containerd" --config "$root/config.toml" \
  >"$root/containerd.log" 2>&1 &
containerd_pid=$!
export CRI_ENDPOINT=unix://$root/containerd.sock
for _ in $(seq 200); do
  "$TEST_BIN/crictl" -r "$CRI_ENDPOINT" info >/dev/null 2>&1 && break
  kill -0 "$containerd_pid" 2>/dev/null || break
  sleep 0.1
done
if ! "$TEST_BIN/crictl" -r "$CRI_ENDPOINT" info >/dev/null 2>&1; then
  echo "peer: containerd did not serve the CRI; log:" >&2
  tail -50 "$root/containerd.log" >&2
  exit 1
fi
export BERTH_CRITEST_FIXTURES_UP=1 BERTH_CRI_PEER_LOG=$root/containerd.log
export BERTH_CRI_DAEMON_PID=$containerd_pid
export BERTH_CRI_SHIM_PATTERN="containerd-shim-runc-v2 .*-address $root/containerd.sock"
status=0
"$@" || status=$?
exit $status
