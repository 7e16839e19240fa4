#!/usr/bin/env bash
# The soak (issue 15, "a one-hour soak at one `run --rm` a second"): one `ctr run --rm` (ctr 1.6)
# of a one-binary busybox image a second against a berthd on a fresh temporary root, for
# DURATION seconds (default 3600), sampling every 10 s the daemon's RSS, open fds and threads
# and the number of live berth-shim processes of this daemon into CSV (default
# bench/results/soak.csv). Plot it with bench/soak-plot.sh. A bench, never a CI test.
# Usage: bench/soak.sh [DURATION] [CSV]; BERTHD=path picks the berthd (default
# target/release/berthd; berth-shim must be beside it).
set -euo pipefail
DURATION=${1:-3600}
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CSV=${2:-$here/bench/results/soak.csv}
CTR=${CTR:-ctr}
BERTHD=${BERTHD:-$here/target/release/berthd}
NS=soak
IMAGE=docker.io/berth/soak:latest
work=$(mktemp -d /tmp/berth-soak.XXXXXX)
daemon_pid=
sampler_pid=
cleanup() {
	[ -n "$sampler_pid" ] && kill "$sampler_pid" 2>/dev/null
	[ -n "$daemon_pid" ] && kill "$daemon_pid" 2>/dev/null && wait "$daemon_pid" 2>/dev/null
	umount -R "$work"/state/tasks/*/*/rootfs 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT
[ -x "$BERTHD" ] || { echo "soak: no berthd at $BERTHD" >&2; exit 1; }
# shellcheck source=bench/one-binary-image.sh
. "$here/bench/one-binary-image.sh"
one_binary_image "$work/image" "$IMAGE" "$work/image.tar"

"$BERTHD" --root "$work/root" --state "$work/state" --address "$work/berthd.sock" --log-level warn \
	>"$work/berthd.log" 2>&1 &
daemon_pid=$!
for _ in $(seq 200); do
	"$CTR" -a "$work/berthd.sock" version >/dev/null 2>&1 && break
	sleep 0.05
done
"$CTR" -a "$work/berthd.sock" -n "$NS" images import "$work/image.tar" >/dev/null

mkdir -p "$(dirname "$CSV")"
# runs / failures are counted by the loop in files the sampler reads.
echo 0 >"$work/runs"
echo 0 >"$work/failures"
sample() {
	local start=$1
	echo "elapsed_s,rss_kib,fds,threads,shims,runs,failures" >"$CSV"
	while kill -0 "$daemon_pid" 2>/dev/null; do
		local rss threads fds shims
		rss=$(awk '/^VmRSS:/ { print $2 }' "/proc/$daemon_pid/status")
		threads=$(awk '/^Threads:/ { print $2 }' "/proc/$daemon_pid/status")
		fds=$(find "/proc/$daemon_pid/fd" -mindepth 1 -maxdepth 1 | wc -l)
		# This daemon's shims: their command line names its state dir.
		shims=$(ps -eo args= | grep -F -- "$work/state" | grep -c '^[^ ]*berth-shim' || true)
		echo "$(($(date +%s) - start)),$rss,$fds,$threads,$shims,$(cat "$work/runs"),$(cat "$work/failures")" >>"$CSV"
		sleep 10
	done
}
start=$(date +%s)
sample "$start" &
sampler_pid=$!

runs=0
failures=0
while [ $(($(date +%s) - start)) -lt "$DURATION" ]; do
	next=$((start + runs + 1))
	if ! "$CTR" -a "$work/berthd.sock" -n "$NS" run --rm "$IMAGE" "soak-$runs" true \
		>>"$work/ctr.log" 2>&1; then
		failures=$((failures + 1))
		echo "$failures" >"$work/failures"
	fi
	runs=$((runs + 1))
	echo "$runs" >"$work/runs"
	# One run a second: wait for the next whole second of the schedule (none when behind).
	now=$(date +%s.%N)
	sleep "$(awk -v n="$next" -v t="$now" 'BEGIN { d = n - t; print (d > 0 ? d : 0) }')"
done
sleep 11
echo "soak: $runs runs, $failures failed, in $(($(date +%s) - start)) s; CSV $CSV"
[ "$failures" -eq 0 ] || tail -20 "$work/ctr.log" >&2
