#!/usr/bin/env bash
# What the observability e2e tests need: a real Prometheus (Debian's package) to scrape berthd's
# [metrics] listener. Idempotent: installs only when missing.
set -euo pipefail
if ! command -v prometheus >/dev/null; then
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends prometheus
	# The package starts its own service; the tests run theirs on temp dirs and ports.
	systemctl disable --now prometheus >/dev/null 2>&1 || true
fi
