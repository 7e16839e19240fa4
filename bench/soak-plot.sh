#!/usr/bin/env bash
# Plot bench/soak.sh's CSV (default bench/results/soak.csv) to an SVG (default docs/soak.svg):
# daemon RSS, open fds, threads and live shims against time. Needs gnuplot (gnuplot-nox).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CSV=${1:-$here/bench/results/soak.csv}
SVG=${2:-$here/docs/soak.svg}
command -v gnuplot >/dev/null || { echo "soak-plot: gnuplot not installed (apt-get install gnuplot-nox)" >&2; exit 1; }
gnuplot <<GP
set terminal svg size 900,600 dynamic font "sans,11"
set output "$SVG"
set datafile separator ","
set key autotitle columnhead
set multiplot layout 2,1 title "berthd soak: one ctr run --rm a second (bench/soak.sh)"
set xlabel "minutes"
set ylabel "RSS (MiB)"
set y2label "runs"
set y2tics
set ytics nomirror
set grid
plot "$CSV" using (\$1/60):(\$2/1024) with lines lw 2 title "daemon RSS (MiB)", \
     "" using (\$1/60):6 axes x1y2 with lines dt 2 title "runs so far (right)"
set ylabel "count"
unset y2label
unset y2tics
set ytics mirror
plot "$CSV" using (\$1/60):3 with lines lw 2 title "open fds", \
     "" using (\$1/60):4 with lines lw 2 title "threads", \
     "" using (\$1/60):5 with points pt 7 ps 0.5 title "live shims"
unset multiplot
GP
echo "soak-plot: $SVG"
