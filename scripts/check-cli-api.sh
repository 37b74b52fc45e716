#!/bin/sh
# The command-line tool is a client of libferry's public API, like any
# embedder: a file of cli/ includes, of ferry's own headers, only
# include/ferry.h, include/ferry_policy.h and cli/'s own (the libc's and
# jansson's in <>). Nothing of engine/, qmp/ or transport/, so that what
# ferry does, an embedder can do too. (Its build holds the rest: include/
# is its only header path, and it links libferry.a, whose only globals
# are ferry_*.) Prints "cli-api: N passed, N failed".
set -u
out=$(grep -Hn '^[[:space:]]*#[[:space:]]*include' cli/*.c cli/*.h |
while IFS= read -r line; do
	inc=$(printf '%s\n' "$line" |
	      sed 's/^[^#]*#[[:space:]]*include[[:space:]]*\(.*\)$/\1/')
	case $inc in
	'"ferry.h"'*|'"ferry_policy.h"'*) continue ;;
	'<engine/'*|'<qmp/'*|'<transport/'*) ;;
	'<'*) continue ;;
	'"'*/*) ;;
	'"'*) name=${inc#\"}; name=${name%%\"*}
	      [ -f "cli/$name" ] && continue ;;
	esac
	echo "cli-api: $line: not the public API (include/ferry.h," \
	     "ferry_policy.h) nor a header of cli/"
done)
if [ -n "$out" ]; then
	printf '%s\n' "$out"
	echo "cli-api: 0 passed, 1 failed"
	exit 1
fi
echo "cli-api: 1 passed, 0 failed"
