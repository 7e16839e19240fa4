#!/usr/bin/env bash
# The Debian build image of client/tests/build_debian.rs (issue 16's multi-stage proof): Debian
# bookworm, debootstrap --variant=minbase plus gcc and libc6-dev, one gzip layer, made by the
# bench's Debian recipe (bench/src/fixtures/debian-image.sh: debootstrap + umoci) with other
# packages and no second layer. Debootstraps from the Debian mirror the apt sources name, the one
# a machine without internet can reach; no mirror there is an error, never a guessed host.
#
# usage: debian-gcc-image.sh
# Prints the path of the OCI archive (for `ctr images import`; its one image is tagged "v1").
# Built once per machine into $BERTH_TEST_CACHE/debian-gcc-v1 (default /var/cache/berth-test),
# the downloaded packages kept in $BERTH_TEST_CACHE/debs; later runs print the cached path. Runs
# as root (debootstrap, chroot). Concurrent callers wait on a lock for the one build.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
CACHE=${BERTH_TEST_CACHE:-/var/cache/berth-test}
# Bump when the recipe changes, so a stale cache is rebuilt rather than reused.
VERSION=debian-gcc-v1
out=$CACHE/$VERSION

mkdir -p "$CACHE"
exec 9>"$CACHE/$VERSION.lock"
flock 9
if [ ! -e "$out/ready" ]; then
  for tool in debootstrap umoci; do
    command -v "$tool" >/dev/null || { echo "debian-gcc-image: $tool is missing (scripts/deps.sh installs it)" >&2; exit 1; }
  done
  # The first Debian archive URL of the apt sources: a one-line `deb [opts] URL suite ...` or a
  # deb822 `URIs: URL ...` field (files in the order apt reads them).
  sources=()
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*; do
    [ -f "$f" ] && sources+=("$f")
  done
  mirror=$(awk '
      $1 == "URIs:" { for (i = 2; i <= NF; i++) try($i) }
      $1 == "deb"   { for (i = 2; i <= NF; i++) if ($i ~ /:\/\//) { try($i); break } }
      function try(u) { sub(/\/+$/, "", u); if (u ~ /\/debian$/) { print u; exit } }
    ' "${sources[@]}" /dev/null)
  if [ -z "$mirror" ]; then
    echo "debian-gcc-image: no Debian mirror in the apt sources (/etc/apt/sources.list," \
         "/etc/apt/sources.list.d): the image is debootstrapped from the mirror apt uses;" \
         "add a 'deb' line or a 'URIs:' field naming one" >&2
    exit 1
  fi
  echo "debian-gcc-image: building $out from $mirror (once per machine, a few minutes)" >&2
  start=$(date +%s)
  LAYER1_PACKAGES=gcc,libc6-dev LAYER2_PACKAGES='' \
    bash "$here/../bench/src/fixtures/debian-image.sh" "$out" "$mirror" "$CACHE/debs" >&2
  # The tests import the archive; the layout beside it would be the same ~130 MB again.
  rm -rf "$out/oci"
  echo "debian-gcc-image: built in $(( $(date +%s) - start )) s" >&2
fi
echo "$out/debian.oci.tar"
