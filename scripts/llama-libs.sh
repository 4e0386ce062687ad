#!/bin/sh
# llama-libs.sh installs the prebuilt llama.cpp CPU libraries that the embedded
# runtime (runtime/llamacpp, through yzma) loads at run time: the npm package
# @node-llama-cpp/linux-x64 (llama.cpp release v0.5.0), unpacked into
# .cache/llama/npm, with a flat folder .cache/llama/lib in which libllama.so and
# libggml.so name the versioned files (yzma's llama.Load wants those plain
# names) and every other .so keeps its own name.
#
# It also keeps the package's tarball, as npm serves it, in
# .cache/llama/node-llama-cpp-linux-x64-3.22.1.tgz: the tests of
# `cocoon runtime install` (runtime/llamalib, cmd/cocoon) serve it from a
# loopback registry ($COCOON_LLAMA_TGZ), since tests reach no registry.
#
# Idempotent: when the lib folder already holds the linked libraries of this
# version and the tarball is there it returns at once.
# Usage: scripts/llama-libs.sh [cache-dir]
set -eu

PKG="@node-llama-cpp/linux-x64"
VERSION="3.22.1"
CACHE="${1:-$(cd "$(dirname "$0")/.." && pwd)/.cache/llama}"
NPM_DIR="$CACHE/npm"
LIB_DIR="$CACHE/lib"
STAMP="$LIB_DIR/.installed-$VERSION"
TGZ="$CACHE/node-llama-cpp-linux-x64-$VERSION.tgz"

if [ -f "$STAMP" ] && [ -e "$LIB_DIR/libllama.so" ] && [ -e "$LIB_DIR/libggml.so" ] && [ -s "$TGZ" ]; then
	exit 0
fi

if ! command -v npm >/dev/null 2>&1; then
	echo "llama-libs: npm not found; install Node.js/npm, then run make deps" >&2
	exit 1
fi

if [ ! -s "$TGZ" ]; then
	# npm pack checks the tarball against the registry's integrity hash.
	mkdir -p "$CACHE"
	npm pack --silent --pack-destination "$CACHE" "$PKG@$VERSION" >/dev/null
	if [ ! -s "$TGZ" ]; then
		echo "llama-libs: npm pack did not leave $TGZ" >&2
		exit 1
	fi
fi
if [ -f "$STAMP" ] && [ -e "$LIB_DIR/libllama.so" ] && [ -e "$LIB_DIR/libggml.so" ]; then
	exit 0
fi

SRC="$NPM_DIR/node_modules/$PKG/bins/linux-x64"
if [ ! -d "$SRC" ]; then
	echo "llama-libs: installing $PKG@$VERSION into $NPM_DIR" >&2
	mkdir -p "$NPM_DIR"
	npm install --prefix "$NPM_DIR" --no-save --no-audit --no-fund --ignore-scripts \
		--loglevel=error "$PKG@$VERSION" >&2
fi
if [ ! -d "$SRC" ]; then
	# The package layout changed or the install failed: look for the libraries anywhere in it.
	SRC="$(dirname "$(find "$NPM_DIR/node_modules/$PKG" -name 'libllama*.so' | head -n 1)")"
fi
if [ -z "$SRC" ] || [ ! -d "$SRC" ]; then
	echo "llama-libs: no libllama*.so found under $NPM_DIR/node_modules/$PKG" >&2
	exit 1
fi

# Relative links, so that the cache folder survives being moved or copied.
case "$SRC" in
"$CACHE"/*) REL="../${SRC#"$CACHE"/}" ;;
*) REL="$SRC" ;;
esac
rm -rf "$LIB_DIR"
mkdir -p "$LIB_DIR"
for f in "$SRC"/*.so; do
	[ -e "$f" ] || continue
	base="$(basename "$f")"
	case "$base" in
	libllama.*.so | libllama.so) ln -sf "$REL/$base" "$LIB_DIR/libllama.so" ;;
	libggml.*.so | libggml.so) ln -sf "$REL/$base" "$LIB_DIR/libggml.so" ;; # libggml.v0.5.0.so, libggml.vulkan.v0.5.0.so
	*) ln -sf "$REL/$base" "$LIB_DIR/$base" ;;
	esac
done
if [ ! -e "$LIB_DIR/libllama.so" ] || [ ! -e "$LIB_DIR/libggml.so" ]; then
	echo "llama-libs: $SRC lacks libllama or libggml" >&2
	exit 1
fi
touch "$STAMP"
echo "llama-libs: llama.cpp libraries ready in $LIB_DIR" >&2
