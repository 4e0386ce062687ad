#!/bin/sh
# Installs Debian's headless Chromium for the status page's browser test
# (cmd/cocoon/statuspage_test.go) when it is absent, and prints the binary's
# path. Debian 12 ships chromium-headless-shell (the headless-only build, no X
# libraries); the full chromium package works too and is used when present.
# Idempotent; needs root (apt-get) only the first time.
#   scripts/chromium.sh               install if needed, print the path
#   scripts/chromium.sh --no-install  print the path, or fail if absent
set -eu
find_bin() {
	for b in chromium-headless-shell chromium; do
		if p=$(command -v "$b" 2>/dev/null); then
			echo "$p"
			return 0
		fi
	done
	return 1
}
if find_bin; then
	exit 0
fi
if [ "${1:-}" = "--no-install" ]; then
	exit 1
fi
command -v apt-get >/dev/null 2>&1 || { echo "chromium: apt-get not found; install Chromium and set COCOON_CHROMIUM to its binary" >&2; exit 1; }
sudo=
if [ "$(id -u)" != 0 ]; then
	# Not root: sudo without a password prompt, as on CI runners; else say how.
	if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
		sudo="sudo -n"
	else
		echo "chromium: installing Debian's chromium-headless-shell needs root: run 'sudo apt-get install chromium-headless-shell' (or make deps as root)" >&2
		exit 1
	fi
fi
export DEBIAN_FRONTEND=noninteractive
if ! $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium-headless-shell >/dev/null 2>&1; then
	$sudo apt-get update >/dev/null
	$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium-headless-shell >/dev/null
fi
p=$(find_bin) || { echo "chromium: installed chromium-headless-shell, but no binary found on PATH" >&2; exit 1; }
echo "chromium: $("$p" --version 2>/dev/null | head -n1) installed" >&2
echo "$p"
