#!/usr/bin/env bash
# Installs what berth's container networking runs (berth-net, run as root): Debian's CNI plugins
# (in /usr/lib/cni), iproute2 (`ip netns`, used by the tests and the plugins' hosts) and iptables
# (the portmap and firewall plugins), and curl, the HTTP client the e2e tests reach published
# ports with. Idempotent: nothing is fetched when all are installed.
set -euo pipefail
packages=(containernetworking-plugins iproute2 iptables curl)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
