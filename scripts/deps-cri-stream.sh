#!/usr/bin/env bash
# The Go modules of cri-stream/tests/go (client-go's SPDY and WebSocket executors and its
# port-forwarder), fetched into the Go module cache so cri-stream's tests build the client
# offline. Idempotent: `go mod download` skips what the cache already holds.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
command -v go >/dev/null || { echo "cri-stream's tests need a Go toolchain (go)" >&2; exit 1; }
(cd "$here/cri-stream/tests/go" && go mod download)
