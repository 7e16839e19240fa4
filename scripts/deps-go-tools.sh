#!/usr/bin/env bash
# What berth's tests need from the Go module proxy, cached and idempotent:
#  - containerd v2's go.mod and the .proto files of the API module it requires
#    (proto/tests/wire_compat.rs compares berth-api with them), in the Go module cache;
#  - cri-tools' go.mod and the k8s.io/cri-api module it requires (the same test compares
#    berth-api's CRI protos with its api.proto), in the Go module cache;
#  - containerd v2's `ctr` (the e2e ctr scenarios run with it as well as with Debian's 1.6),
#    installed into $BERTH_TEST_BIN (default /usr/local/lib/berth-test/bin);
#  - the modules of compat/containerd-v2, the Go test program the e2e test containerd_v2 runs.
set -euo pipefail
CONTAINERD_V2=v2.4.2
CRI_TOOLS=v1.37.0
BIN=${BERTH_TEST_BIN:-/usr/local/lib/berth-test/bin}
here=$(cd "$(dirname "$0")/.." && pwd)

command -v go >/dev/null || { echo "berth's tests need a Go toolchain (go) for containerd v2's tools" >&2; exit 1; }
modcache=$(go env GOMODCACHE)

gomod="$modcache/cache/download/github.com/containerd/containerd/v2/@v/$CONTAINERD_V2.mod"
[ -f "$gomod" ] || go mod download github.com/containerd/containerd/v2@"$CONTAINERD_V2"
api=$(awk '$1 == "github.com/containerd/containerd/api" { print $2; exit }' "$gomod")
[ -n "$api" ] || { echo "$gomod requires no github.com/containerd/containerd/api" >&2; exit 1; }
[ -d "$modcache/github.com/containerd/containerd/api@$api" ] ||
  go mod download github.com/containerd/containerd/api@"$api"

critools_mod="$modcache/cache/download/sigs.k8s.io/cri-tools/@v/$CRI_TOOLS.mod"
[ -f "$critools_mod" ] || go mod download sigs.k8s.io/cri-tools@"$CRI_TOOLS"
cri_api=$(awk '$1 == "k8s.io/cri-api" { print $2; exit }' "$critools_mod")
[ -n "$cri_api" ] || { echo "$critools_mod requires no k8s.io/cri-api" >&2; exit 1; }
[ -d "$modcache/k8s.io/cri-api@$cri_api" ] || go mod download k8s.io/cri-api@"$cri_api"

if ! "$BIN/ctr" --version 2>/dev/null | grep -q " ${CONTAINERD_V2#v}"; then
  mkdir -p "$BIN"
  GOBIN="$BIN" go install github.com/containerd/containerd/v2/cmd/ctr@"$CONTAINERD_V2"
fi

(cd "$here/compat/containerd-v2" && go mod download)
