#!/bin/sh
# Unpacks a Debian package into a directory under .cache, for the tools the tests
# and benchmarks start themselves: nginx (the overlay benchmark's reverse proxy)
# and prometheus (the test in which it scrapes a node's /metrics). The package is
# only unpacked (dpkg -x), never installed: no service starts and nothing outside
# the directory changes. Idempotent.
#   scripts/deb-unpack.sh PACKAGE DIR BINARY   (BINARY relative to DIR)
set -eu
pkg=$1 dir=$2 binary=$3
[ -x "$dir/$binary" ] && exit 0
command -v apt-get >/dev/null 2>&1 || { echo "$pkg: apt-get not found (Debian's $pkg is needed by make test)" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
( cd "$tmp" && { apt-get download "$pkg" >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get download "$pkg" >/dev/null 2>&1; }; } )
mkdir -p "$dir"
dpkg -x "$tmp"/"$pkg"_*.deb "$dir"
echo "$pkg: unpacked $(basename "$tmp"/"$pkg"_*.deb) in $dir"
