#!/usr/bin/env bash
# What clients/go needs from the system: a Go toolchain at least as new as go.mod's `go` line
# (Debian 12's golang package is too old, so it is not installed from apt; a toolchain download
# is not attempted), protoc and the well-known .proto files (scripts/deps.sh installs those). The
# generators are installed by ./build, cached.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
want="$(sed -n 's/^go \([0-9.]*\)$/\1/p' "$here/go.mod")"
command -v go >/dev/null || { echo "clients/go needs Go >= $want on PATH" >&2; exit 1; }
have="$(GOTOOLCHAIN=local go env GOVERSION)"
have="${have#go}"
if [ "$(printf '%s\n%s\n' "$want" "$have" | sort -V | head -n1)" != "$want" ]; then
	echo "clients/go needs Go >= $want, found $have" >&2
	exit 1
fi
