#!/usr/bin/env bash
# `make run`: a local testnet of real processes on 127.0.0.1 (a dev ledger and five
# nodes, three of them workers serving the small real model with the embedded
# llama.cpp, simulated TEE and simulated money), one sample chat answer bought from
# the network through the first client's gateway, then the testnet runs until Ctrl-C.
set -euo pipefail
bin=${1:-bin/cocoon}
model=${COCOON_TEST_MODEL:-}
if [ -z "$model" ] || [ ! -f "$model" ]; then
  echo "make run: no model file at '${model}'." >&2
  echo "  Put stories260K.gguf (1,185,376 bytes, sha256 270cba1bd5109f42d03350f60406024560464db173c0e387d91f0426d3bd256d," >&2
  echo "  from ggml-org's tinyllamas conversion) at ../shared/models/stories260K.gguf beside this checkout," >&2
  echo "  or run: make run COCOON_TEST_MODEL=/path/to/any/model.gguf" >&2
  exit 1
fi
dir=${COCOON_TESTNET_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/cocoon-testnet.XXXXXX")}
"$bin" testnet up -n 5 --workers 3 --dir "$dir" --model "$model" &
up=$!
trap 'kill -INT $up 2>/dev/null; wait $up 2>/dev/null || true' EXIT
trap 'exit 0' INT TERM
for _ in $(seq 900); do
  [ -s "$dir/testnet.json" ] && break
  kill -0 $up 2>/dev/null || { echo "make run: the testnet did not start; logs in $dir" >&2; exit 1; }
  sleep 0.1
done
sleep 0.2 # let `up` print its table first
echo
echo "sample question to the network from node0: Tell me a story"
echo -n "answer:"
"$bin" chat --datadir "$dir/node0" --temperature 0 --max-tokens 48 "Tell me a story"
echo
wait $up
