#!/bin/sh
# Install the Debian 12 packages ferry needs, and only those that are missing.
# Called by `make demo` and `make check`; safe to run again (it does nothing
# when everything is present). Needs root to install; says so otherwise.
set -eu

PKGS="build-essential pkg-config libjansson-dev liburing-dev liblz4-dev \
libzstd-dev libssl-dev check qemu-system-x86 qemu-utils openssl"

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
