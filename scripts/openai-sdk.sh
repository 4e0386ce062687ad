#!/bin/sh
# Installs the official OpenAI JavaScript SDK, pinned, into .cache/openai-sdk for the
# test that drives a node's gateway with an unmodified OpenAI client. Idempotent.
set -eu
dir=${1:-.cache/openai-sdk}
version=7.57.0
stamp="$dir/.installed-$version"
[ -f "$stamp" ] && exit 0
command -v npm >/dev/null 2>&1 || { echo "openai-sdk: npm not found; install Node.js/npm, then run make deps" >&2; exit 1; }
mkdir -p "$dir"
npm install --prefix "$dir" --no-save --no-audit --no-fund --ignore-scripts "openai@$version" >/dev/null
touch "$stamp"
echo "openai-sdk: openai@$version ready in $dir"
