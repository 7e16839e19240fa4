#!/usr/bin/env bash
# `bench/cli.sh`: issue 13's CLI figures, berthd beside Debian's containerd 1.6 (same runc), each
# on a temp root of its own under /var/tmp, the busybox image imported in both:
#  - `berth run --rm --network none busybox true` vs `ctr run --rm busybox ID true` (ctr 1.6; its
#    container gets a fresh netns with loopback only, like --network none): $RUNS runs each
#    (default 30), interleaved one by one (which goes first alternates), after one warm-up each;
#    median, p99 (nearest rank), and the median of the per-pair ratios;
#  - `berth run --rm busybox true` on berth's default bridge network vs `nerdctl run --rm` on
#    containerd 2.4.2 (bench/peers.sh builds it; nerdctl from there or scripts/deps-nerdctl.sh)
#    on nerdctl's default bridge network: $RUNS each, interleaved the same way (skipped, and
#    said so, when containerd 2.4.2 or nerdctl is missing);
#  - `berth run -d -p PORT:80 busybox httpd` until curl gets a first successful response,
#    $HTTP_RUNS times (default 10);
#  - `berth ps -a` with 1,000 containers (created with `berth create`), 20 calls;
#  - the CLI's binary size (as built, and stripped), `berth --version` (no daemon) and
#    `berth version` (one Version RPC) start-up times, 20 calls each.
# berthd, berth-shim, berth from target/$PROFILE (default release); the image is busybox from
# busybox-oci (target/$PROFILE) when built, else the pull group's cached Debian image fixture
# (/var/tmp/berth-bench-fixtures, `berth-bench pull` builds it) named docker.io/bench/debian:v1.
# A benchmark, never run by CI. Everything it starts is stopped and its root removed on exit.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=$here/../target/${PROFILE:-release}
RUNS=${RUNS:-30}
HTTP_RUNS=${HTTP_RUNS:-10}
PEER_BIN=${BERTH_BENCH_BIN:-/usr/local/lib/berth-bench/bin}
NERDCTL=$PEER_BIN/nerdctl
[ -x "$NERDCTL" ] || NERDCTL=${BERTH_TEST_BIN:-/usr/local/lib/berth-test/bin}/nerdctl
CONTAINERS=${CONTAINERS:-1000}
for b in berthd berth-shim berth; do
  [ -x "$bin/$b" ] || { echo "cli.sh: build $b first ($bin/$b)" >&2; exit 1; }
done
work=$(mktemp -d /var/tmp/berth-bench-cli.XXXXXX)
pids=()
cleanup() {
  set +e
  berth rm -f $(berth ps -aq 2>/dev/null) >/dev/null 2>&1
  ctr1 tasks ls -q 2>/dev/null | xargs -r -n1 ctr1 tasks kill -s KILL >/dev/null 2>&1
  if [ -S "$work/c2/containerd.sock" ]; then
    nerd rm -f $(nerd ps -aq 2>/dev/null) >/dev/null 2>&1
  fi
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  local pid
  for pid in $(pgrep -f "berth-shim .*$work/" || true) $(pgrep -f "containerd-shim.*$work/" || true); do
    kill -9 "$pid" 2>/dev/null
  done
  awk -v r="$work" 'index($2, r) == 1 { print $2 }' /proc/self/mounts | sort -r |
    while read -r m; do umount -l "$m"; done
  for dev in "$bbridge" "$nbridge"; do
    ip link del "$dev" 2>/dev/null
    # The host rules naming the bridge: berthd's per-network ones, nerdctl's firewall plugin's.
    for table in nat filter; do
      iptables -w -t "$table" -S | grep -E -- "-[io] $dev( |\$)" | sed 's/^-A /-D /' |
        while read -r rule; do eval iptables -w -t "$table" "$rule"; done
    done
  done
  rm -rf "/var/lib/cni/networks/bench-$$"
  rm -rf "$work"
}
trap cleanup EXIT

berth() { "$bin/berth" -H "unix://$work/berthd.sock" -n bench "$@"; }
nerd() { NERDCTL_TOML="$work/nerdctl.toml" "$NERDCTL" "$@"; }
# The default bridges of both daemons get names and /24s of this run's own, so other daemons
# (and other engineers' tests) on the host are not touched.
free_24() { # PREFIX (a.b): the first a.b.X.0/24, X from $2 up, that no route of the host is in
  local taken x
  taken=$(ip -4 route show table all)
  for x in $(seq "$2" 250); do
    [[ "$taken" == *"$1.$x."* ]] || { echo "$1.$x"; return; }
  done
  echo "cli.sh: no free $1.X.0/24" >&2; exit 1
}
bbridge=bbr$(($$ % 100000))
nbridge=nbr$(($$ % 100000))
bnet=$(free_24 10.48 $(($$ % 200)))
nnet=$(free_24 10.4 $(($$ % 200 + 1)))
ctr1() { /usr/bin/ctr -a "$work/c16/containerd.sock" -n bench "$@"; }
now_ns() { date +%s%N; }
# "median p99" of the numbers on stdin (nearest rank).
stats() {
  sort -g | awk '{ v[NR] = $1 } END {
    m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
    p = int(NR * 0.99); if (p < NR * 0.99) p++; if (p < 1) p = 1
    printf "%.1f %.1f\n", m, v[p] }'
}
ms() { # COMMAND…: milliseconds it took (its output dropped; a failure stops the bench)
  local s e
  s=$(now_ns)
  "$@" >/dev/null 2>>"$work/errors.log" || { echo "failed: $*" >&2; tail -5 "$work/errors.log" >&2; exit 1; }
  e=$(now_ns)
  awk -v d=$((e - s)) 'BEGIN { printf "%.2f\n", d / 1e6 }'
}

cat >"$work/berthd.toml" <<TOML
[cri]
enabled = false
[cni]
conf_dir = "$work/berth-net.d"
default_bridge = "$bbridge"
default_subnet = "$bnet.0/24"
TOML
PATH="$bin:$PATH" "$bin/berthd" --config "$work/berthd.toml" --root "$work/berthd/root" \
  --state "$work/berthd/state" --address "$work/berthd.sock" --log-level warn \
  2>"$work/berthd.log" &
pids+=($!)
mkdir -p "$work/c16"
cat >"$work/c16/config.toml" <<TOML
version = 2
root = "$work/c16/root"
state = "$work/c16/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$work/c16/containerd.sock"
[ttrpc]
  address = "$work/c16/containerd.sock.ttrpc"
[debug]
  level = "warn"
[plugins."io.containerd.internal.v1.opt"]
  path = "$work/c16/opt"
TOML
/usr/bin/containerd --config "$work/c16/config.toml" 2>"$work/c16/containerd.log" &
pids+=($!)
for _ in $(seq 100); do
  [ -S "$work/berthd.sock" ] && [ -S "$work/c16/containerd.sock" ] && break
  sleep 0.1
done

if [ -x "$bin/busybox-oci" ]; then
  IMAGE=docker.io/library/busybox:latest
  archive=$("$bin/busybox-oci" "$work" "$IMAGE" httpd)
else
  # The Debian fixture's index names it "v1" only: give it a full name both importers take.
  IMAGE=docker.io/bench/debian:v1
  debian=/var/tmp/berth-bench-fixtures/debian-bookworm-v1/oci
  [ -d "$debian" ] || { echo "cli.sh: no busybox-oci and no Debian fixture ($debian)" >&2; exit 1; }
  mkdir -p "$work/image"
  cp -r "$debian/." "$work/image/"
  python3 - "$work/image/index.json" "$IMAGE" <<'PY2'
import json, sys
p, name = sys.argv[1], sys.argv[2]
i = json.load(open(p))
i["manifests"][0].setdefault("annotations", {})["io.containerd.image.name"] = name
json.dump(i, open(p, "w"))
PY2
  archive=$work/image.tar
  tar -C "$work/image" -cf "$archive" .
fi
berth load -i "$archive" >/dev/null
ctr1 images import "$archive" >/dev/null
echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "versions: berthd $(berth version -f '{{.Server.Version}}'), $(/usr/bin/containerd --version | cut -d' ' -f2-3), $(runc --version | head -1)"

# Warm-up: page cache, the first shim of each daemon.
berth run --rm --network none "$IMAGE" true >/dev/null
ctr1 run --rm "$IMAGE" warm true >/dev/null
: >"$work/run.pairs"
for i in $(seq "$RUNS"); do
  if ((i % 2)); then
    b=$(ms berth run --rm --network none "$IMAGE" true)
    c=$(ms ctr1 run --rm "$IMAGE" "r$i" true)
  else
    c=$(ms ctr1 run --rm "$IMAGE" "r$i" true)
    b=$(ms berth run --rm --network none "$IMAGE" true)
  fi
  echo "$b $c" >>"$work/run.pairs"
done
read -r bm bp < <(awk '{ print $1 }' "$work/run.pairs" | stats)
read -r cm cp < <(awk '{ print $2 }' "$work/run.pairs" | stats)
read -r rm _ < <(awk '{ print $1 / $2 }' "$work/run.pairs" | stats)
echo "run --rm true, $RUNS each interleaved: berth run --rm --network none median $bm ms p99 $bp ms;" \
  "ctr 1.6 run --rm median $cm ms p99 $cp ms; ratio (median of pairs) $rm (target <= 0.8)"
echo "load average after the runs: $(cut -d' ' -f1-3 /proc/loadavg)"

# berth on its default bridge vs nerdctl on containerd 2.4.2's default bridge.
if [ -x "$PEER_BIN/containerd" ] && [ -x "$PEER_BIN/containerd-shim-runc-v2" ] && [ -x "$NERDCTL" ]; then
  mkdir -p "$work/c2" "$work/nerdctl-net.d"
  cat >"$work/c2/config.toml" <<TOML
version = 3
root = "$work/c2/root"
state = "$work/c2/state"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.cri.v1.images", "io.containerd.cri.v1.runtime", "io.containerd.nri.v1.nri", "io.containerd.podsandbox.controller.v1.podsandbox"]
[grpc]
  address = "$work/c2/containerd.sock"
[ttrpc]
  address = "$work/c2/containerd.sock.ttrpc"
[debug]
  level = "warn"
TOML
  PATH="$PEER_BIN:$PATH" "$PEER_BIN/containerd" --config "$work/c2/config.toml" \
    2>"$work/c2/containerd.log" &
  pids+=($!)
  cat >"$work/nerdctl.toml" <<TOML
address = "$work/c2/containerd.sock"
namespace = "bench"
snapshotter = "overlayfs"
data_root = "$work/nerdctl"
cni_path = "$( [ -x /usr/lib/cni/bridge ] && echo /usr/lib/cni || echo /opt/cni/bin )"
cni_netconfpath = "$work/nerdctl-net.d"
TOML
  # nerdctl's own default network as it writes it (bridge, portmap, firewall, tuning), on this
  # run's bridge and /24 rather than nerdctl0 and 10.4.0.0/24.
  cat >"$work/nerdctl-net.d/nerdctl-bridge.conflist" <<JSON
{"cniVersion": "1.0.0", "name": "bridge", "nerdctlID": "$(printf '%064x' $$)",
 "nerdctlLabels": {"nerdctl/default-network": "true"},
 "plugins": [
  {"type": "bridge", "bridge": "$nbridge", "isGateway": true, "ipMasq": true, "hairpinMode": true,
   "ipam": {"type": "host-local", "ranges": [[{"subnet": "$nnet.0/24", "gateway": "$nnet.1"}]],
            "routes": [{"dst": "0.0.0.0/0"}]}},
  {"type": "portmap", "capabilities": {"portMappings": true}},
  {"type": "firewall", "ingressPolicy": "same-bridge"},
  {"type": "tuning"}]}
JSON
  for _ in $(seq 100); do [ -S "$work/c2/containerd.sock" ] && break; sleep 0.1; done
  nerd load -i "$archive" >/dev/null
  echo "versions: $("$PEER_BIN/containerd" --version | cut -d' ' -f2-3), nerdctl $("$NERDCTL" --version | cut -d' ' -f3)"
  berth run --rm --network bridge "$IMAGE" true >/dev/null
  nerd run --rm "$IMAGE" true >/dev/null
  : >"$work/bridge.pairs"
  for i in $(seq "$RUNS"); do
    if ((i % 2)); then
      b=$(ms berth run --rm --network bridge "$IMAGE" true)
      c=$(ms nerd run --rm "$IMAGE" true)
    else
      c=$(ms nerd run --rm "$IMAGE" true)
      b=$(ms berth run --rm --network bridge "$IMAGE" true)
    fi
    echo "$b $c" >>"$work/bridge.pairs"
  done
  read -r bm bp < <(awk '{ print $1 }' "$work/bridge.pairs" | stats)
  read -r cm cp < <(awk '{ print $2 }' "$work/bridge.pairs" | stats)
  read -r rm _ < <(awk '{ print $1 / $2 }' "$work/bridge.pairs" | stats)
  echo "run --rm true on the default bridge, $RUNS each interleaved: berth median $bm ms p99 $bp ms;" \
    "nerdctl on containerd 2.4.2 median $cm ms p99 $cp ms; ratio (median of pairs) $rm (target <= 0.5)"
  echo "load average after the bridge runs: $(cut -d' ' -f1-3 /proc/loadavg)"
else
  echo "bridge figure skipped: no containerd 2.4.2 in $PEER_BIN (bench/peers.sh) or no nerdctl ($NERDCTL)"
fi

# `run -d -p` until the first successful HTTP response (curl retrying every 5 ms).
: >"$work/http"
for i in $(seq "$HTTP_RUNS"); do
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  mkdir -p "$work/www"
  echo ok >"$work/www/index.html"
  s=$(now_ns)
  berth run -d --network bridge --name "web$i" -p "127.0.0.1:$port:80" -v "$work/www:/www:ro" "$IMAGE" \
    httpd -f -p 80 -h /www >/dev/null
  until curl -sf -o /dev/null "http://127.0.0.1:$port/"; do sleep 0.005; done
  e=$(now_ns)
  awk -v d=$((e - s)) 'BEGIN { printf "%.2f\n", d / 1e6 }' >>"$work/http"
  berth rm -f "web$i" >/dev/null
done
read -r m p < <(stats <"$work/http")
echo "berth run -d -p until the first HTTP 200 ($HTTP_RUNS runs): median $m ms, p99 $p ms"

for i in $(seq 20); do ms "$bin/berth" --version; done >"$work/v0"
for i in $(seq 20); do ms berth version; done >"$work/v1"
read -r m p < <(stats <"$work/v0")
echo "berth --version (no daemon, 20 calls): median $m ms, p99 $p ms"
read -r m p < <(stats <"$work/v1")
echo "berth version (one Version RPC, 20 calls): median $m ms, p99 $p ms"
cp "$bin/berth" "$work/berth.stripped" && strip "$work/berth.stripped"
echo "berth binary: $(stat -c %s "$bin/berth") bytes as built (release, line tables), $(stat -c %s "$work/berth.stripped") stripped"

# 1,000 containers, 4 creators at a time.
seq "$CONTAINERS" | xargs -P 4 -I{} "$bin/berth" -H "unix://$work/berthd.sock" -n bench \
  create --name "ps-{}" "$IMAGE" true >/dev/null
n=$(berth ps -aq | wc -l)
berth ps -a >/dev/null
for i in $(seq 20); do ms berth ps -a; done >"$work/ps"
read -r m p < <(stats <"$work/ps")
echo "berth ps -a with $n containers (20 calls): median $m ms, p99 $p ms (target < 50 ms)"
for i in $(seq 20); do ms berth ps -aq; done >"$work/psq"
read -r m p < <(stats <"$work/psq")
echo "berth ps -aq with $n containers (20 calls): median $m ms, p99 $p ms"
