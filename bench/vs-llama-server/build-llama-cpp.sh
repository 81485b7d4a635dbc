#!/bin/bash
# Builds llama.cpp's own tools for the side-by-side (CPU, -march=native, OpenMP), offline, from the llama.cpp source
# that the node-llama-cpp npm tarball ships as a git bundle (llama/gitRelease.bundle; node-llama-cpp 3.22.1 ->
# release v0.5.0, commit de3ff81). Only the tarball is fetched (`npm pack`, the ordinary client); nothing is installed.
#   llama-server      the server under test
#   llama-quantize    writes the q8_0 / q4_0 GGUFs from the F32 one
#   llama-perplexity  the KL divergence of a quantized model's next-token distributions from the F32 model's
# ONE compile job by default (JOBS=1): the benchmark machine has 2 cores and other work may run beside the build.
# Targets already built are kept, so a tree with llama-server alone only compiles the other two.
#
# usage: bash bench/vs-llama-server/build-llama-cpp.sh [WORK_DIR]   -> WORK_DIR/llama-src/build/bin/llama-*
# env:   JOBS (1), NLC_VERSION (3.22.1), NLC_TGZ (a node-llama-cpp-*.tgz already on disk)
# needs: git, cmake >= 3.18, g++ (C++17), ninja or make. About 20-25 min at -j1 on 2 cores for all three.
set -euo pipefail
W=${1:-${TMPDIR:-/tmp}/gym-edge-vs-llama}
JOBS=${JOBS:-1}
VER=${NLC_VERSION:-3.22.1}
TARGETS=(llama-server llama-quantize llama-perplexity)
BIN_DIR=$W/llama-src/build/bin

missing=()
for t in "${TARGETS[@]}"; do [ -x "$BIN_DIR/$t" ] || missing+=("$t"); done
if [ ${#missing[@]} -eq 0 ]; then echo "llama.cpp tools already built in $BIN_DIR"; exit 0; fi

mkdir -p "$W/pkg"
if [ ! -d "$W/llama-src/.git" ]; then
  TGZ=${NLC_TGZ:-$W/pkg/node-llama-cpp-$VER.tgz}
  if [ ! -f "$TGZ" ]; then (cd "$W/pkg" && npm pack "node-llama-cpp@$VER" --prefer-offline >/dev/null); fi
  tar -xzf "$TGZ" -C "$W/pkg" package/llama/gitRelease.bundle package/llama/binariesGithubRelease.json
  git clone -q "$W/pkg/package/llama/gitRelease.bundle" "$W/llama-src"
fi
release=$(tr -d '\n ' < "$W/pkg/package/llama/binariesGithubRelease.json" 2>/dev/null || echo '?')
echo "llama.cpp source: $(git -C "$W/llama-src" log --oneline -1) (node-llama-cpp $VER, release $release)"

if [ ! -f "$W/llama-src/build/CMakeCache.txt" ]; then
  GEN=()
  if command -v ninja >/dev/null; then GEN=(-G Ninja); fi
  # No web UI (its download / npm build at configure time), no TLS, no tests or examples: the tools are enough.
  cmake -S "$W/llama-src" -B "$W/llama-src/build" "${GEN[@]}" -DCMAKE_BUILD_TYPE=Release \
    -DGGML_NATIVE=ON -DGGML_OPENMP=ON -DBUILD_SHARED_LIBS=OFF \
    -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_CURL=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF >/dev/null
fi
echo "building ${missing[*]} with -j $JOBS"
nice -n 10 cmake --build "$W/llama-src/build" -j "$JOBS" --target "${missing[@]}"
"$BIN_DIR/llama-server" --version 2>&1 | head -3
