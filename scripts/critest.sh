#!/usr/bin/env bash
# `scripts/critest.sh ENDPOINT [CRITEST_ARG…]`: critest v1.37.0 against the CRI at ENDPOINT
# (unix:///run/berth/cri.sock, …), with critest's images served from the fixtures' loopback
# registry (scripts/critest/fixtures.sh: the runtime must take its registry mirrors from
# $BERTH_CRITEST_CACHE/certs.d, default /var/cache/berth-critest/certs.d, re-read at each pull).
# Skips only the cases that cannot run on this machine, each with its reason in docs/cri.md.
# Prints the passed / failed / skipped totals and the failed cases; exits non-zero when one failed.
# Extra arguments go to critest, e.g. `-ginkgo.focus=Conformance`. ENDPOINT `containerd-peer`
# runs it against containerd 2.4's CRI under scripts/critest/peer.sh.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
TEST_BIN=${BERTH_TEST_BIN:-/usr/local/lib/berth-test/bin}

[ $# -ge 1 ] || { echo "usage: $0 ENDPOINT [CRITEST_ARG...]" >&2; exit 2; }
endpoint=$1
shift
if [ "$endpoint" = containerd-peer ]; then
  # shellcheck disable=SC2016 # expanded by the inner shell, where peer.sh has set it
  exec "$here/critest/peer.sh" bash -c '"$0" "$CRI_ENDPOINT" "$@"' "$0" "$@"
fi
[ -x "$TEST_BIN/critest" ] || "$here/deps-cri-tools.sh"

# When scripts/critest/peer.sh runs us, its fixtures are already up.
if [ -z "${BERTH_CRITEST_FIXTURES_UP:-}" ]; then
  # shellcheck source=critest/fixtures.sh
  source "$here/critest/fixtures.sh"
  trap fixtures_down EXIT
  fixtures_up
fi

# The cases that cannot run here (docs/cri.md, "Skipped cases", says why); one regex each.
skips=(
  # The image is named by a digest compiled into critest; no rebuild reproduces it.
  'public image with digest should be pulled and removed'
  # Debian's busybox-static runs applets in-process (FEATURE_SH_STANDALONE), so the fixtures'
  # shell runs `ls` even with /bin/ls masked; critest expects the exec to fail.
  'runtime should support MaskedPaths'
)
skip=$(IFS='|'; echo "${skips[*]}")

log=$(mktemp /tmp/berth-critest.XXXXXX.log)
status=0
# critest chdirs nowhere and writes its own reports nowhere unless told; its output is the record.
"$TEST_BIN/critest" \
  -runtime-endpoint "$endpoint" -image-endpoint "$endpoint" \
  -ginkgo.skip="$skip" -ginkgo.no-color -ginkgo.json-report="$log.json" "$@" 2>&1 |
  tee "$log" || status=$?

echo
echo "critest against $endpoint (log: $log)"
# Ginkgo's summary: "Ran N of M Specs in T seconds" and "… -- P Passed | F Failed | X Pending | S Skipped".
grep -E '^Ran [0-9]+ of [0-9]+ Specs' "$log" || true
summary=$(grep -E '[0-9]+ Passed \| [0-9]+ Failed' "$log" | tail -1 || true)
if [ -n "$summary" ]; then
  passed=$(sed -E 's/.* ([0-9]+) Passed.*/\1/' <<<"$summary")
  failed=$(sed -E 's/.* ([0-9]+) Failed.*/\1/' <<<"$summary")
  skipped=$(sed -E 's/.* ([0-9]+) Skipped.*/\1/' <<<"$summary")
  echo "passed $passed, failed $failed, skipped $skipped"
fi
# The skipped cases and why (ginkgo's message; empty for a -ginkgo.skip or an unfocused case).
if command -v jq >/dev/null && [ -s "$log.json" ]; then
  echo "skipped cases:"
  jq -r '.[].SpecReports[] | select(.State == "skipped") |
    "  " + ((.ContainerHierarchyTexts + [.LeafNodeText]) | join(" ")) +
    (if (.Failure.Message // "") != "" then " -- " + (.Failure.Message | split("\n")[0]) else "" end)' \
    "$log.json"
fi
if grep -q '^Summarizing' "$log"; then
  echo "failed cases:"
  sed -n '/^Summarizing/,$p' "$log" | grep -E '^\s*\[(FAIL|PANICKED|TIMEDOUT)\]' | sed 's/^/  /'
fi
exit "$status"
