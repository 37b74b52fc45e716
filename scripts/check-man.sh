#!/bin/sh
# The man pages render without a warning, and say every option of the
# real option tables (ferry --list-options, --list-config-keys), so they
# cannot drift from the program. Prints "man: N passed, N failed".
set -u
ferry=$1
bad=0
for page in man/ferry.1 man/ferry-serve.conf.5 man/libferry.3; do
	warn=$(groff -man -Tutf8 -ww -z "$page" 2>&1)
	if [ -n "$warn" ]; then
		echo "man: $page: $warn"; bad=1
	fi
done
for opt in $("$ferry" --list-options); do
	esc=$(printf '%s' "$opt" | sed 's/-/\\\\-/g')
	grep -q -- "\\\\-\\\\-$esc" man/ferry.1 ||
		{ echo "man: ferry.1 does not document --$opt"; bad=1; }
done
for key in $("$ferry" --list-config-keys); do
	esc=$(printf '%s' "$key" | sed 's/-/\\\\-/g')
	grep -q -- "^\.B $esc\$" man/ferry-serve.conf.5 ||
		{ echo "man: ferry-serve.conf.5 does not document $key"; bad=1; }
done
if [ $bad -ne 0 ]; then echo "man: 0 passed, 1 failed"; exit 1; fi
echo "man: 1 passed, 0 failed"
