#!/usr/bin/env bash
# What clients/go needs from the system: a Go toolchain recent enough for gRPC-Go (Debian 12's
# golang package is too old, so it is not installed from apt), protoc and the well-known .proto
# files (scripts/deps.sh installs those). The generators are installed by ./build, cached.
set -euo pipefail
command -v go >/dev/null || { echo "clients/go needs Go >= 1.24 on PATH (https://go.dev/dl)" >&2; exit 1; }
v="$(go env GOVERSION)"
v="${v#go}"
IFS=. read -r major minor _ <<<"$v"
if [ "$major" -lt 1 ] || { [ "$major" -eq 1 ] && [ "$minor" -lt 24 ]; }; then
	echo "clients/go needs Go >= 1.24, found $v" >&2
	exit 1
fi
