#!/usr/bin/env bash
# `make run`: starts one cocoon node in a temporary datadir that serves the small
# real model with the embedded llama.cpp, sends it one real completion through the
# node's OpenAI-compatible API, prints the answer and how to send more, and runs
# until Ctrl-C.
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
dir=$(mktemp -d "${TMPDIR:-/tmp}/cocoon-run.XXXXXX")
"$bin" init --datadir "$dir" >/dev/null
"$bin" node --datadir "$dir" --listen /ip4/127.0.0.1/tcp/0 --listen /ip4/127.0.0.1/udp/0/quic-v1 \
  --api 127.0.0.1:0 --serve "$model" 2>"$dir/node.log" &
pid=$!
trap 'kill -INT $pid 2>/dev/null; wait $pid 2>/dev/null; echo; echo "stopped; logs in $dir/node.log"' EXIT
trap 'exit 0' INT TERM
for _ in $(seq 100); do [ -s "$dir/api.addr" ] && break; kill -0 $pid 2>/dev/null || { cat "$dir/node.log" >&2; exit 1; }; sleep 0.1; done
url="http://$(cat "$dir/api.addr")"
token=$(cat "$dir/api.token")
body='{"model":"'"$(basename "$model" .gguf)"'","prompt":"Once upon a time","max_tokens":48,"temperature":0}'
echo "cocoon node up: API $url (token in $dir/api.token)"
echo "prompt: Once upon a time"
if command -v curl >/dev/null; then
  answer=$(curl -sS -H "Authorization: Bearer $token" -H 'Content-Type: application/json' -d "$body" "$url/v1/completions")
else
  answer=$(node -e 'fetch(process.argv[1],{method:"POST",headers:{"Authorization":"Bearer "+process.argv[2],"Content-Type":"application/json"},body:process.argv[3]}).then(r=>r.text()).then(t=>console.log(t))' "$url/v1/completions" "$token" "$body")
fi
echo "answer: $answer"
echo
echo "Try:  curl -H 'Authorization: Bearer $token' -d '$body' $url/v1/completions"
echo "      $bin status --datadir $dir"
echo "Ctrl-C stops the node."
wait $pid
