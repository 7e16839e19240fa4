#!/usr/bin/env bash
# The bench's peers that Debian does not package, built from the Go module proxy into
# $BERTH_BENCH_BIN (default /usr/local/lib/berth-bench/bin), each skipped when already there:
#  - containerd v2.4.2: `containerd` and `containerd-shim-runc-v2` (the shim has to be on PATH
#    when containerd starts a task; berth-bench puts this dir first on containerd 2.4's PATH);
#  - nerdctl, the CLI peer of issue 13's figures, by scripts/deps-nerdctl.sh (v2.3.5 when Go is
#    1.26.3 or newer, else v2.0.3; why `go install` cannot build it is said there);
#  - cri-podstart, bench/cri.sh's timer of the three pod-start RPCs (bench/cri-podstart).
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

# bench/cri.sh's pod-start driver (a module of the project's own; go build is incremental).
(cd "$(dirname "$0")/cri-podstart" && CGO_ENABLED=0 go build -o "$BIN/cri-podstart" .)

# nerdctl, built as the tests build it (one recipe), into this bench bin dir.
BERTH_TEST_BIN="$BIN" "$(dirname "$0")/../scripts/deps-nerdctl.sh"
"$BIN/containerd" --version
"$BIN/nerdctl" --version
