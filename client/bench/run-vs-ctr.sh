#!/usr/bin/env bash
# client/bench/run-vs-ctr.sh: `berth run --rm --network none IMAGE true` against berthd beside
# `ctr run --rm IMAGE ID true` against Debian's containerd 1.6 (same runc), both started here
# on a temp root, the image imported into each by ctr. Informal: CI never runs it.
#
# Each command runs once untimed per daemon, then RUNS timed runs alternating between the two;
# the table shows the median and the spread (min..max) in milliseconds, wall time from exec to
# exit of the client.
#
# Usage: client/bench/run-vs-ctr.sh [--no-build]
# Env: RUNS (default 20), BERTHD (default target/release/berthd, with berth-shim beside it),
#      BERTH (default target/release/berth), BUSYBOX_OCI (default target/release/busybox-oci),
#      CONTAINERD (default `containerd` from PATH),
#      CARGO_TARGET_DIR, TMPDIR (the temp root's parent, default /var/tmp).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
target="${CARGO_TARGET_DIR:-$repo/target}"
berthd="${BERTHD:-$target/release/berthd}"
berth="${BERTH:-$target/release/berth}"
busybox_oci="${BUSYBOX_OCI:-$target/release/busybox-oci}"
containerd="${CONTAINERD:-$(command -v containerd || true)}"
runs="${RUNS:-20}"
fail() { echo "client/bench/run-vs-ctr.sh: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || fail "needs root (both daemons mount and run containers)"
[ -n "$containerd" ] || fail "no containerd on PATH (apt-get install containerd)"
[[ "$runs" =~ ^[1-9][0-9]*$ ]] || fail "RUNS must be a positive number"
if [ "${1:-}" != --no-build ]; then
	echo "building berthd, berth-shim, berth and busybox-oci (release)" >&2
	(cd "$repo" && cargo build --release -q -p berthd -p berth-shim -p berth &&
		cargo build --release -q -p berth-testkit --bin busybox-oci)
fi
for b in "$berthd" "$(dirname "$berthd")/berth-shim" "$berth" "$busybox_oci"; do
	[ -x "$b" ] || fail "no $b (build it in release)"
done

root="$(mktemp -d "${TMPDIR:-/var/tmp}/berth-cli-bench.XXXXXX")"
ns="cli-bench-$$"
pids=()

# Stop what we started; then what still names the temp root: shims and containers outlive
# their daemon by design.
cleanup() {
	local rc=$? pid p r id comm argv
	trap - EXIT INT TERM
	for pid in "${pids[@]}"; do
		kill -TERM "$pid" 2>/dev/null || continue
		for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
		kill -KILL "$pid" 2>/dev/null || true
		wait "$pid" 2>/dev/null || true
	done
	for r in "$root"/berthd/state/runc/"$ns" /run/containerd/runc/"$ns"; do
		[ -d "$r" ] || continue
		for id in $(ls "$r"); do runc --root "$r" delete --force "$id" >/dev/null 2>&1 || true; done
		rmdir "$r" 2>/dev/null || true
	done
	for p in /proc/[0-9]*; do
		pid="${p#/proc/}"
		comm="$(cat "$p/comm" 2>/dev/null)" || continue
		case "$comm" in berth-shim | containerd-shim* | runc) ;; *) continue ;; esac
		argv="$(tr '\0' ' ' <"$p/cmdline" 2>/dev/null)" || continue
		[[ "$argv" == *"$root"* ]] && kill -KILL "$pid" 2>/dev/null || true
	done
	while read -r m; do umount -l "$m" 2>/dev/null || true; done \
		< <(awk -v r="$root/" 'index($5, r) == 1 { print $5 }' /proc/self/mountinfo | sort -r)
	for h in /sys/fs/cgroup/*/ /sys/fs/cgroup/; do
		[ -d "$h$ns" ] && find "$h$ns" -depth -type d -exec rmdir {} + 2>/dev/null || true
	done
	rm -rf "$root"
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mkdir -p "$root/berthd" "$root/containerd"
"$berthd" --root "$root/berthd/root" --state "$root/berthd/state" \
	--address "$root/berthd/berthd.sock" --log-level warn >"$root/berthd/berthd.log" 2>&1 &
pids+=($!)
cat >"$root/containerd/config.toml" <<TOML
version = 2
root = "$root/containerd/root"
state = "$root/containerd/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$root/containerd/containerd.sock"
[ttrpc]
  address = "$root/containerd/containerd.sock.ttrpc"
[debug]
  address = ""
  level = "warn"
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "$root/containerd/opt"
TOML
"$containerd" --config "$root/containerd/config.toml" >"$root/containerd/containerd.log" 2>&1 &
pids+=($!)
declare -A socket=([berthd]="$root/berthd/berthd.sock" [containerd]="$root/containerd/containerd.sock")
for d in berthd containerd; do
	for _ in $(seq 300); do [ -S "${socket[$d]}" ] && break; sleep 0.1; done
	[ -S "${socket[$d]}" ] || { tail -n 20 "$root/$d/$d.log" >&2; fail "$d did not open its socket"; }
done

image=docker.io/berth/busybox:bench
archive="$("$busybox_oci" "$root" "$image")"
for d in berthd containerd; do ctr -a "${socket[$d]}" -n "$ns" images import "$archive" >/dev/null; done

once() { # daemon i
	case "$1" in
	berthd) "$berth" -H "unix://${socket[berthd]}" -n "$ns" run --rm --network none "$image" true ;;
	containerd) ctr -a "${socket[containerd]}" -n "$ns" run --rm "$image" "bench-$2" true ;;
	esac
}
declare -A times=()
for d in berthd containerd; do once "$d" warm >/dev/null; done
for i in $(seq "$runs"); do
	order=(berthd containerd)
	[ $((i % 2)) = 0 ] && order=(containerd berthd)
	for d in "${order[@]}"; do
		t0=$(date +%s%N)
		once "$d" "$i" >/dev/null || fail "$d run $i failed"
		t1=$(date +%s%N)
		times[$d]+="$(((t1 - t0) / 1000)) "
	done
done
stats() { tr ' ' '\n' | grep . | sort -n | awk '{ a[NR] = $1 } END {
	m = (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2
	printf "%.1f ms (%.1f..%.1f)", m / 1000, a[1] / 1000, a[NR] / 1000 }'; }
echo "runs: $runs each, $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "berth run --rm --network none IMAGE true (berthd):  $(echo "${times[berthd]}" | stats)"
echo "ctr run --rm IMAGE ID true (containerd 1.6):         $(echo "${times[containerd]}" | stats)"
