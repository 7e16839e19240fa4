#!/usr/bin/env bash
# `bench/cri-floor.sh [RUNS]`: the part of a CRI pod start no daemon can save, measured alone.
#
# A `crictl run` of busybox (bench/cri.sh's pod start) makes every runtime run the same outside
# programs: crictl itself, the pod's CNI chain (bench/cri.sh's conflist: bridge with host-local
# IPAM and ipMasq, then portmap) into a fresh network namespace, and `runc create` + `runc start`
# of the container. This script runs exactly those, RUNS times each (default 40), with no daemon:
#  - crictl: `crictl --version` (the process start, no RPC);
#  - CNI ADD: bridge, then portmap with bridge's result, into a netns made by `ip netns add`;
#  - runc create, runc start: a busybox-static rootfs in a bundle from `runc spec`, `sleep 3600`,
#    joined to that netns; then `runc delete -f`, CNI DEL, netns removed (not timed).
# It prints the median of each and their sum, the floor: a daemon's pod start can get near it,
# never under it. A benchmark, never run by CI; it removes everything it creates.
set -euo pipefail
RUNS=${1:-40}
TEST_BIN=${BERTH_TEST_BIN:-/usr/local/lib/berth-test/bin}
CNI_BIN=${CNI_BIN:-/usr/lib/cni}
BRIDGE=bcrifloor0
SUBNET=10.253.0.0/22
NET=berth-cri-floor
BUSYBOX=$(command -v busybox) || { echo "apt-get install busybox-static" >&2; exit 1; }
[ -x "$CNI_BIN/bridge" ] || { echo "apt-get install containernetworking-plugins" >&2; exit 1; }

work=$(mktemp -d /tmp/berth-cri-floor.XXXXXX)
cleanup() {
  set +e
  runc --root "$work/runc" delete -f floor >/dev/null 2>&1
  ip netns del "$NET-ns" 2>/dev/null
  ip link del "$BRIDGE" 2>/dev/null
  # portmap and bridge leave their per-container chains only on a failed DEL; host-local's leases.
  rm -rf "/var/lib/cni/networks/$NET"
  rm -rf "$work"
}
trap cleanup EXIT

mkdir -p "$work/bundle/rootfs/bin" "$work/runc"
cp "$BUSYBOX" "$work/bundle/rootfs/bin/busybox"
ln -s busybox "$work/bundle/rootfs/bin/sleep"
(cd "$work/bundle" && runc spec)
python3 - "$work/bundle/config.json" "/var/run/netns/$NET-ns" <<'EOF'
import json, sys
path, netns = sys.argv[1], sys.argv[2]
spec = json.load(open(path))
spec["process"]["terminal"] = False
spec["process"]["args"] = ["sleep", "3600"]
for ns in spec["linux"]["namespaces"]:
    if ns["type"] == "network":
        ns["path"] = netns
json.dump(spec, open(path, "w"))
EOF

bridge_conf='{"cniVersion": "1.0.0", "name": "'$NET'", "type": "bridge", "bridge": "'$BRIDGE'",
  "isGateway": true, "ipMasq": true, "hairpinMode": true,
  "ipam": {"type": "host-local", "ranges": [[{"subnet": "'$SUBNET'"}]], "routes": [{"dst": "0.0.0.0/0"}]}}'
portmap_conf() { # PREV_RESULT
  echo '{"cniVersion": "1.0.0", "name": "'$NET'", "type": "portmap",
    "capabilities": {"portMappings": true}, "runtimeConfig": {"portMappings": []},
    "prevResult": '"$1"'}'
}
cni() { # COMMAND PLUGIN CONFIG
  CNI_COMMAND=$1 CNI_CONTAINERID=floor CNI_NETNS=/var/run/netns/$NET-ns CNI_IFNAME=eth0 \
    CNI_PATH=$CNI_BIN "$CNI_BIN/$2" <<<"$3"
}
ms() { echo "$1 $2" | awk '{ printf "%.1f\n", ($2 - $1) * 1000 }'; }
median() {
  sort -n | awk '{ v[NR] = $1 } END { printf "%.1f", (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

: >"$work/crictl" >"$work/cni" >"$work/create" >"$work/start"
for _ in $(seq "$RUNS"); do
  t0=$EPOCHREALTIME
  "$TEST_BIN/crictl" --version >/dev/null
  t1=$EPOCHREALTIME
  ms "$t0" "$t1" >>"$work/crictl"

  ip netns add "$NET-ns"
  t0=$EPOCHREALTIME
  result=$(cni ADD bridge "$bridge_conf")
  cni ADD portmap "$(portmap_conf "$result")" >/dev/null
  t1=$EPOCHREALTIME
  ms "$t0" "$t1" >>"$work/cni"

  t0=$EPOCHREALTIME
  runc --root "$work/runc" create --bundle "$work/bundle" floor </dev/null >/dev/null 2>&1
  t1=$EPOCHREALTIME
  runc --root "$work/runc" start floor
  t2=$EPOCHREALTIME
  ms "$t0" "$t1" >>"$work/create"
  ms "$t1" "$t2" >>"$work/start"

  runc --root "$work/runc" delete -f floor
  cni DEL portmap "$(portmap_conf "$result")" >/dev/null
  cni DEL bridge "$bridge_conf" >/dev/null
  ip netns del "$NET-ns"
done

c=$(median <"$work/crictl")
n=$(median <"$work/cni")
r=$(median <"$work/create")
s=$(median <"$work/start")
echo "runs: $RUNS (medians, ms)"
echo "crictl start:              $c"
echo "CNI ADD (bridge, portmap): $n"
echo "runc create:               $r"
echo "runc start:                $s"
echo "floor (sum):               $(echo "$c $n $r $s" | awk '{ printf "%.1f", $1 + $2 + $3 + $4 }')"
