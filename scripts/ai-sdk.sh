#!/bin/sh
# Installs the Vercel AI SDK (npm "ai" with its OpenAI-compatible provider and
# zod), pinned, into .cache/ai-sdk for the test that drives a node's gateway
# with generateObject and generateText. ai 6 and the provider's 2.x are the
# newest majors that run on Node 18 and 20 (ai 7 wants Node 22). Idempotent.
set -eu
dir=${1:-.cache/ai-sdk}
pkgs="ai@6.0.325 @ai-sdk/openai-compatible@2.0.92 zod@4.6.7"
stamp="$dir/.installed-$(echo "$pkgs" | tr ' @/' '___')"
[ -f "$stamp" ] && exit 0
command -v npm >/dev/null 2>&1 || { echo "ai-sdk: npm not found; install Node.js/npm, then run make deps" >&2; exit 1; }
mkdir -p "$dir"
# shellcheck disable=SC2086
npm install --prefix "$dir" --no-save --no-audit --no-fund --ignore-scripts $pkgs >/dev/null
touch "$stamp"
echo "ai-sdk: $pkgs ready in $dir"
