#!/usr/bin/env bash
# What clients/python needs from the system: python3 with venv (Debian splits it out); ./build
# installs the pinned Python packages into its own virtualenv.
set -euo pipefail
if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends python3 python3-venv
fi
