#!/usr/bin/env bash
# berth build beside Debian's buildah (`buildah bud`, vfs storage), same multi-stage Dockerfile,
# same busybox base served by a docker-registry on loopback (issue 16's figures). A script, never
# a test: it prints seconds for a cold build, a no-change rebuild and a one-file-change rebuild,
# and the image sizes. Needs root, docker-registry, skopeo, buildah (apt-get install buildah), and
# berthd, berth-shim, berth and busybox-oci built (PROFILE=debug by default, or release). buildah
# runs RUN with runc: its default crun refuses this hosts' hybrid cgroup layout.
set -euo pipefail
cd "$(dirname "$0")/.."
profile=${PROFILE:-debug}
bin=target/$profile
work=$(mktemp -d /tmp/berth-bbench.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
    umount -R "$work" 2>/dev/null || true
    buildah --root "$work/buildah" --runroot "$work/buildah-run" --storage-driver vfs rm -a >/dev/null 2>&1 || true
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
archive=$("$bin/busybox-oci" "$work" busybox:latest id pwd mkdir chown chmod ls)
base=127.0.0.1:$port/bench/busybox:latest
skopeo copy -q --dest-tls-verify=false "oci-archive:$archive" "docker://$base"

"$bin/berthd" --root "$work/berthd/root" --state "$work/berthd/state" \
    --address "$work/berthd.sock" --log-level warn 2>"$work/berthd.log" & pids+=($!)
for _ in $(seq 100); do [ -S "$work/berthd.sock" ] && break; sleep 0.1; done
berth() { "$bin/berth" -H "unix://$work/berthd.sock" -n bench "$@"; }
bah() { buildah --root "$work/buildah" --runroot "$work/buildah-run" --storage-driver vfs "$@"; }

ctx=$work/ctx
mkdir -p "$ctx"
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
echo "# data 1" > "$ctx/data.txt"

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
b_cold=$(t berth build -q -t bench:v1 "$ctx")
h_cold=$(t bah bud --runtime runc --layers --tls-verify=false --network none -t bench:v1 "$ctx")
b_same=$(t berth build -q -t bench:v1 "$ctx")
h_same=$(t bah bud --runtime runc --layers --tls-verify=false --network none -t bench:v1 "$ctx")
echo "# data 2" > "$ctx/data.txt"
b_one=$(t berth build -q -t bench:v1 "$ctx")
h_one=$(t bah bud --runtime runc --layers --tls-verify=false --network none -t bench:v1 "$ctx")

b_size=$(berth images --format '{{.Size}}' bench:v1 2>/dev/null || echo "?")
h_size=$(bah images --format '{{.Size}}' localhost/bench:v1)
ratio() { echo "scale=2; $1 / $2" | bc; }
printf "%-22s %10s %10s %8s\n" step "berth(s)" "buildah(s)" ratio
printf "%-22s %10.2f %10.2f %8s\n" "cold build" "$b_cold" "$h_cold" "$(ratio "$b_cold" "$h_cold")"
printf "%-22s %10.2f %10.2f %8s\n" "no-change rebuild" "$b_same" "$h_same" "$(ratio "$b_same" "$h_same")"
printf "%-22s %10.2f %10.2f %8s\n" "one-file rebuild" "$b_one" "$h_one" "$(ratio "$b_one" "$h_one")"
echo "image size: berth $b_size (compressed, as berth images shows), buildah $h_size (vfs, uncompressed)"
echo "output check: $(berth run --rm bench:v1)"
