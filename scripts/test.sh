#!/usr/bin/env bash
# Runs the test suite on Node, Deno and Bun (or the runtimes named as arguments) and prints one summary line:
# "tests: N passed, N failed, N skipped" (skipped: tests that cannot run on this machine, such as WebGPU ones
# without an adapter, each with its reason in the runner's output). Extra test files may be named after `--`; default is every tests/**/*.test.ts.
set -uo pipefail
cd "$(dirname "$0")/.."
bin=node_modules/.bin
runtimes=()
files=()
while [ $# -gt 0 ]; do
  case "$1" in
    --) shift; files=("$@"); break ;;
    *) runtimes+=("$1"); shift ;;
  esac
done
[ ${#runtimes[@]} -gt 0 ] || runtimes=(node deno bun)
[ ${#files[@]} -gt 0 ] || mapfile -t files < <(find tests -name '*.test.ts' | sort)
# WebGPU under Deno uses lavapipe, which wants a runtime dir.
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$(mktemp -d)}"
# Deno's WebGPU may open OpenGL beside Vulkan, and the two together corrupt the heap at exit now and then.
export DENO_WEBGPU_BACKEND="${DENO_WEBGPU_BACKEND:-vulkan}"

passed=0; failed=0; skipped=0; status=0
log=$(mktemp)
for rt in "${runtimes[@]}"; do
  echo "=== $rt"
  case "$rt" in
    node) node --import tsx --test --test-reporter=spec "${files[@]}" 2>&1 | tee "$log"; rc=${PIPESTATUS[0]}
          p=$(grep -aE '^ℹ pass [0-9]+' "$log" | tail -1 | grep -oE '[0-9]+'); f=$(grep -aE '^ℹ fail [0-9]+' "$log" | tail -1 | grep -oE '[0-9]+')
          s=$(grep -aE '^ℹ skipped [0-9]+' "$log" | tail -1 | grep -oE '[0-9]+') ;;
    deno) "$bin/deno" test -A --no-check "${files[@]}" 2>&1 | tee "$log"; rc=${PIPESTATUS[0]}
          line=$(sed 's/\x1b\[[0-9;]*m//g' "$log" | grep -aE '\| [0-9]+ passed.*\| [0-9]+ failed' | tail -1)
          p=$(echo "$line" | grep -oE '[0-9]+ passed' | grep -oE '[0-9]+'); f=$(echo "$line" | grep -oE '[0-9]+ failed' | grep -oE '[0-9]+')
          # Skips inside a describe block are ignored steps: "| 0 ignored (2 steps)".
          s=$(echo "$line" | grep -oE '[0-9]+ ignored( \([0-9]+ steps?\))?' | grep -oE '[0-9]+' | paste -sd+)
          s=$((${s:-0})) ;;
    bun)  "$bin/bun" test --timeout 120000 "${files[@]/#/./}" 2>&1 | tee "$log"; rc=${PIPESTATUS[0]}
          p=$(grep -aE '^ *[0-9]+ pass$' "$log" | tail -1 | grep -oE '[0-9]+'); f=$(grep -aE '^ *[0-9]+ fail$' "$log" | tail -1 | grep -oE '[0-9]+')
          s=$(grep -aE '^ *[0-9]+ skip$' "$log" | tail -1 | grep -oE '[0-9]+') ;;
    *) echo "unknown runtime $rt" >&2; exit 2 ;;
  esac
  p=${p:-0}; f=${f:-0}; s=${s:-0}
  # A runner that crashed before counting still fails the suite.
  if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then f=1; fi
  [ "$rc" -ne 0 ] && status=1
  echo "--- $rt: $p passed, $f failed, $s skipped"
  passed=$((passed + p)); failed=$((failed + f)); skipped=$((skipped + s))
done
rm -f "$log"
echo "tests: $passed passed, $failed failed, $skipped skipped"
exit $status
