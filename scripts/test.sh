#!/usr/bin/env bash
# The whole test suite: installs dependencies, builds once, runs every crate's tests (unit, wire
# compatibility, end-to-end against a real berthd with the real ctr, the shim against real runc).
# Run as root. Ends with one line totalling every test binary's results.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "the end-to-end tests mount, lock and chown: run as root" >&2; exit 1; }
scripts/deps.sh
# The Debian gcc image of client/tests/build.rs: debootstrapped once per machine (~3.5 min, ~80 MB
# of packages from the apt sources' mirror), before the tests so that no test thread waits on it.
scripts/debian-gcc-image.sh >/dev/null
cargo build --workspace --all-targets --locked
log=$(mktemp)
# A case a test cannot run here is recorded as one line `SKIPPED: <case>: <reason>` in this file
# (berth-testkit's skip module); under CI=true, a skip of what CI provides fails instead.
skips=$(mktemp)
trap 'rm -f "$log" "$skips"' EXIT
export BERTH_TEST_SKIPS="$skips"
# --no-fail-fast: one failing test binary must not hide the results of the ones after it.
status=0
cargo test --workspace --locked --no-fail-fast -- --test-threads=2 2>&1 | tee "$log" || status=$?
grep '^SKIPPED: ' "$skips" | sort || true
# cargo prints one "test result:" line per test binary (the last is often an empty doc-test run):
# add them up so the closing line speaks for the whole suite. A test that recorded skips still
# counts as passed with cargo; each skipped case moves one from passed to skipped.
awk -v skipped_cases="$(grep -c '^SKIPPED: ' "$skips" || true)" '/^test result:/ {
       for (i = 1; i <= NF; i++) {
         if ($(i) ~ /^passed;?$/)  passed  += $(i-1)
         if ($(i) ~ /^failed;?$/)  failed  += $(i-1)
         if ($(i) ~ /^ignored;?$/) ignored += $(i-1)
       }
     }
     END {
       passed -= skipped_cases
       if (passed < 0) passed = 0
       printf "total: %d passed, %d failed, %d skipped", passed, failed, ignored + skipped_cases
     }' "$log"
# cri/tests/critest.rs runs the whole critest suite as one test; its spec totals close the line.
critest_totals=$(grep -a '^critest totals: ' "$log" | tail -1 | sed 's/^critest totals: //' || true)
echo "${critest_totals:+; critest: $critest_totals}"
exit "$status"
