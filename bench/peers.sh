#!/usr/bin/env bash
# The bench's peers that Debian does not package, built from the Go module proxy into
# $BERTH_BENCH_BIN (default /usr/local/lib/berth-bench/bin), each skipped when already there:
#  - containerd v2.4.2: `containerd` and `containerd-shim-runc-v2` (the shim has to be on PATH
#    when containerd starts a task; berth-bench puts this dir first on containerd 2.4's PATH);
#  - nerdctl, the CLI peer of issue 13's figures: v2.3.5 when Go is 1.26.3 or newer, else v2.0.3.
#    `go install` refuses v2.3.5: its go.mod replaces its test framework (mod/tigron) with a
#    directory of the repository that the module's zip does not hold, and the proxy does not serve
#    that module either. So it is built in a copy of the module with the replace and the require
#    dropped and the one non-_test file of cmd/ that imports the framework (test helpers,
#    cmd/nerdctl/helpers/testing_linux.go) left out.
# Bench-only: not called from scripts/deps.sh (CI never times anything). ctr 2.4.2 comes from
# scripts/deps-go-tools.sh.
set -euo pipefail
CONTAINERD=v2.4.2
BIN=${BERTH_BENCH_BIN:-/usr/local/lib/berth-bench/bin}

command -v go >/dev/null || { echo "peers.sh needs a Go toolchain (go)" >&2; exit 1; }
mkdir -p "$BIN"

# The fixtures' tools (the images and pull groups build their images with them).
missing=()
for tool in umoci debootstrap skopeo docker-registry; do
  command -v "$tool" >/dev/null || missing+=("$tool")
done
if ((${#missing[@]})); then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
fi

# No cgo: the builtins that need it (btrfs) are left out, and the binaries are static.
# Whether `$@` prints a line with " VERSION" (read whole: grep -q would SIGPIPE a longer output).
prints() {
  local version=$1 out
  shift
  out=$("$@" 2>/dev/null) || return 1
  [[ "$out" == *" $version"* ]]
}

if ! prints "${CONTAINERD#v}" "$BIN/containerd" --version; then
  echo "peers.sh: building containerd $CONTAINERD" >&2
  CGO_ENABLED=0 GOBIN="$BIN" go install \
    -ldflags "-X github.com/containerd/containerd/v2/version.Version=${CONTAINERD#v}" \
    github.com/containerd/containerd/v2/cmd/containerd@"$CONTAINERD"
fi
if ! prints "${CONTAINERD#v}" "$BIN/containerd-shim-runc-v2" -v; then
  echo "peers.sh: building containerd-shim-runc-v2 $CONTAINERD" >&2
  CGO_ENABLED=0 GOBIN="$BIN" go install \
    -ldflags "-X github.com/containerd/containerd/v2/version.Version=${CONTAINERD#v}" \
    github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2@"$CONTAINERD"
fi

# "go1.26.8" -> 1 26 8; v2.3.5 needs Go 1.26.3.
read -r major minor patch < <(go env GOVERSION | sed -E 's/^go//; s/[^0-9.].*$//; s/\./ /g')
if (( major > 1 || (major == 1 && (minor > 26 || (minor == 26 && ${patch:-0} >= 3))) )); then
  NERDCTL=v2.3.5
else
  NERDCTL=v2.0.3
fi
if ! prints "${NERDCTL#v}" "$BIN/nerdctl" --version; then
  echo "peers.sh: building nerdctl $NERDCTL" >&2
  src=$(go mod download -json github.com/containerd/nerdctl/v2@"$NERDCTL" |
    sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
  [ -d "$src" ] || { echo "peers.sh: nerdctl $NERDCTL not in the module cache" >&2; exit 1; }
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  cp -r "$src/." "$work"
  chmod -R u+w "$work"
  (
    cd "$work"
    # The replaced modules (local paths inside the repository) are required by its tests only.
    # `replace PATH [VERSION] => ./DIR`: the replace is dropped by PATH[@VERSION].
    awk '$1 == "replace" && $NF ~ /^\.\.?\// { print $2, ($3 == "=>" ? "" : "@" $3) }' go.mod |
      while read -r m v; do
        go mod edit -dropreplace="$m$v" -droprequire="$m"
      done
    if grep -qE '^replace' go.mod; then
      echo "peers.sh: nerdctl $NERDCTL: a replace directive is left in go.mod" >&2
      exit 1
    fi
    grep -rlE --include='*.go' 'nerdctl/mod/tigron|nerdctl/v2/pkg/testutil"' cmd |
      grep -v '_test\.go$' | xargs -r rm --
    CGO_ENABLED=0 GOFLAGS=-mod=mod go build -o "$BIN/nerdctl" \
      -ldflags "-X github.com/containerd/nerdctl/v2/pkg/version.Version=$NERDCTL" ./cmd/nerdctl
  )
fi
"$BIN/containerd" --version
"$BIN/nerdctl" --version
