# critest's images without internet (sourced by scripts/critest.sh, scripts/critest/peer.sh and
# bench/cri.sh; bash): builds them (testkit's `critest-images`, with the static programs of
# pause.c and nonewprivs.c), serves them from Debian's docker-registry on a loopback port under their own
# repository names, and writes a containerd hosts.toml mirror layout that sends registry.k8s.io,
# gcr.io and k8s.gcr.io to it over plain HTTP.
#
# Cached in $BERTH_CRITEST_CACHE (default /var/cache/berth-critest): the programs (rebuilt when
# their source changes), the registry's storage (pushed again only when the layout's index.json
# changes). After fixtures_up: $CRITEST_REGISTRY (host:port), $CRITEST_HOSTS_DIR (the hosts.toml
# root, containerd's `config_path`), $CRITEST_SANDBOX_IMAGE. fixtures_down stops the registry;
# callers trap it on EXIT.

CRITEST_CACHE=${BERTH_CRITEST_CACHE:-/var/cache/berth-critest}
CRITEST_SANDBOX_IMAGE=registry.k8s.io/pause:3.10
CRITEST_MIRRORED_HOSTS=(registry.k8s.io gcr.io k8s.gcr.io)
_fixtures_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
_registry_pid=

_fixtures_build() {
  mkdir -p "$CRITEST_CACHE/bin"
  local program src sum
  for program in pause nonewprivs; do
    src="$_fixtures_root/scripts/critest/$program.c"
    sum=$(sha256sum "$src" | cut -d' ' -f1)
    if [ "$(cat "$CRITEST_CACHE/bin/$program.sum" 2>/dev/null)" != "$sum" ]; then
      cc -static -Os -s -o "$CRITEST_CACHE/bin/$program" "$src"
      echo "$sum" >"$CRITEST_CACHE/bin/$program.sum"
    fi
  done
  # $BERTH_CRITEST_IMAGES_BIN: a critest-images already built (cri/tests/critest.rs passes the
  # workspace build's); building it alone here would rebuild its dependencies with other features.
  local images=${BERTH_CRITEST_IMAGES_BIN:-}
  if [ -z "$images" ]; then
    (cd "$_fixtures_root" && cargo build -q -p berth-testkit --bin critest-images)
    local target
    target=$(cd "$_fixtures_root" && cargo metadata --format-version 1 --no-deps |
      sed -E 's/.*"target_directory":"([^"]*)".*/\1/')
    images=$target/debug/critest-images
  fi
  "$images" "$CRITEST_CACHE/layout" "$CRITEST_CACHE/bin" >"$CRITEST_CACHE/images.txt"
}

# A registry on a free loopback port: like the Rust e2e harness, each start sends a header of its
# own, so an answer from whatever else holds the port is not taken for ours.
_fixtures_registry() {
  local attempt port token
  mkdir -p "$CRITEST_CACHE/registry"
  for attempt in 1 2 3 4 5; do
    port=$(shuf -i 20000-32000 -n 1)
    token="berth-critest-$$-$attempt"
    cat >"$CRITEST_CACHE/registry.yml" <<EOF
version: 0.1
log:
  level: error
storage:
  filesystem:
    rootdirectory: $CRITEST_CACHE/registry
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$port
  headers:
    X-Berth-Registry: [$token]
EOF
    docker-registry serve "$CRITEST_CACHE/registry.yml" >"$CRITEST_CACHE/registry.log" 2>&1 &
    _registry_pid=$!
    local i
    for i in $(seq 100); do
      kill -0 "$_registry_pid" 2>/dev/null || break
      if curl -fsS -m 1 -D - -o /dev/null "http://127.0.0.1:$port/v2/" 2>/dev/null |
        grep -qi "^x-berth-registry: $token"; then
        CRITEST_REGISTRY=127.0.0.1:$port
        return 0
      fi
      sleep 0.1
    done
    kill "$_registry_pid" 2>/dev/null || true
    wait "$_registry_pid" 2>/dev/null || true
    _registry_pid=
  done
  echo "fixtures: docker-registry did not start; log:" >&2
  cat "$CRITEST_CACHE/registry.log" >&2
  return 1
}

_fixtures_push() {
  local sum
  sum=$(sha256sum "$CRITEST_CACHE/layout/index.json" | cut -d' ' -f1)
  [ "$(cat "$CRITEST_CACHE/pushed.sum" 2>/dev/null)" = "$sum" ] && return 0
  local ref_name reference digest path
  while read -r ref_name reference digest; do
    # One registry serves all three hosts: the repository is the reference without its host.
    path=${reference#*/}
    skopeo copy -q --all --dest-tls-verify=false \
      "oci:$CRITEST_CACHE/layout:$ref_name" "docker://$CRITEST_REGISTRY/$path"
  done <"$CRITEST_CACHE/images.txt"
  echo "$sum" >"$CRITEST_CACHE/pushed.sum"
}

_fixtures_hosts() {
  CRITEST_HOSTS_DIR=$CRITEST_CACHE/certs.d
  local host
  for host in "${CRITEST_MIRRORED_HOSTS[@]}"; do
    mkdir -p "$CRITEST_HOSTS_DIR/$host"
    cat >"$CRITEST_HOSTS_DIR/$host/hosts.toml" <<EOF
server = "https://$host"

[host."http://$CRITEST_REGISTRY"]
  capabilities = ["pull", "resolve"]
EOF
  done
}

fixtures_up() {
  _fixtures_build
  _fixtures_registry
  _fixtures_push
  _fixtures_hosts
  export CRITEST_REGISTRY CRITEST_HOSTS_DIR CRITEST_SANDBOX_IMAGE
}

fixtures_down() {
  if [ -n "$_registry_pid" ]; then
    kill "$_registry_pid" 2>/dev/null || true
    wait "$_registry_pid" 2>/dev/null || true
    _registry_pid=
  fi
}

# `fixtures_conflist FILE NAME BRIDGE SUBNET`: the one network berthd and the containerd peer are
# measured and tested on: Debian's bridge + host-local + portmap plugins.
fixtures_conflist() {
  cat >"$1" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "$2",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$3",
      "isGateway": true,
      "ipMasq": true,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{ "subnet": "$4" }]],
        "routes": [{ "dst": "0.0.0.0/0" }]
      }
    },
    { "type": "portmap", "capabilities": { "portMappings": true } }
  ]
}
EOF
}
