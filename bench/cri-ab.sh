#!/usr/bin/env bash
# `bench/cri-ab.sh`: issue 14's CRI figures for berthd and containerd 2.4.2 side by side: bench/cri.sh
# run $ROUNDS times (default 2) against each, alternating (berthd first in odd rounds, containerd
# first in even ones) so both see the same machine load, each once the machine has settled;
# berthd under bench/cri-berth.sh, containerd under scripts/critest/peer.sh, each on a fresh root
# per round. Prints each run's output, then the pod-start (both measures) and ListContainerStats
# samples pooled over the rounds (median, p99 nearest rank) and their ratios.
# BERTH_CRI_PEER=containerd-1.6 takes Debian's containerd 1.6 as the peer instead (see
# scripts/critest/peer.sh). A benchmark, never run by CI.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
ROUNDS=${ROUNDS:-2}
PEER=${BERTH_CRI_PEER:-containerd-2.4}
out=$(mktemp -d /tmp/berth-cri-ab.XXXXXX)
trap 'rm -rf "$out"' EXIT
stats() {
  sort -g | awk '{ v[NR] = $1 } END {
    m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
    p = int(NR * 0.99); if (p < NR * 0.99) p++; if (p < 1) p = 1
    printf "%s %s\n", m, v[p] }'
}
# Each run starts on a quiet machine, so neither side inherits the other's cleanup.
# shellcheck source=settle.sh
source "$here/settle.sh"
run() { # SIDE ROUND
  settle
  echo "== $1, round $2 (load $(cut -d' ' -f1-3 /proc/loadavg))"
  if [ "$1" = berthd ]; then
    BENCH_CRI_SAMPLES=$out/$1-$2 "$here/cri-berth.sh" "$here/cri.sh"
  else
    BENCH_CRI_SAMPLES=$out/$1-$2 "$here/../scripts/critest/peer.sh" "$here/cri.sh"
  fi
}
for r in $(seq "$ROUNDS"); do
  if ((r % 2)); then run berthd "$r"; run containerd "$r"; else run containerd "$r"; run berthd "$r"; fi
done
echo "== pooled over $ROUNDS rounds (load at end $(cut -d' ' -f1-3 /proc/loadavg))"
for kind in seq rpc stats; do
  read -r bm bp < <(cat "$out"/berthd-*."$kind".ms | stats)
  read -r cm cp < <(cat "$out"/containerd-*."$kind".ms | stats)
  case $kind in
  seq) name="pod start (crictl run)" ;;
  rpc) name="pod start (the three RPCs, one connection)" ;;
  *) name="ListContainerStats (100 running)" ;;
  esac
  echo "$name: berthd median $bm ms p99 $bp ms; $PEER median $cm ms p99 $cp ms;" \
    "ratio median $(awk -v a="$bm" -v b="$cm" 'BEGIN { printf "%.2f", a / b }')," \
    "p99 $(awk -v a="$bp" -v b="$cp" 'BEGIN { printf "%.2f", a / b }')"
done
