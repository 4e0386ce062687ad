#!/usr/bin/env bash
# Regenerates the Go code of every .proto file in the repository. The generated
# *.pb.go files are committed, so a plain build never needs protoc; run this only
# after editing a .proto file.
#
# Installs protoc from Debian (protobuf-compiler) when it is missing, and
# protoc-gen-go at the version of google.golang.org/protobuf pinned in go.mod, so
# the generated code matches the runtime library it is compiled against.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v protoc >/dev/null 2>&1; then
	SUDO=""
	[ "$(id -u)" -ne 0 ] && SUDO="sudo"
	$SUDO apt-get update -qq
	$SUDO apt-get install -y -qq protobuf-compiler
fi

PBVER="$(go list -m -f '{{.Version}}' google.golang.org/protobuf)"
GOBIN="$(go env GOPATH)/bin"
if ! "$GOBIN/protoc-gen-go" --version 2>/dev/null | grep -q "$PBVER"; then
	go install "google.golang.org/protobuf/cmd/protoc-gen-go@$PBVER"
fi

for proto in $(find . -name '*.proto' -not -path './.cache/*' -not -path './node_modules/*') ; do
	echo "$proto"
done | sort -u | while read -r proto; do
	proto="${proto#./}"
	dir="$(dirname "$proto")"
	PATH="$GOBIN:$PATH" protoc -I "$dir" --go_out="$dir" --go_opt=paths=source_relative "$proto"
done
