#!/usr/bin/env bash
# Installs what the TypeScript and Java clients build with (run as root; called by scripts/deps.sh):
# Node.js with npm, and a JDK 17 with Maven, from Debian when not already present. Idempotent.
# The packages themselves (npm's, Maven's) are fetched by clients/{typescript,java}/build.
set -euo pipefail
need=()
command -v node >/dev/null && command -v npm >/dev/null || need+=(nodejs npm)
command -v javac >/dev/null || need+=(openjdk-17-jdk-headless)
command -v mvn >/dev/null || need+=(maven)
if [ ${#need[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
