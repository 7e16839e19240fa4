#!/usr/bin/env bash
# The whole test suite: installs dependencies, builds once, runs every crate's tests (unit, wire
# compatibility, end-to-end against a real berthd with the real ctr). Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "the end-to-end tests mount, lock and chown: run as root" >&2; exit 1; }
scripts/deps.sh
cargo build --workspace --all-targets --locked
cargo test --workspace --locked -- --test-threads=2
