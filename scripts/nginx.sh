#!/bin/sh
# Unpacks Debian's nginx into .cache/nginx for the benchmark that compares the
# overlay with a plain reverse proxy. The package is only unpacked (dpkg -x), never
# installed: no service starts and nothing outside .cache changes. Idempotent.
set -eu
dir=${1:-.cache/nginx}
[ -x "$dir/usr/sbin/nginx" ] && exit 0
command -v apt-get >/dev/null 2>&1 || { echo "nginx: apt-get not found (Debian's nginx is needed by make bench)" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
( cd "$tmp" && { apt-get download nginx >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get download nginx >/dev/null 2>&1; }; } )
mkdir -p "$dir"
dpkg -x "$tmp"/nginx_*.deb "$dir"
echo "nginx: $("$dir/usr/sbin/nginx" -v 2>&1) unpacked in $dir"
