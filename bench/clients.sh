#!/usr/bin/env bash
# bench/clients.sh: the wall time of each client's example (Rust, Go, Python, Java, TypeScript)
# end to end against a release berthd and against Debian's containerd 1.6, on the same machine in
# the same run (issue 11). A benchmark: CI never runs it, and no figure decides anything.
#
# What is timed: the example program itself, started directly (the command each
# clients/<lang>/run-example execs after its build), from exec to exit, interpreter or JVM start
# included. The builds, formatting checks and unit tests run-example does first are not timed:
# every client is built once up front. Each example runs once per daemon untimed (page cache,
# JIT caches of the OS, the daemon's first connection), then RUNS timed runs per daemon; the
# daemon that goes first alternates per language and run. Every run gets a namespace of its own,
# so every run imports the image, unpacks it and runs its container from nothing.
#
# Usage: bench/clients.sh [--no-build] [--keep] [LANG...]   (LANG: rust go python java typescript)
# Env: RUNS (timed runs per example and daemon, default 1; the table shows the median), LIMIT
#      (seconds an example may take before it is killed and counted as failed, default 90),
#      BERTHD (default target/release/berthd, with berth-shim beside it), CONTAINERD (default
#      `containerd` from PATH), CARGO_TARGET_DIR, TMPDIR (the temp root's parent, default /var/tmp).
# Needs root, runc, Debian's containerd 1.6 with containerd-shim-runc-v2 on PATH, and what the
# clients' build scripts need (scripts/deps.sh installs all of it).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
target="${CARGO_TARGET_DIR:-$repo/target}"
berthd="${BERTHD:-$target/release/berthd}"
containerd="${CONTAINERD:-$(command -v containerd || true)}"
runs="${RUNS:-1}"
limit="${LIMIT:-90}"
build=1
keep=0
langs=()
for a in "$@"; do
	case "$a" in
	--no-build) build=0 ;;
	--keep) keep=1 ;;
	rust | go | python | java | typescript) langs+=("$a") ;;
	*)
		echo "usage: bench/clients.sh [--no-build] [--keep] [rust|go|python|java|typescript ...]" >&2
		exit 2
		;;
	esac
done
[ ${#langs[@]} -gt 0 ] || langs=(rust go python java typescript)
fail() { echo "bench/clients.sh: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || fail "needs root (both daemons mount and run containers)"
[ -n "$containerd" ] || fail "no containerd on PATH (apt-get install containerd)"
command -v containerd-shim-runc-v2 >/dev/null || fail "no containerd-shim-runc-v2 on PATH"
[[ "$runs" =~ ^[1-9][0-9]*$ ]] || fail "RUNS must be a positive number"
[[ "$limit" =~ ^[1-9][0-9]*$ ]] || fail "LIMIT must be a positive number of seconds"

if [ "$build" = 1 ]; then
	echo "building berthd, berth-shim, the Rust example and busybox-oci (release)" >&2
	# Two builds: --example and --bin select those targets in every package named, so one command
	# would build berthd's and berth-shim's libraries but not their binaries.
	(cd "$repo" && cargo build --release -q -p berthd -p berth-shim &&
		cargo build --release -q -p berth --example run_container -p berth-testkit --bin busybox-oci)
	for l in "${langs[@]}"; do
		[ "$l" = rust ] && continue
		echo "building the $l client" >&2
		"$repo/clients/$l/build" >/dev/null
	done
fi
[ -x "$berthd" ] || fail "no berthd at $berthd (cargo build --release -p berthd -p berth-shim)"
[ -x "$(dirname "$berthd")/berth-shim" ] || fail "no berth-shim beside $berthd"

# The example of one language, as clients/<lang>/run-example starts it once built.
example() { # lang: sets cmd
	case "$1" in
	rust) cmd=("$target/release/examples/run_container") ;;
	go) cmd=("$repo/clients/go/bin/example") ;;
	python) cmd=(env "PYTHONPATH=$repo/clients/python/src:$repo/clients/python/gen"
		"$repo/clients/python/.venv/bin/python" -u "$repo/clients/python/example.py") ;;
	java) cmd=(env -C "$repo/clients/java" java
		-cp "target/classes:$(cat "$repo/clients/java/target/classpath.txt")" dev.berth.client.example.Example) ;;
	typescript) cmd=(env -C "$repo/clients/typescript" node dist/src/example.js) ;;
	esac
}

root="$(mktemp -d "${TMPDIR:-/var/tmp}/berth-clients-bench.XXXXXX")"
namespaces=()
pids=()

# Stop what we started; then everything that still names the temp root or runs in one of our
# namespaces: shims and containers outlive their daemon by design.
cleanup() {
	local rc=$? pid p ns r id
	trap - EXIT INT TERM
	for pid in "${pids[@]}"; do
		kill -TERM "$pid" 2>/dev/null || continue
		for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
		kill -KILL "$pid" 2>/dev/null || true
		wait "$pid" 2>/dev/null || true
	done
	# runc containers: berthd's runc root is under its state dir, containerd 1.6's runc.v2 shim
	# uses /run/containerd/runc/<namespace> whatever containerd's state dir is.
	for ns in "${namespaces[@]}"; do
		for r in "$root"/berthd/state/runc/"$ns" /run/containerd/runc/"$ns"; do
			[ -d "$r" ] || continue
			for id in $(ls "$r"); do
				echo "cleanup: runc delete --force $ns/$id" >&2
				runc --root "$r" delete --force "$id" >/dev/null 2>&1 || true
			done
			rmdir "$r" 2>/dev/null || true
		done
	done
	for p in /proc/[0-9]*; do
		pid="${p#/proc/}"
		[ "$pid" = $$ ] && continue
		local comm argv
		comm="$(cat "$p/comm" 2>/dev/null)" || continue
		case "$comm" in berth-shim | containerd-shim* | runc) ;; *) continue ;; esac
		argv="$(tr '\0' ' ' <"$p/cmdline" 2>/dev/null)" || continue
		[[ "$argv" == *"$root"* ]] || continue
		echo "cleanup: kill $pid $comm" >&2
		kill -KILL "$pid" 2>/dev/null || true
		# containerd 1.6 puts a shim's socket at /run/containerd/s/sha256(address/ns/id); a killed
		# shim leaves it behind.
		if [[ "$comm" == containerd-shim* ]]; then
			local a=($argv) i addr="" nsn="" cid=""
			for ((i = 0; i < ${#a[@]} - 1; i++)); do
				case "${a[i]}" in -address) addr="${a[i + 1]}" ;; -namespace) nsn="${a[i + 1]}" ;; -id) cid="${a[i + 1]}" ;; esac
			done
			[ -n "$cid" ] && rm -f "/run/containerd/s/$(printf '%s' "$addr/$nsn/$cid" | sha256sum | cut -d' ' -f1)"
		fi
	done
	while read -r m; do
		echo "cleanup: umount $m" >&2
		umount -l "$m" 2>/dev/null || true
	done < <(awk -v r="$root/" 'index($5, r) == 1 { print $5 }' /proc/self/mountinfo | sort -r)
	for ns in "${namespaces[@]}"; do
		for h in /sys/fs/cgroup/*/ /sys/fs/cgroup/; do
			[ -d "$h$ns" ] || continue
			find "$h$ns" -depth -type d -exec rmdir {} + 2>/dev/null || true
		done
	done
	if [ "$keep" = 1 ]; then
		echo "kept $root" >&2
	else
		rm -rf "$root"
	fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The daemons: each on its own dirs under the temp root, containerd with only the CRI plugin off.
mkdir -p "$root/berthd" "$root/containerd"
"$berthd" --root "$root/berthd/root" --state "$root/berthd/state" \
	--address "$root/berthd/berthd.sock" --log-level warn >"$root/berthd/berthd.log" 2>&1 &
pids+=($!)
cat >"$root/containerd/config.toml" <<EOF
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
EOF
"$containerd" --config "$root/containerd/config.toml" >"$root/containerd/containerd.log" 2>&1 &
pids+=($!)
declare -A socket=([berthd]="$root/berthd/berthd.sock" [containerd]="$root/containerd/containerd.sock")
for d in berthd containerd; do
	for _ in $(seq 300); do
		[ -S "${socket[$d]}" ] && break
		sleep 0.1
	done
	[ -S "${socket[$d]}" ] || { tail -n 20 "$root/$d/$d.log" >&2; fail "$d did not open its socket in 30 s"; }
done

# The busybox image as an OCI image-layout directory.
archive="$("$target/release/busybox-oci" "$root" busybox:bench)"
mkdir "$root/layout"
tar -xf "$archive" -C "$root/layout"

declare -A times=() failed=()
n=0
run() { # lang daemon label
	local ns="clients-bench-$$-$1-$2-$3" log="$root/$1-$2-$3.log" t0 t1 rc=0
	namespaces+=("$ns")
	example "$1"
	t0=$(date +%s%N)
	BERTH_SOCKET="${socket[$2]}" BERTH_NAMESPACE="$ns" BERTH_IMAGE_LAYOUT="$root/layout" \
		timeout -k 5 "$limit" "${cmd[@]}" >"$log" 2>&1 || rc=$?
	t1=$(date +%s%N)
	if [ "$rc" != 0 ]; then
		failed[$1/$2]=1
		[ "$rc" = 124 ] && echo "--- $1 against $2 ($3): no end within ${limit} s, killed" >&2
		echo "--- $1 against $2 ($3) failed (exit $rc):" >&2
		tail -n 20 "$log" >&2
		return
	fi
	[ "$3" = warm ] || times[$1/$2]+="$(((t1 - t0) / 1000000)) "
}
order() { # index: the two daemons, in the order this index runs them
	if (($1 % 2)); then echo containerd berthd; else echo berthd containerd; fi
}
for l in "${langs[@]}"; do
	for d in $(order $n); do run "$l" "$d" warm; done
	for ((r = 1; r <= runs; r++)); do
		for d in $(order $((n + r))); do run "$l" "$d" "$r"; done
	done
	n=$((n + 1))
done

median() { # ms...
	printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print int((v[NR / 2] + v[NR / 2 + 1]) / 2) }'
}
cell() { # lang daemon
	if [ -n "${failed[$1/$2]:-}" ]; then echo "failed"; return; fi
	local ms
	ms="$(median ${times[$1/$2]})"
	awk -v ms="$ms" 'BEGIN { printf "%.2f s", ms / 1000 }'
}
echo
echo "Each example end to end, median of $runs timed run(s) per daemon; $(nproc) cores, $(uname -r)."
echo "$("$berthd" --version 2>/dev/null | head -n1), $("$containerd" --version | awk '{ print $1, $3 }'), $(runc --version | head -n1)."
echo
echo "| client | berthd | containerd 1.6 | berthd / containerd |"
echo "|---|---:|---:|---:|"
for l in "${langs[@]}"; do
	b="$(cell "$l" berthd)"
	c="$(cell "$l" containerd)"
	ratio="–"
	if [ -z "${failed[$l/berthd]:-}" ] && [ -z "${failed[$l/containerd]:-}" ]; then
		ratio="$(awk -v b="$(median ${times[$l/berthd]})" -v c="$(median ${times[$l/containerd]})" \
			'BEGIN { printf "%.2f", b / c }')"
	fi
	echo "| $l | $b | $c | $ratio |"
done
[ ${#failed[@]} = 0 ] || fail "some examples failed (their output above; --keep keeps every run's log in the temp root)"
