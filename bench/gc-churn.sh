#!/usr/bin/env bash
# Daemon CPU per `ctr run --rm` (issue 15, "the collector under churn"): RUNS (default 200)
# `ctr run --rm` of a one-binary busybox image with ctr 1.6, against berthd and against Debian's
# containerd 1.6, each on a fresh temporary root; the figure is the daemon's utime+stime
# (/proc/PID/stat) over the loop divided by RUNS. Shims and runc are not counted: the collector
# runs in the daemon. A bench, never a CI test.
# Usage: bench/gc-churn.sh [RUNS] [berthd|containerd|both]; BERTHD=path picks the berthd binary
# (default target/release/berthd, else target/debug/berthd; berth-shim must be beside it).
set -euo pipefail
RUNS=${1:-200}
WHICH=${2:-both}
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CTR=${CTR:-ctr}
BERTHD=${BERTHD:-}
if [ -z "$BERTHD" ]; then
	for p in "$here/target/release/berthd" "$here/target/debug/berthd"; do
		[ -x "$p" ] && { BERTHD=$p; break; }
	done
fi
NS=gc-churn
IMAGE=docker.io/berth/gc-churn:latest
tick=$(getconf CLK_TCK)
work=$(mktemp -d /tmp/berth-gc-churn.XXXXXX)
daemon_pid=
cleanup() {
	[ -n "$daemon_pid" ] && kill "$daemon_pid" 2>/dev/null && wait "$daemon_pid" 2>/dev/null
	umount -R "$work"/*/root 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT

# shellcheck source=bench/one-binary-image.sh
. "$here/bench/one-binary-image.sh"

cpu_ticks() { awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"; }

wait_socket() {
	for _ in $(seq 200); do
		"$CTR" -a "$1" version >/dev/null 2>&1 && return 0
		sleep 0.05
	done
	echo "gc-churn: no daemon on $1" >&2
	exit 1
}

measure() { # name socket
	local name=$1 sock=$2
	"$CTR" -a "$sock" -n "$NS" images import "$work/image.tar" >/dev/null
	"$CTR" -a "$sock" -n "$NS" run --rm "$IMAGE" warm true
	local before after start end
	before=$(cpu_ticks "$daemon_pid")
	start=$(date +%s.%N)
	for i in $(seq "$RUNS"); do
		"$CTR" -a "$sock" -n "$NS" run --rm "$IMAGE" "run-$i" true
	done
	end=$(date +%s.%N)
	# What the loop's deletions scheduled runs within the next second: count it too.
	sleep 1
	after=$(cpu_ticks "$daemon_pid")
	awk -v n="$name" -v r="$RUNS" -v t="$tick" -v b="$before" -v a="$after" -v s="$start" -v e="$end" \
		'BEGIN { printf "%-12s %d runs: daemon CPU %.2f s, %.2f ms per run; loop %.1f s (%.0f ms per run)\n", n, r, (a-b)/t, (a-b)/t*1000/r, e-s, (e-s)*1000/r }'
	kill "$daemon_pid"
	wait "$daemon_pid" 2>/dev/null || true
	daemon_pid=
}

one_binary_image "$work/image" "$IMAGE" "$work/image.tar"
if [ "$WHICH" = both ] || [ "$WHICH" = berthd ]; then
	[ -n "$BERTHD" ] || { echo "gc-churn: no berthd built (cargo build -p berthd -p berth-shim)" >&2; exit 1; }
	d=$work/berthd
	mkdir -p "$d"
	"$BERTHD" --root "$d/root" --state "$d/state" --address "$d/berthd.sock" --log-level warn \
		>"$d/log" 2>&1 &
	daemon_pid=$!
	wait_socket "$d/berthd.sock"
	measure berthd "$d/berthd.sock"
	# With RUST_LOG=warn,berthd::controllers::gc=debug berthd logs every collection.
	# (grep finds none without that logging: not a failure of the run.)
	{ sed 's/\x1b\[[0-9;]*m//g' "$d/log" | grep -o 'elapsed_us=[0-9]*' || true; } |
		awk -F= '{ n++; s += $2 } END { if (n) printf "berthd collections logged: %d, %.1f ms each on average\n", n, s/n/1000 }'

fi
if [ "$WHICH" = both ] || [ "$WHICH" = containerd ]; then
	d=$work/containerd
	mkdir -p "$d"
	printf 'version = 2\nroot = "%s/root"\nstate = "%s/state"\ndisabled_plugins = ["io.containerd.grpc.v1.cri"]\n[grpc]\n  address = "%s/containerd.sock"\n' \
		"$d" "$d" "$d" >"$d/config.toml"
	containerd --config "$d/config.toml" --log-level warn >"$d/log" 2>&1 &
	daemon_pid=$!
	wait_socket "$d/containerd.sock"
	measure containerd-1.6 "$d/containerd.sock"
fi
