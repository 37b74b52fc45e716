#!/bin/sh
# Build ferry's Debian packages (ferry, libferry0, libferry-dev) as a clean
# Debian 12 would, and check them with lintian. Run by `make deb`; not part
# of `make check`.
#
#   scripts/check-deb.sh [OUTDIR]
#
# The build runs in a `git clone` of this repository's HEAD in a temporary
# directory, so the working tree is never written to, and uncommitted
# changes are not packaged (it says so when there are some). The .deb
# files, the .changes and the build and lintian logs go to OUTDIR (default:
# a new /tmp/ferry-deb.XXXXXX); the clone is removed. DEB_BUILD_OPTIONS
# passes through (nocheck, parallel=N, noopt). Fails when the build fails
# or lintian reports an error; its warnings are printed. Missing build
# tools and Build-Depends are installed when run as root, as
# scripts/deps.sh does, and named otherwise. Prints "deb: N passed, N failed".
set -eu
top=$(git -C "$(dirname "$0")/.." rev-parse --show-toplevel)
fail() { echo "deb: $*"; echo "deb: 0 passed, 1 failed"; exit 1; }

# A clean build: nothing from the caller's make (make deb SANITIZE=1, -j's
# jobserver) or shell flags reaches debian/rules, which takes its flags
# from dpkg-buildflags alone.
unset MAKEFLAGS MFLAGS MAKELEVEL SANITIZE CFLAGS CPPFLAGS CXXFLAGS LDFLAGS

version=$(git -C "$top" show HEAD:include/ferry.h |
	  sed -n 's/^#define FERRY_VERSION_STRING "\(.*\)"/\1/p')
[ -n "$version" ] || fail "no FERRY_VERSION_STRING in include/ferry.h at HEAD"
if [ -n "$(git -C "$top" status --porcelain --untracked-files=no)" ]; then
	echo "deb: the working tree has uncommitted changes; they are not" \
	     "packaged (building HEAD, $(git -C "$top" rev-parse --short HEAD))"
fi

if [ $# -gt 0 ]; then
	out=$1
	mkdir -p "$out"
else
	out=$(mktemp -d /tmp/ferry-deb.XXXXXX)
fi
out=$(cd "$out" && pwd)
work=$(mktemp -d /tmp/ferry-deb-src.XXXXXX)
trap 'rm -rf "$work"' EXIT INT TERM
src="$work/ferry-$version"
git clone --quiet --no-hardlinks "$top" "$src" || fail "git clone failed"

# dpkg-dev and lintian first (dpkg-checkbuilddeps is dpkg-dev's), then the
# Build-Depends of debian/control as this clone has them.
tools=""
command -v dpkg-buildpackage >/dev/null 2>&1 || tools="dpkg-dev"
command -v lintian >/dev/null 2>&1 || tools="$tools lintian"
if [ -n "$tools" ]; then
	[ "$(id -u)" = 0 ] || fail "not root; install them with: apt-get install$tools"
	echo "deb: installing$tools"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	# shellcheck disable=SC2086
	apt-get install -y -qq --no-install-recommends $tools >/dev/null
fi
if ! (cd "$src" && dpkg-checkbuilddeps) >/dev/null 2>&1; then
	[ "$(id -u)" = 0 ] || fail "not root; $(cd "$src" && dpkg-checkbuilddeps 2>&1 |
		sed 's/^dpkg-checkbuilddeps: error: //' || true) (apt-get build-dep $top)"
	echo "deb: installing the missing Build-Depends"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get build-dep -y -qq --no-install-recommends "$src" >/dev/null
fi

echo "deb: building ferry $version (dpkg-buildpackage -us -uc -b; log in $out/build.log)"
if ! (cd "$src" && dpkg-buildpackage -us -uc -b) >"$out/build.log" 2>&1; then
	tail -n 40 "$out/build.log"
	fail "dpkg-buildpackage failed (the whole log: $out/build.log)"
fi
for f in "$work"/*.deb "$work"/*.changes "$work"/*.buildinfo; do
	mv -f "$f" "$out/"
done
changes=$(ls "$out"/ferry_"$version"_*.changes)

echo "deb: lintian $changes"
rc=0
lintian --display-info "$changes" >"$out/lintian.txt" 2>&1 || rc=$?
grep -v 'running with root privileges is not recommended' "$out/lintian.txt" || true
echo "deb: the packages, in $out:"
ls -1 "$out"/*.deb | sed 's/^/  /'
[ "$rc" -eq 0 ] || fail "lintian found errors (exit $rc; $out/lintian.txt)"
echo "deb: 1 passed, 0 failed"
