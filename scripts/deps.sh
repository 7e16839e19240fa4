#!/usr/bin/env bash
# Installs what berth's build, demo and tests need on Debian (run as root). Idempotent.
set -euo pipefail
packages=(
  containerd            # its `ctr` client drives berthd in the tests; its daemon is the benchmark baseline
  runc                  # the OCI runtime
  crun                  # a second runc-compatible runtime (ctr run --runc-binary crun)
  criu                  # checkpoint/restore through runc
  golang-github-containerd-cgroups-dev     # upstream cgroups metrics .proto files, compared by the wire test
  busybox-static        # the tests build a busybox OCI image from it
  docker-registry       # a real registry on loopback for the pull tests
  skopeo                # pushes the test images into that registry and makes docker-archives
  debootstrap           # scripts/debian-gcc-image.sh: the Debian gcc image of client/tests/build.rs
  umoci                 # packs that rootfs as an OCI image
  protobuf-compiler     # protoc, for the containerd-client crate's build script (berth itself needs none)
  libprotobuf-dev       # the well-known .proto files protoc includes
  golang-github-containerd-containerd-dev  # upstream .proto files the wire-compatibility test compares against
  golang-github-gogo-protobuf-dev          # gogo.proto, imported by the upstream files
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
"$(dirname "$0")/deps-cni.sh"  # CNI plugins, iproute2, iptables for berth-net's networks
"$(dirname "$0")/deps-go-tools.sh"  # containerd v2: ctr 2.x, its API .proto files, the Go client test module
"$(dirname "$0")/deps-cri-tools.sh"  # critest and crictl v1.37.0, the CRI's validation suite and client (scripts/critest.sh)
"$(dirname "$0")/deps-nerdctl.sh"  # nerdctl v2.3.5, the docker-compatible CLI that client/tests/nerdctl.rs drives berthd with
"$(dirname "$0")/deps-cri-stream.sh"  # client-go for the CRI streaming server tests
command -v cargo >/dev/null || { echo "berth needs a Rust toolchain (cargo): install it with rustup" >&2; exit 1; }
"$(dirname "$0")/deps-grpc-peers.sh"   # grpcio and @grpc/grpc-js for the :authority e2e test
for d in "$(dirname "$0")"/../clients/*/deps.sh; do "$d"; done  # each generated client's system needs
"$(dirname "$0")"/../clients/deps-typescript-java.sh  # node/npm, JDK 17 and Maven for the TypeScript and Java clients
"$(dirname "$0")/deps-observe.sh"  # Prometheus, which scrapes berthd's [metrics] listener in e2e
