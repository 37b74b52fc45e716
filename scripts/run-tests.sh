#!/bin/sh
# Run test binaries one after another and print one summary line that CI
# reads: "N passed, N failed". A binary's exit status decides; each libcheck
# suite prints its own details above.
kind=$1; shift
passed=0; failed=0; failed_names=""
for t in "$@"; do
	echo "== $kind: $(basename "$t")"
	if "$t"; then
		passed=$((passed + 1))
	else
		failed=$((failed + 1)); failed_names="$failed_names $(basename "$t")"
	fi
done
[ -n "$failed_names" ] && echo "$kind failures:$failed_names"
echo "$kind: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
