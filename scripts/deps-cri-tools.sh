#!/usr/bin/env bash
# critest (the CRI validation suite, a Go test binary) and crictl from sigs.k8s.io/cri-tools,
# built from the Go module cache into $BERTH_TEST_BIN (default /usr/local/lib/berth-test/bin).
# Cached and idempotent: nothing is built when both binaries already report $CRI_TOOLS.
# Called from scripts/deps.sh; scripts/critest.sh and scripts/critest/peer.sh call it too when
# the binaries are missing.
set -euo pipefail
CRI_TOOLS=v1.37.0
MODULE=sigs.k8s.io/cri-tools
BIN=${BERTH_TEST_BIN:-/usr/local/lib/berth-test/bin}

command -v go >/dev/null || { echo "critest and crictl need a Go toolchain (go)" >&2; exit 1; }

# Both print "<name> version: <version>" without the leading v (the version cri-tools' Makefile
# stamps in with -ldflags, which we stamp the same way).
# The output is captured before grep reads it: `grep -q` stops at the first match, and under
# pipefail the writer's SIGPIPE (critest prints a second line) would fail the check at random.
built() {
  local critest crictl
  critest=$("$BIN/critest" -version 2>/dev/null) || return 1
  crictl=$("$BIN/crictl" --version 2>/dev/null) || return 1
  grep -qx "critest version: ${CRI_TOOLS#v}" <<<"$critest" &&
    grep -qx "crictl version ${CRI_TOOLS#v}" <<<"$crictl"
}
built && exit 0

modcache=$(go env GOMODCACHE)
src="$modcache/$MODULE@$CRI_TOOLS"
[ -d "$src" ] || go mod download "$MODULE@$CRI_TOOLS"

# The module cache is read-only and its zip has no vendor/: build in a writable copy, with the
# dependencies go.sum pins fetched through the module proxy.
work=$(mktemp -d)
trap 'chmod -R u+w "$work" && rm -rf "$work"' EXIT
cp -r "$src" "$work/cri-tools"
chmod -R u+w "$work/cri-tools"
cd "$work/cri-tools"
ldflags="-X $MODULE/pkg/version.Version=${CRI_TOOLS#v}"
export CGO_ENABLED=0 GOFLAGS="-mod=mod -trimpath"
mkdir -p "$BIN"
go test -c -o "$work/critest" -ldflags "$ldflags" ./cmd/critest
go build -o "$work/crictl" -ldflags "$ldflags" ./cmd/crictl
install -m 0755 "$work/critest" "$work/crictl" "$BIN/"
built || { echo "critest/crictl in $BIN do not report $CRI_TOOLS after the build" >&2; exit 1; }
