#!/bin/sh
# The folders are the layers: common/ (errors, logging, small utilities)
# builds on nothing of ferry's but include/; qmp/ and transport/ build on
# common/ and never on engine/ (nor on each other's insides beyond their
# headers); engine/ may use them all. A file that includes from a layer
# above its own fails. Prints "layers: N passed, N failed".
set -u
fail=0
check() {	# folder, then the include prefixes it must not use
	dir=$1
	shift
	for bad in "$@"; do
		hits=$(grep -Hn "^[[:space:]]*#[[:space:]]*include[[:space:]]*\"$bad/" \
		       "$dir"/*.c "$dir"/*.h 2>/dev/null)
		if [ -n "$hits" ]; then
			printf '%s\n' "$hits" | sed "s|^|layers: $dir/ must not include $bad/: |"
			fail=1
		fi
	done
}
check common engine qmp transport cli
check qmp engine transport cli
check transport engine cli
if [ $fail -ne 0 ]; then
	echo "layers: 0 passed, 1 failed"
	exit 1
fi
echo "layers: 1 passed, 0 failed"
