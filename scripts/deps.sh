#!/bin/sh
# Install the Debian 12 packages ferry needs, and only those that are missing.
# Called by `make demo` and `make check`; safe to run again (it does nothing
# when everything is present). Needs root to install; says so otherwise.
#
#   scripts/deps.sh        building and testing (make check, demo, bench)
#   scripts/deps.sh fuzz   building the libFuzzer harnesses (make fuzz):
#                          clang, its fuzzer and sanitizer runtimes, and
#                          llvm-symbolizer for readable crash reports; no QEMU
set -eu

BUILD="build-essential pkg-config libjansson-dev liburing-dev liblz4-dev \
libzstd-dev libssl-dev"

case "${1:-}" in
"")	PKGS="$BUILD check qemu-system-x86 qemu-utils openssl abigail-tools groff-base python3-jsonschema" ;;
fuzz)	PKGS="$BUILD clang-14 libclang-rt-14-dev llvm-14" ;;
*)	echo "usage: $0 [fuzz]" >&2; exit 2 ;;
esac

missing=""
for p in $PKGS; do
	if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed"; then
		missing="$missing $p"
	fi
done

[ -z "$missing" ] && exit 0

echo "deps: installing missing Debian packages:$missing" >&2
if [ "$(id -u)" != 0 ]; then
	echo "deps: not root; install them with: apt-get install$missing" >&2
	exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $missing >/dev/null
