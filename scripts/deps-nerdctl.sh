#!/usr/bin/env bash
# nerdctl (containerd's docker-compatible CLI), which client/tests/nerdctl.rs drives berthd with
# and bench/peers.sh runs on containerd 2.4, built from the Go module proxy into
# $BERTH_TEST_BIN (default /usr/local/lib/berth-test/bin). Cached and idempotent: nothing is
# built when the binary already reports the version.
# v2.3.5 when Go is 1.26.3 or newer (its go.mod asks for it), else v2.0.3.
# `go install ...@v2.3.5` refuses the module: its go.mod replaces its test framework
# (mod/tigron) with a directory of the repository that the module's zip does not hold, and the
# proxy does not serve that module either. So it is built in a copy of the module with the
# replace and the require dropped and the non-_test files of cmd/ that import the framework
# (test helpers: cmd/nerdctl/helpers/testing_linux.go) left out.
# Called from scripts/deps.sh. nerdctl also needs the CNI plugins (scripts/deps-cni.sh).
set -euo pipefail
MODULE=github.com/containerd/nerdctl/v2
BIN=${BERTH_TEST_BIN:-/usr/local/lib/berth-test/bin}

command -v go >/dev/null || { echo "nerdctl needs a Go toolchain (go)" >&2; exit 1; }

# "go1.26.8" -> 1 26 8.
read -r major minor patch < <(go env GOVERSION | sed -E 's/^go//; s/[^0-9.].*$//; s/\./ /g')
if (( major > 1 || (major == 1 && (minor > 26 || (minor == 26 && ${patch:-0} >= 3))) )); then
  NERDCTL=v2.3.5
else
  NERDCTL=v2.0.3
fi

# Prints "nerdctl version 2.3.5"; captured before grep reads it (see deps-cri-tools.sh).
built() {
  local out
  out=$("$BIN/nerdctl" --version 2>/dev/null) || return 1
  grep -qx "nerdctl version ${NERDCTL#v}" <<<"$out"
}
built && exit 0

src=$(go mod download -json "$MODULE@$NERDCTL" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
[ -d "$src" ] || { echo "nerdctl $NERDCTL is not in the module cache" >&2; exit 1; }
work=$(mktemp -d)
trap 'chmod -R u+w "$work" && rm -rf "$work"' EXIT
cp -r "$src/." "$work"
chmod -R u+w "$work"
cd "$work"
# The replaced modules (local paths inside the repository) are required by its tests only.
# `replace PATH [VERSION] => ./DIR`: the replace is dropped by PATH[@VERSION].
awk '$1 == "replace" && $NF ~ /^\.\.?\// { print $2, ($3 == "=>" ? "" : "@" $3) }' go.mod |
  while read -r m v; do
    go mod edit -dropreplace="$m$v" -droprequire="$m"
  done
if grep -qE '^replace' go.mod; then
  echo "nerdctl $NERDCTL: a replace directive is left in go.mod" >&2
  exit 1
fi
grep -rlE --include='*.go' 'nerdctl/mod/tigron|nerdctl/v2/pkg/testutil"' cmd |
  grep -v '_test\.go$' | xargs -r rm --
# The version is stamped as nerdctl's Makefile does (a module copy has no VCS information).
CGO_ENABLED=0 GOFLAGS="-mod=mod -trimpath" go build -o "$work/nerdctl.bin" \
  -ldflags "-X $MODULE/pkg/version.Version=$NERDCTL" ./cmd/nerdctl
mkdir -p "$BIN"
install -m 0755 "$work/nerdctl.bin" "$BIN/nerdctl"
built || { echo "nerdctl in $BIN does not report $NERDCTL after the build" >&2; exit 1; }
