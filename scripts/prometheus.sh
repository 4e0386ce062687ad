#!/bin/sh
# Unpacks Debian's prometheus into .cache/prometheus for the test in which a real
# Prometheus scrapes a node's /metrics. The package is only unpacked (dpkg -x), never
# installed: no service starts and nothing outside .cache changes. Idempotent.
set -eu
dir=${1:-.cache/prometheus}
[ -x "$dir/usr/bin/prometheus" ] && exit 0
command -v apt-get >/dev/null 2>&1 || { echo "prometheus: apt-get not found (Debian's prometheus is needed by the metrics test)" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
( cd "$tmp" && { apt-get download prometheus >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get download prometheus >/dev/null 2>&1; }; } )
mkdir -p "$dir"
dpkg -x "$tmp"/prometheus_*.deb "$dir"
echo "prometheus: $("$dir/usr/bin/prometheus" --version 2>&1 | head -n 1) unpacked in $dir"
