#!/bin/sh
# Run each libFuzzer harness for a fixed time on a copy of its seed corpus
# (tests/fuzz/corpus/NAME; new inputs it finds go to the copy, which is
# thrown away) and print the summary line CI reads: "fuzz: N passed, N
# failed". A crash, a sanitizer report, a leak, an input that runs longer
# than 20 s or a process over 2 GiB fails the harness: its reproducer is
# kept in BUILD/crashes/NAME/ and its report printed. Every harness runs
# even after one failed, so one run shows all of them.
#
#   scripts/fuzz-run.sh BUILD SECONDS NAME...     (make fuzz-run)
set -u
b=$1; secs=$2; shift 2

tmp=$(mktemp -d "${TMPDIR:-/tmp}/ferry-fuzz-run.XXXXXX") || exit 1
trap 'rm -rf "$tmp"' EXIT
trap 'exit 130' INT TERM

# Stack traces with function names and lines, when llvm-14 is there.
if [ -z "${ASAN_SYMBOLIZER_PATH:-}" ] && [ -x /usr/lib/llvm-14/bin/llvm-symbolizer ]; then
	export ASAN_SYMBOLIZER_PATH=/usr/lib/llvm-14/bin/llvm-symbolizer
fi
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1}"

passed=0; failed=0; failed_names=""
for name in "$@"; do
	bin=$b/fuzz_$name
	seeds=tests/fuzz/corpus/$name
	w=$tmp/$name
	mkdir -p "$w/corpus" "$w/scratch" "$w/artifacts"
	if [ ! -d "$seeds" ] || [ -z "$(ls -A "$seeds")" ]; then
		echo "fuzz: $name: no seed corpus in $seeds"
		failed=$((failed + 1)); failed_names="$failed_names $name"
		continue
	fi
	cp -R "$seeds/." "$w/corpus/"
	dict=""
	[ -f "tests/fuzz/$name.dict" ] && dict="-dict=tests/fuzz/$name.dict"
	# The harness's sockets and files go to $w/scratch (TMPDIR), so even
	# a run that crashes leaves nothing behind once $tmp is removed.
	TMPDIR=$w/scratch "$bin" -max_total_time="$secs" -rss_limit_mb=2048 \
		-timeout=20 -max_len=65536 -print_final_stats=1 \
		-artifact_prefix="$w/artifacts/" ${dict:+"$dict"} "$w/corpus" >"$w/log" 2>&1
	rc=$?
	runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$w/log")
	if [ "$rc" -eq 0 ]; then
		echo "fuzz: $name: ok, ${runs:-?} runs in $secs s," \
		     "$(ls "$seeds" | wc -l) seeds -> $(ls "$w/corpus" | wc -l) inputs"
		passed=$((passed + 1))
		continue
	fi
	failed=$((failed + 1)); failed_names="$failed_names $name"
	mkdir -p "$b/crashes/$name"
	echo "fuzz: $name: FAILED (exit $rc):"
	# The report from its first line (a harness check, a sanitizer, or
	# libFuzzer itself: a timeout, out of memory), with its stack.
	start=$(grep -n -m1 -E 'check failed|runtime error|==[0-9]+==ERROR|ERROR: libFuzzer' \
		"$w/log" | cut -d: -f1)
	sed -n "${start:-1},\$p" "$w/log" | grep -v -E '^ *0x[0-9a-f]+: |^Shadow|^  [A-Z][a-z].*: ' |
		head -n 50 | sed 's/^/    /'
	for f in "$w"/artifacts/crash-* "$w"/artifacts/leak-* \
		 "$w"/artifacts/timeout-* "$w"/artifacts/oom-*; do
		[ -f "$f" ] || continue
		cp "$f" "$b/crashes/$name/"
		echo "fuzz: $name: reproduce with: $bin $b/crashes/$name/$(basename "$f")"
	done
done
[ -n "$failed_names" ] && echo "fuzz failures:$failed_names"
echo "fuzz: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
