#!/usr/bin/env bash
# `bench/cli.sh`: issue 13's CLI figures, berthd beside Debian's containerd 1.6 (same runc), each
# on a temp root of its own under /var/tmp, the busybox image imported in both:
#  - `berth run --rm --network none busybox true` vs `ctr run --rm busybox ID true` (ctr 1.6; its
#    container gets a fresh netns with loopback only, like --network none): $RUNS runs each
#    (default 30), interleaved one by one (which goes first alternates), after one warm-up each;
#    median, p99 (nearest rank), and the median of the per-pair ratios;
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
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  local pid
  for pid in $(pgrep -f "berth-shim .*$work/" || true) $(pgrep -f "containerd-shim.*$work/" || true); do
    kill -9 "$pid" 2>/dev/null
  done
  awk -v r="$work" 'index($2, r) == 1 { print $2 }' /proc/self/mounts | sort -r |
    while read -r m; do umount -l "$m"; done
  rm -rf "$work"
}
trap cleanup EXIT

berth() { "$bin/berth" -H "unix://$work/berthd.sock" -n bench "$@"; }
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

printf '[cri]\nenabled = false\n' >"$work/berthd.toml"
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
  archive=$("$bin/busybox-oci" "$work" "$IMAGE")
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
