#!/bin/sh
# An embedder's view of an installed libferry: `make install` into a
# scratch DESTDIR, the examples built against it with pkg-config alone
# (no -I or -L of this tree), then test_examples migrates a real guest
# with them, shared and static. Prints "install: N passed, N failed".
set -u
B=$1
root=$(mktemp -d /tmp/ferry-install.XXXXXX)
trap 'rm -rf "$root"' EXIT INT TERM
fail() { echo "install: $*"; echo "install: 0 passed, 1 failed"; exit 1; }

make --no-print-directory -s install DESTDIR="$root" PREFIX=/usr \
	SYSCONFDIR=/etc >/dev/null || fail "make install failed"
for f in usr/bin/ferry usr/lib/libferry.so.0 usr/lib/libferry.so \
	 usr/lib/libferry.a usr/include/ferry.h usr/lib/pkgconfig/ferry.pc \
	 usr/share/doc/ferry/examples/migrate_one.c \
	 usr/lib/systemd/system/ferry-serve.service etc/ferry/serve.conf \
	 usr/share/man/man1/ferry.1 usr/share/man/man3/libferry.3 \
	 usr/share/man/man5/ferry-serve.conf.5; do
	[ -e "$root/$f" ] || fail "make install did not install /$f"
done
# Only the public API leaves the library.
leak=$(nm -D --defined-only "$root/usr/lib/libferry.so.0" | awk '{print $3}' |
       grep -v '^ferry_' || true)
[ -z "$leak" ] || fail "libferry.so.0 exports more than ferry_*: $leak"
leak=$(nm --defined-only "$root/usr/lib/libferry.a" | awk '$2 ~ /^[TDBRGSVW]$/ {print $3}' |
       grep -v '^ferry_' || true)
[ -z "$leak" ] || fail "libferry.a has globals other than ferry_*: $leak"

export PKG_CONFIG_PATH="$root/usr/lib/pkgconfig" PKG_CONFIG_SYSROOT_DIR="$root"
ex="$root/usr/share/doc/ferry/examples"
for e in migrate_one receive_one; do
	# shellcheck disable=SC2046
	cc -Wall -Werror -o "$root/$e" "$ex/$e.c" \
		$(pkg-config --cflags --libs ferry) || fail "$e does not build"
	# shellcheck disable=SC2046
	cc -Wall -Werror -o "$root/$e-static" "$ex/$e.c" \
		$(pkg-config --cflags ferry) "$root/usr/lib/libferry.a" \
		$(pkg-config --static --libs ferry | sed 's/-lferry//') ||
		fail "$e does not build statically"
done
echo "== install: test_examples (shared, then static)"
LD_LIBRARY_PATH="$root/usr/lib" EXAMPLE_MIGRATE="$root/migrate_one" \
	EXAMPLE_RECEIVE="$root/receive_one" "$B/tests/integration/test_examples" ||
	fail "the examples did not migrate (shared)"
EXAMPLE_MIGRATE="$root/migrate_one-static" \
	EXAMPLE_RECEIVE="$root/receive_one-static" \
	"$B/tests/integration/test_examples" ||
	fail "the examples did not migrate (static)"
echo "install: 1 passed, 0 failed"
