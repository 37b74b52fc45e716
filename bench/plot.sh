#!/bin/sh
# Plots for a bench_migrate result set (BASE.samples.csv, BASE.summary.tsv):
#   BASE-remaining.png   guest RAM still to send over time, one line per mode
#   BASE-throughput.png  bytes on the wire per second over time
#   BASE-total.png       median total time per mode
# Uses gnuplot (Debian package gnuplot-nox), installed if missing.
#
#   bench/plot.sh bench/results/migrate-link-mix-1795420000
set -eu
base=${1:?usage: $0 RESULTS_BASENAME}
csv="$base.samples.csv"
tsv="$base.summary.tsv"
[ -r "$csv" ] || { echo "no $csv" >&2; exit 1; }

if ! command -v gnuplot >/dev/null 2>&1; then
	[ "$(id -u)" = 0 ] || { echo "gnuplot missing (apt-get install gnuplot-nox)" >&2; exit 1; }
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gnuplot-nox >/dev/null
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# One data file per mode: the first measured run (run 1) of each mode, with
# throughput derived from consecutive wire-byte samples.
modes=$(tail -n +2 "$csv" | cut -d, -f1 | sort -u)
for m in $modes; do
	awk -F, -v m="$m" '$1 == m && $2 == 1 {
		t = $3 / 1000.0; rem = $4 / 1048576.0; w = $6;
		if (!n && rem == 0) next;	# QEMU has not counted yet
		# throughput over windows of at least 250 ms (samples are 10-50 ms)
		if (n && t - pt < 0.25) next;
		tp = (n && t > pt) ? (w - pw) / (t - pt) / 1048576.0 : 0;
		print t, rem, (tp < 0 ? 0 : tp); pt = t; pw = w; n++ }' "$csv" > "$tmp/$m.dat"
done

plot_lines() { # column title ylabel out
	{
		echo "set terminal pngcairo size 1000,600 noenhanced"
		echo "set output '$4'"
		echo "set title '$2'"
		echo "set xlabel 'seconds'"
		echo "set ylabel '$3'"
		echo "set key outside right"
		echo "set grid"
		printf "plot "
		sep=""
		for m in $modes; do
			printf "%s'%s' using 1:%s with lines lw 2 title '%s'" "$sep" "$tmp/$m.dat" "$1" "$m"
			sep=", "
		done
		echo
	} > "$tmp/p.gp"
	gnuplot "$tmp/p.gp"
}

plot_lines 2 "guest RAM remaining to send" "MiB" "$base-remaining.png"
plot_lines 3 "throughput on the wire" "MiB/s" "$base-throughput.png"

if [ -r "$tsv" ]; then
	cat > "$tmp/bar.gp" <<GP
set terminal pngcairo size 1000,600 noenhanced
set output '$base-total.png'
set title 'median total migration time'
set ylabel 'ms'
set style fill solid 0.8
set boxwidth 0.7
set xtics rotate by -30
set grid y
plot '$tsv' using 0:2:xtic(1) with boxes notitle
GP
	gnuplot "$tmp/bar.gp"
fi
echo "wrote $base-remaining.png $base-throughput.png${tsv:+ $base-total.png}"
