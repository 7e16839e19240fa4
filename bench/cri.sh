#!/usr/bin/env bash
# `bench/cri.sh [ENDPOINT]`: the CRI figures of issue 14 for one runtime, through crictl v1.37.0
# (each figure includes one crictl start, reported on its own as "crictl version"):
#  - pod start: RunPodSandbox + CreateContainer + StartContainer of busybox (`crictl run`),
#    $BENCH_CRI_RUNS sequential runs (default 40), median and p99 (nearest rank);
#  - the same pod start as the issue defines it, the three RPCs alone: bench/cri-podstart (grpc-go
#    with its defaults, one connection, as the kubelet sends them; no crictl start, no pull),
#    $BENCH_CRI_RUNS sequential starts after one untimed, median and p99;
#  - 30 pods in parallel: wall time of 30 concurrent `crictl run`;
#  - daemon + shims memory (PSS) with those 30 pods running;
#  - ListContainerStats (`crictl stats -o json`, one RPC) with 100 running containers
#    (10 pods x 10), median of 20 calls.
# Each timed phase starts once the machine is quiet again (bench/settle.sh): the kernel tears
# the previous phase's netns down after `crictl rmp` returns.
# ENDPOINT defaults to $CRI_ENDPOINT, so `scripts/critest/peer.sh bench/cri.sh` measures
# containerd 2.4. Memory needs the daemon's pid in $BERTH_CRI_DAEMON_PID and a `pgrep -f` pattern
# of its shims in $BERTH_CRI_SHIM_PATTERN (peer.sh sets both); without them it is not reported.
# The busybox image comes from the critest fixtures' registry. A benchmark, never run by CI.
# Everything it creates is removed on exit. With $BENCH_CRI_SAMPLES set, the pod-start and stats
# samples are also copied to $BENCH_CRI_SAMPLES.seq.ms, .rpc.ms and .stats.ms. cri-podstart is
# built by bench/peers.sh into $BERTH_BENCH_BIN.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
TEST_BIN=${BERTH_TEST_BIN:-/usr/local/lib/berth-test/bin}
BENCH_BIN=${BERTH_BENCH_BIN:-/usr/local/lib/berth-bench/bin}
# shellcheck source=settle.sh
source "$here/settle.sh"
[ -x "$BENCH_BIN/cri-podstart" ] || { echo "run bench/peers.sh first (cri-podstart)" >&2; exit 1; }
endpoint=${1:-${CRI_ENDPOINT:-}}
[ -n "$endpoint" ] || { echo "usage: $0 ENDPOINT (or CRI_ENDPOINT set)" >&2; exit 2; }
RUNS=${BENCH_CRI_RUNS:-40}
IMAGE=registry.k8s.io/e2e-test-images/busybox:1.29-2

if [ -z "${BERTH_CRITEST_FIXTURES_UP:-}" ]; then
  # shellcheck source=../scripts/critest/fixtures.sh
  source "$here/../scripts/critest/fixtures.sh"
  fixtures_up
else
  fixtures_down() { :; }
fi
work=$(mktemp -d /tmp/berth-bench-cri.XXXXXX)
# crictl's default 2 s deadline per RPC is shorter than a RunPodSandbox among 30 on 2 cores.
crictl() { "$TEST_BIN/crictl" -r "$endpoint" -i "$endpoint" -t 120s "$@" 2>>"$work/crictl.err"; }
cleanup() {
  set +e
  # Only the pods this bench made: their names start with bench-cri-$$.
  for id in $(crictl pods -q --name "bench-cri-$$"); do crictl rmp -f "$id" >/dev/null; done
  rm -rf "$work"
  fixtures_down
}
trap cleanup EXIT

now_ms() { echo $(($(date +%s%N) / 1000000)); }
pod_json() { # NAME
  mkdir -p "$work/logs/$1"
  cat >"$work/$1.pod.json" <<EOF
{"metadata": {"name": "$1", "namespace": "bench", "uid": "$1", "attempt": 0},
 "log_directory": "$work/logs/$1", "linux": {}}
EOF
  echo "$work/$1.pod.json"
}
ctr_json() { # NAME
  cat >"$work/$1.ctr.json" <<EOF
{"metadata": {"name": "$1"}, "image": {"image": "$IMAGE"},
 "command": ["sleep", "3600"], "log_path": "$1.log", "linux": {}}
EOF
  echo "$work/$1.ctr.json"
}
# "median p99" of the numbers on stdin (nearest rank).
stats() {
  sort -n | awk '{ v[NR] = $1 } END {
    m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
    p = int(NR * 0.99); if (p < NR * 0.99) p++; if (p < 1) p = 1
    printf "%s %s\n", m, v[p] }'
}
rm_pods() { for id in $(crictl pods -q --name "bench-cri-$$"); do crictl rmp -f "$id" >/dev/null; done; }

crictl pull "$IMAGE" >/dev/null
echo "endpoint: $endpoint ($(crictl version | awk '/RuntimeName|RuntimeVersion/ { printf "%s ", $2 }'))"

for i in $(seq 5); do
  t=$(now_ms); crictl version >/dev/null; echo $(($(now_ms) - t))
done | stats | { read -r m p; echo "crictl version (one crictl start + Version RPC): median ${m} ms"; }

# A warm-up pod first: the sandbox image's unpack and first CNI setup are not the steady state.
crictl run "$(ctr_json c-warm)" "$(pod_json "bench-cri-$$-warm")" >/dev/null
rm_pods

# Each timed phase starts once the previous one's teardown is over.
settle
for i in $(seq "$RUNS"); do
  pod=$(pod_json "bench-cri-$$-seq-$i")
  ctr=$(ctr_json "c-seq-$i")
  t=$(now_ms)
  crictl run "$ctr" "$pod" >/dev/null
  echo $(($(now_ms) - t))
done >"$work/seq.ms"
# The raw samples, for a driver that pools rounds (bench/cri-ab.sh).
[ -z "${BENCH_CRI_SAMPLES:-}" ] || cp "$work/seq.ms" "$BENCH_CRI_SAMPLES.seq.ms"
read -r m p < <(stats <"$work/seq.ms")
echo "pod start (runp+create+start, $RUNS sequential): median ${m} ms, p99 ${p} ms"
rm_pods

settle
"$BENCH_BIN/cri-podstart" -endpoint "$endpoint" -image "$IMAGE" -runs "$RUNS" \
  -prefix "bench-cri-$$-rpc" -logs "$work/logs" >"$work/rpc.ms"
[ -z "${BENCH_CRI_SAMPLES:-}" ] || cp "$work/rpc.ms" "$BENCH_CRI_SAMPLES.rpc.ms"
read -r m p < <(stats <"$work/rpc.ms")
echo "pod start, the three RPCs on one connection ($RUNS sequential): median ${m} ms, p99 ${p} ms"

settle
t=$(now_ms)
pids=()
for i in $(seq 30); do
  crictl run "$(ctr_json "c-par-$i")" "$(pod_json "bench-cri-$$-par-$i")" >/dev/null &
  pids+=($!)
done
failed=0
for pid in "${pids[@]}"; do wait "$pid" || failed=$((failed + 1)); done
echo "30 pods in parallel: $(($(now_ms) - t)) ms wall ($failed failed)"
[ "$failed" = 0 ] || grep -v 'level=warn' "$work/crictl.err" | tail -3 >&2

pss_kib() { awk '/^Pss:/ { s += $2 } END { print s + 0 }' "/proc/$1/smaps_rollup" 2>/dev/null || echo 0; }
if [ -n "${BERTH_CRI_DAEMON_PID:-}" ]; then
  sleep 2
  daemon=$(pss_kib "$BERTH_CRI_DAEMON_PID")
  shims=0 n=0
  if [ -n "${BERTH_CRI_SHIM_PATTERN:-}" ]; then
    for pid in $(pgrep -f "$BERTH_CRI_SHIM_PATTERN" || true); do
      shims=$((shims + $(pss_kib "$pid"))) n=$((n + 1))
    done
  fi
  echo "memory with 30 pods (PSS): daemon $((daemon / 1024)) MiB, $n shims $((shims / 1024)) MiB, total $(((daemon + shims) / 1024)) MiB"
fi
rm_pods

# 100 running containers: 10 pods of 10.
for p in $(seq 10); do
  pod=$(crictl runp "$(pod_json "bench-cri-$$-stats-$p")")
  for c in $(seq 10); do
    id=$(crictl create "$pod" "$(ctr_json "c-$p-$c")" "$work/bench-cri-$$-stats-$p.pod.json")
    crictl start "$id" >/dev/null
  done
done
running=$(crictl ps -q --state Running | wc -l)
settle
for i in $(seq 20); do
  t=$(now_ms); crictl stats -o json >/dev/null; echo $(($(now_ms) - t))
done >"$work/stats.ms"
[ -z "${BENCH_CRI_SAMPLES:-}" ] || cp "$work/stats.ms" "$BENCH_CRI_SAMPLES.stats.ms"
read -r m p < <(stats <"$work/stats.ms")
echo "ListContainerStats with $running running containers (20 calls): median ${m} ms, p99 ${p} ms"
