#!/usr/bin/env bash
# berth build beside Debian's buildah (`buildah bud`, overlay storage, else vfs), same multi-stage Dockerfile,
# same busybox base served by a docker-registry on loopback (issue 16's figures). A script, never
# a test: it prints seconds for a cold build, a no-change rebuild and a one-file-change rebuild,
# and the image sizes (both pushed to the registry: the sum of their compressed layers).
# $ROUNDS rounds (default 5), each on a fresh berthd root and a fresh buildah
# root, the two tools interleaved step by step (which one goes first alternates by round) so both
# see the same machine load; it reports per-step medians, the worst sample, and the median of the
# per-round ratios. Needs root, docker-registry, skopeo, buildah (apt-get install buildah), and
# berthd, berth-shim and berth built (PROFILE=debug by default, or release; BIN=DIR takes them
# from DIR), busybox-oci (in BIN or target/debug: cargo build -p berth-testkit --bin busybox-oci)
# for a busybox base (else the Debian fixture is the base). DOCKERFILE=c builds issue 16's proof
# instead (gcc in a Debian stage, scripts/debian-gcc-image.sh). STORAGE=vfs forces buildah's vfs
# driver; overlay is tried first and vfs used, and said, when it does not work here. buildah
# runs RUN with runc: its default crun refuses this hosts' hybrid cgroup layout.
set -euo pipefail
cd "$(dirname "$0")/.."
profile=${PROFILE:-debug}
bin=${BIN:-target/$profile}
work=$(mktemp -d /var/tmp/berth-bbench.XXXXXX)
driver=${STORAGE:-overlay}
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
    umount -R "$work" 2>/dev/null || true
    for r in "$work"/r*; do
        [ -d "$r/buildah" ] || continue
        buildah --root "$r/buildah" --runroot "$r/buildah-run" --storage-driver "$driver" rm -a >/dev/null 2>&1 || true
        buildah --root "$r/buildah" --runroot "$r/buildah-run" --storage-driver "$driver" rmi -af >/dev/null 2>&1 || true
    done
    umount -R "$work" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$work/registry.yml" <<YML
version: 0.1
log:
  level: error
storage:
  filesystem:
    rootdirectory: $work/registry
http:
  addr: 127.0.0.1:$port
YML
docker-registry serve "$work/registry.yml" >/dev/null 2>&1 & pids+=($!)
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/v2/" >/dev/null && break; sleep 0.1; done
# The base: busybox from busybox-oci when built, else the pull group's cached Debian image
# fixture (`berth-bench pull` builds it; the Dockerfile needs only sh and coreutils).
bboci=$bin/busybox-oci
[ -x "$bboci" ] || bboci=target/debug/busybox-oci
if [ -x "$bboci" ]; then
    archive=$("$bboci" "$work" busybox:latest id pwd mkdir chown chmod ls)
    base=127.0.0.1:$port/bench/busybox:latest
    skopeo copy -q --dest-tls-verify=false "oci-archive:$archive" "docker://$base"
else
    base=127.0.0.1:$port/bench/debian:v1
    skopeo copy -q --dest-tls-verify=false \
        "oci:/var/tmp/berth-bench-fixtures/debian-bookworm-v1/oci:v1" "docker://$base"
fi

ctx=$work/ctx
mkdir -p "$ctx"
if [ "${DOCKERFILE:-shell}" = c ]; then
    # Issue 16's proof Dockerfile: a C program compiled by gcc in a Debian stage (the test's
    # image, scripts/debian-gcc-image.sh), its static binary copied into the busybox stage. The
    # one-file change is data.txt, copied before the compile: gcc runs again.
    gcc_archive=$(scripts/debian-gcc-image.sh)
    gcc_base=127.0.0.1:$port/bench/debian-gcc:v1
    skopeo copy -q --dest-tls-verify=false "oci-archive:$gcc_archive:v1" "docker://$gcc_base"
    cat > "$ctx/Dockerfile" <<DF
FROM $gcc_base AS compile
WORKDIR /src
COPY hello.c ./
COPY data.txt ./
RUN gcc -static -O2 -DDATA="\"\$(head -n1 data.txt)\"" -o hello hello.c
FROM $base
COPY --from=compile /src/hello /usr/local/bin/hello
CMD ["/usr/local/bin/hello"]
DF
    printf '#include <stdio.h>\nint main(void) { printf("hello from C: %%s\\n", DATA); return 0; }\n' >"$ctx/hello.c"
else
cat > "$ctx/Dockerfile" <<DF
FROM $base AS compile
WORKDIR /src
COPY gen.sh ./
RUN sh gen.sh berth
COPY data.txt ./
RUN cat data.txt >> hello

FROM $base
COPY --from=compile /src/hello /usr/local/bin/hello
RUN mkdir -p /app && chown 1000 /app
USER 1000
WORKDIR /app
CMD ["/usr/local/bin/hello"]
DF
printf "echo '#!/bin/sh' > hello\necho \"echo hello from \$1\" >> hello\nchmod 755 hello\n" > "$ctx/gen.sh"
fi

# buildah's overlay driver needs overlay mounts on its root's file system; probe it once.
if [ "$driver" = overlay ] && ! buildah --root "$work/probe" --runroot "$work/probe-run" \
    --storage-driver overlay from --tls-verify=false "$base" >/dev/null 2>"$work/probe.log"; then
    echo "buildah's overlay driver does not work here ($(tail -1 "$work/probe.log")); using vfs" >&2
    driver=vfs
fi
buildah --root "$work/probe" --runroot "$work/probe-run" --storage-driver "$driver" rm -a >/dev/null 2>&1 || true
buildah --root "$work/probe" --runroot "$work/probe-run" --storage-driver "$driver" rmi -af >/dev/null 2>&1 || true
umount -R "$work/probe" 2>/dev/null || true
rm -rf "$work/probe" "$work/probe-run"

rounds=${ROUNDS:-5}
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
berthd_pid=
start_berthd() { # ROUND
    "$bin/berthd" --root "$work/r$1/berthd/root" --state "$work/r$1/berthd/state" \
        --address "$work/r$1/berthd.sock" --log-level warn 2>"$work/r$1/berthd.log" &
    berthd_pid=$!
    pids+=("$berthd_pid")
    for _ in $(seq 100); do [ -S "$work/r$1/berthd.sock" ] && break; sleep 0.1; done
}
stop_berthd() {
    kill "$berthd_pid" 2>/dev/null || true
    wait "$berthd_pid" 2>/dev/null || true
}
berth() { "$bin/berth" -H "unix://$work/r$round/berthd.sock" -n bench "$@"; }
bah() { buildah --root "$work/r$round/buildah" --runroot "$work/r$round/buildah-run" --storage-driver "$driver" "$@"; }
bah_build() { bah bud --runtime runc --layers --tls-verify=false --network none -t bench:v1 "$ctx"; }
berth_build() { berth build -q -t bench:v1 "$ctx"; }

# Seconds of one command; its output goes to the log, and a failure stops the bench with it.
t() {
    local s e
    s=$(date +%s.%N)
    if ! "$@" >>"$work/steps.log" 2>&1; then
        echo "failed: $*" >&2
        tail -20 "$work/steps.log" >&2
        exit 1
    fi
    e=$(date +%s.%N)
    echo "$e - $s" | bc
}
# One step of both tools, in this round's order; appends "berth buildah" seconds to $work/STEP.
step() { # STEP
    local b h
    if ((round % 2)); then
        h=$(t bah_build); b=$(t berth_build)
    else
        b=$(t berth_build); h=$(t bah_build)
    fi
    echo "$b $h" >>"$work/$1"
}
for round in $(seq "$rounds"); do
    mkdir -p "$work/r$round"
    echo "# data 1" > "$ctx/data.txt"
    start_berthd "$round"
    step cold
    step same
    echo "# data 2 of round $round" > "$ctx/data.txt"
    step one
    if ((round == rounds)); then
        # Sizes as a registry holds them: config and compressed layers of each pushed manifest.
        berth tag bench:v1 "127.0.0.1:$port/out/berth:v1" >/dev/null
        berth push "127.0.0.1:$port/out/berth:v1" >/dev/null 2>&1
        bah push -q --tls-verify=false bench:v1 "docker://127.0.0.1:$port/out/buildah:v1" >/dev/null 2>&1
        size() { skopeo inspect --raw --tls-verify=false "docker://127.0.0.1:$port/out/$1:v1" |
            jq '[.config.size] + [.layers[].size] | add'; }
        layers() { skopeo inspect --raw --tls-verify=false "docker://127.0.0.1:$port/out/$1:v1" |
            jq '.layers | length'; }
        b_size="$(size berth) bytes in $(layers berth) layers"
        h_size="$(size buildah) bytes in $(layers buildah) layers"
        check=$(berth run --rm bench:v1)
    fi
    stop_berthd
    bah rm -a >/dev/null 2>&1 || true
    bah rmi -af >/dev/null 2>&1 || true
    umount -R "$work/r$round" 2>/dev/null || true
    rm -rf "$work/r$round"
done

# "median max" of column COL (1 berth, 2 buildah) of FILE; "median" of the per-line ratios.
col() { awk -v c="$2" '{ print $c }' "$1" | sort -g | awk '{ v[NR] = $1 } END {
    m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2; printf "%.2f %.2f", m, v[NR] }'; }
ratio() { awk '{ print $1 / $2 }' "$1" | sort -g | awk '{ v[NR] = $1 } END {
    m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2; printf "%.2f", m }'; }
echo "$rounds rounds, interleaved; buildah storage: $driver; load average at start: $load_start, at end: $(cut -d' ' -f1-3 /proc/loadavg)"
printf "%-20s %16s %16s %12s %7s\n" step "berth med/max s" "buildah med/max" "ratio(med)" target
for s in cold:"cold build":0.8 same:"no-change rebuild":0.5 one:"one-file rebuild":0.5; do
    IFS=: read -r f name target <<<"$s"
    read -r bm bx < <(col "$work/$f" 1; echo)
    read -r hm hx < <(col "$work/$f" 2; echo)
    printf "%-20s %8s/%-7s %8s/%-7s %12s %7s\n" "$name" "$bm" "$bx" "$hm" "$hx" "$(ratio "$work/$f")" "<= $target"
done
echo "image size in the registry (config + compressed layers): berth $b_size, buildah $h_size"
echo "output check: $check"
