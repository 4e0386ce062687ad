#!/usr/bin/env bash
# Runs every fuzz target of the module for FUZZTIME each (default 30s).
# `make fuzz` runs them long; `make test` runs them briefly (the seeds also run in
# every plain `go test`).
set -euo pipefail
cd "$(dirname "$0")/.."
fuzztime=${FUZZTIME:-30s}
go=${GO:-go}
n=0
for pkg in $($go list ./...); do
  for target in $($go test -list '^Fuzz' "$pkg" | grep '^Fuzz' || true); do
    echo "fuzz $pkg $target ($fuzztime)"
    $go test -run '^$' -fuzz "^${target}\$" -fuzztime "$fuzztime" "$pkg" >/tmp/cocoon-fuzz.log 2>&1 || {
      cat /tmp/cocoon-fuzz.log; echo "fuzz $pkg $target FAILED (the failing input is under testdata/fuzz)"; exit 1; }
    n=$((n+1))
  done
done
echo "fuzzed $n targets for $fuzztime each"
