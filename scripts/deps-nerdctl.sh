#!/usr/bin/env bash
# nerdctl (containerd's docker-compatible CLI), which client/tests/nerdctl.rs drives berthd with,
# built from the Go module cache into $BERTH_TEST_BIN (default /usr/local/lib/berth-test/bin).
# Cached and idempotent: nothing is built when the binary already reports $NERDCTL.
# `go install ...@v2.3.5` refuses the module: its go.mod replaces a test-only module
# (mod/tigron) with a directory the module zip does not carry, and the module proxy has no
# published version of it. The build runs in a writable copy with that requirement and its
# replace dropped, and without cmd/nerdctl/helpers/testing_linux.go, the one non-test file on
# the CLI's import path that reaches tigron (its helpers are called from _test.go files only).
# Called from scripts/deps.sh. nerdctl also needs the CNI plugins (scripts/deps-cni.sh).
set -euo pipefail
NERDCTL=v2.3.5
MODULE=github.com/containerd/nerdctl/v2
BIN=${BERTH_TEST_BIN:-/usr/local/lib/berth-test/bin}

command -v go >/dev/null || { echo "nerdctl needs a Go toolchain (go 1.26.3 or newer)" >&2; exit 1; }

# Prints "nerdctl version 2.3.5"; captured before grep reads it (see deps-cri-tools.sh).
built() {
  local out
  out=$("$BIN/nerdctl" --version 2>/dev/null) || return 1
  grep -qx "nerdctl version ${NERDCTL#v}" <<<"$out"
}
built && exit 0

modcache=$(go env GOMODCACHE)
src="$modcache/$MODULE@$NERDCTL"
[ -d "$src" ] || go mod download "$MODULE@$NERDCTL"

work=$(mktemp -d)
trap 'chmod -R u+w "$work" && rm -rf "$work"' EXIT
cp -r "$src" "$work/nerdctl"
chmod -R u+w "$work/nerdctl"
cd "$work/nerdctl"
go mod edit -dropreplace github.com/containerd/nerdctl/mod/tigron@v0.0.0 \
  -droprequire github.com/containerd/nerdctl/mod/tigron
rm cmd/nerdctl/helpers/testing_linux.go
# The version is stamped as nerdctl's Makefile does (a module copy has no VCS information).
export CGO_ENABLED=0 GOFLAGS="-mod=mod -trimpath"
go build -o "$work/nerdctl.bin" -ldflags "-X $MODULE/pkg/version.Version=$NERDCTL" ./cmd/nerdctl
mkdir -p "$BIN"
install -m 0755 "$work/nerdctl.bin" "$BIN/nerdctl"
built || { echo "nerdctl in $BIN does not report $NERDCTL after the build" >&2; exit 1; }
