# shellcheck shell=bash
# `settle`, sourced by bench/cri-ab.sh and bench/cri.sh: waits until the machine is quiet, one
# second at least 90% idle (at most 30 s of waiting), and says how long it waited. A teardown
# (pods: netns destroyed by the kernel's workqueues, CNI DEL, shims exiting) goes on after the
# command that asked for it returns; what is timed next must not inherit it.
settle() {
  local i a b
  for i in $(seq 30); do
    a=$(awk '/^cpu / { print $5 + $6, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9 }' /proc/stat)
    sleep 1
    b=$(awk '/^cpu / { print $5 + $6, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9 }' /proc/stat)
    if awk -v a="$a" -v b="$b" 'BEGIN { split(a, x, " "); split(b, y, " ");
      exit !((y[1] - x[1]) >= 0.9 * (y[2] - x[2])) }'; then
      echo "(settled after ${i} s)"
      return
    fi
  done
  echo "(not settled after 30 s)"
}
