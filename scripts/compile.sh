#!/usr/bin/env bash
# `npm run compile`: one executable at dist/gym-edge (or the path after --outfile), built by whichever compiler works
# here, and says which.
#   deno compile        when Deno's runtime for executables (denort) is at hand: DENORT_BIN, a copy in Deno's
#                       cache, or COMPILE_DENORT_DOWNLOAD=1 to let Deno fetch it (`deno task compile`)
#   bun build --compile otherwise: Bun from npm carries its runtime, so this works offline (scripts/compile-bun.ts)
# COMPILE_WITH=deno|bun chooses.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=$PWD/node_modules/.bin
outfile=dist/gym-edge
[ "${1:-}" != --outfile ] || outfile=$2

denort_at_hand() {
  if [ -n "${DENORT_BIN:-}" ] && [ -f "$DENORT_BIN" ]; then return 0; fi
  if [ "${COMPILE_DENORT_DOWNLOAD:-}" = 1 ]; then return 0; fi
  local ver deno_dir
  ver=$("$BIN/deno" eval 'console.log(Deno.version.deno)')
  deno_dir=${DENO_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/deno}
  compgen -G "$deno_dir/dl/release/v$ver/denort-*.zip" >/dev/null
}

with=${COMPILE_WITH:-}
if [ -z "$with" ]; then
  if denort_at_hand; then with=deno; else
    with=bun
    echo "deno compile would download its runtime (denort); set DENORT_BIN to use it. Using Bun instead."
  fi
fi
mkdir -p "$(dirname "$outfile")"
case "$with" in
  deno)
    echo "compiling with deno compile (its runtime, denort, is at hand)"
    "$BIN/deno" compile --node-modules-dir=manual -A --self-extracting --no-check -o "$outfile" mod.ts
    echo "built $outfile with deno compile ($(du -h "$outfile" | cut -f1))" ;;
  bun)
    echo "compiling with bun build --compile"
    "$BIN/bun" scripts/compile-bun.ts --outfile "$outfile" ;;
  *) echo "COMPILE_WITH must be deno or bun, not $with" >&2; exit 2 ;;
esac
