#!/usr/bin/env bash
# Installs the gRPC client libraries of other languages that the authority e2e test drives berthd
# with (server/tests/e2e/authority.rs): grpcio from PyPI in a venv, @grpc/grpc-js from npm, both
# beside the clients in server/tests/e2e/authority-clients. Idempotent; skips what is present.
set -euo pipefail
dir="$(cd "$(dirname "$0")/../server/tests/e2e/authority-clients" && pwd)"
grpcio="$(sed -n 's/^grpcio==//p' "$dir/requirements.txt")"

apt_missing=()
command -v python3 >/dev/null || apt_missing+=(python3)
python3 -c 'import ensurepip, venv' 2>/dev/null || apt_missing+=(python3-venv)
command -v node >/dev/null || apt_missing+=(nodejs)
command -v npm >/dev/null || apt_missing+=(npm)
if [ ${#apt_missing[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${apt_missing[@]}"
fi

if ! "$dir/.venv/bin/python" -c "import grpc, sys; sys.exit(grpc.__version__ != '$grpcio')" 2>/dev/null; then
  python3 -m venv "$dir/.venv"
  "$dir/.venv/bin/pip" install -q --disable-pip-version-check -r "$dir/requirements.txt"
fi

# npm ci wipes node_modules; run it only when the lock file changed since the last install.
if ! cmp -s "$dir/package-lock.json" "$dir/node_modules/.berth-installed-lock" 2>/dev/null; then
  (cd "$dir" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
  cp "$dir/package-lock.json" "$dir/node_modules/.berth-installed-lock"
fi
