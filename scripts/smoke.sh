#!/usr/bin/env bash
# Smoke tests of what users install: each serves the built-in model offline, from an empty cache, on a free
# loopback port, answers GET /health, POST /tokenize and one chat completion, and is stopped (its whole process
# group) whatever happens.
#
#   bash scripts/smoke.sh [pack] [binary] [deno] [fresh]        default: pack binary
#
#   pack    `npm pack`, installed into an empty directory, run as `npx gym-edge` (Node) and `bunx --bun gym-edge` (Bun)
#   binary  `deno compile --self-extracting` into dist/gym-edge, run as a program. deno compile downloads its
#           runtime (denort); offline it needs DENORT_BIN or a copy in Deno's cache, else this serves
#           the file tree the binary would carry (deno.json's "compile" excludes applied) with `deno run` instead,
#           and builds the executable with `bun build --compile` (scripts/compile-bun.ts) and serves it
#   deno    `deno run -A mod.ts` in this checkout
#   fresh   README's first command on each runtime, each in its own fresh clone of this checkout's HEAD (nothing
#           installed; the package caches of npm, Deno and Bun are used as they are, or emptied with
#           SMOKE_FRESH_CACHES=empty): `deno run -A mod.ts`, `bun mod.ts`, `npm install && npm start`,
#           then `deno task serve` where `npm install` ran. Each clone must stay clean (`git status --porcelain`), and
#           Deno must not print its box of ignored install scripts
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BIN=$ROOT/node_modules/.bin
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gym-edge-smoke.XXXXXX")
# lavapipe (WebGPU probing under Deno) wants a runtime dir.
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$WORK}"
# The ids the built-in model's Qwen3 tokenizer and chat template give for the request below.
EXPECTED_TOKENS="[151644,872,198,1830,311,220,20,151645,198,151644,77091,198]"
READY_TIMEOUT=${SMOKE_READY_TIMEOUT:-180}

groups=()
cleanup() {
  local g
  for g in "${groups[@]}"; do kill -TERM -- "-$g" 2>/dev/null || true; done
  for g in "${groups[@]}"; do kill -KILL -- "-$g" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

log() { printf '%s\n' "$*"; }
fail() {
  log "smoke: FAIL: $*"
  exit 1
}

# The executables a process group runs (from /proc: procps may not be installed).
group_exes() {
  local stat line rest pgrp
  for stat in /proc/[0-9]*/stat; do
    { read -r line <"$stat"; } 2>/dev/null || continue  # the process may be gone already
    rest=${line##*) }     # after "pid (comm) ": state ppid pgrp ...
    read -r _ _ pgrp _ <<<"$rest"
    if [ "$pgrp" = "$1" ]; then readlink "${stat%/stat}/exe" 2>/dev/null || true; fi
  done
}

# check_http BASE_URL SERVER_PID: waits for /health to say ok, then the three requests (in Node: every machine
# that runs this has it).
check_http() {
  node --input-type=module - "$1" "$2" "$EXPECTED_TOKENS" "$READY_TIMEOUT" <<'JS'
const [base, pid, expected, timeout] = process.argv.slice(2);
const alive = () => {
  try {
    process.kill(Number(pid), 0);
    return true;
  } catch {
    return false;
  }
};
const t0 = performance.now();
for (;;) {
  const res = await fetch(base + "/health", { signal: AbortSignal.timeout(5_000) }).catch(() => null);
  if (res?.status === 200) {
    const health = await res.json();
    if (health.status !== "ok") throw new Error(`/health: ${JSON.stringify(health)}`);
    break;
  }
  if (!alive()) throw new Error("the server exited before it was ready");
  if (performance.now() - t0 > Number(timeout) * 1000) throw new Error(`not ready in ${timeout} s`);
  await new Promise((r) => setTimeout(r, 250));
}
console.log(`  /health ok after ${Math.round(performance.now() - t0)} ms of loading`);
const post = async (path, body) => {
  const res = await fetch(base + path, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
    signal: AbortSignal.timeout(60_000),
  });
  const json = await res.json();
  if (res.status !== 200) throw new Error(`${path}: HTTP ${res.status} ${JSON.stringify(json)}`);
  return json;
};
const messages = [{ role: "user", content: "count to 5" }];
const tok = await post("/tokenize", { messages });
if (JSON.stringify(tok.tokens) !== expected) throw new Error(`/tokenize: ${JSON.stringify(tok.tokens)} != ${expected}`);
const started = performance.now();
const chat = await post("/v1/chat/completions", { messages, max_tokens: 4 });
const n = chat.usage?.completion_tokens;
if (!chat.choices?.[0]?.message || !(n >= 1 && n <= 4)) throw new Error(`chat: ${JSON.stringify(chat)}`);
console.log(
  `  /tokenize gave the expected ${tok.count} ids; chat completion: ${n} tokens in ` +
    `${Math.round(performance.now() - started)} ms, finish_reason ${chat.choices[0].finish_reason}`,
);
JS
}

# smoke NAME WANT FORBID CWD CACHE_DIR CMD...: starts CMD, checks it, stops it. WANT (and FORBID, unless empty) are
# regexes over the names of the executables in the server's process group: which runtime really serves.
smoke() {
  local name=$1 want=$2 forbid=$3 cwd=$4 cache=$5
  shift 5
  local out="$WORK/server.$((${#groups[@]} + 1)).log" t0=$SECONDS t1 port="" pid i exes
  SERVER_LOG=$out
  log "--- $name: $*"
  # setsid: the server and whatever launcher runs it (npx, bunx) share a new process group, stopped as one.
  (cd "$cwd" && GYM_EDGE_CACHE="$cache" exec setsid "$@" --host 127.0.0.1 --port 0 >"$out" 2>&1) &
  pid=$!
  groups+=("$pid")
  for ((i = 0; i < 120; i++)); do
    port=$(grep -aoE 'listening on http://127\.0\.0\.1:[0-9]+' "$out" | grep -oE '[0-9]+$' || true)
    [ -n "$port" ] && break
    kill -0 "$pid" 2>/dev/null || { cat "$out"; fail "$name exited before it listened"; }
    sleep 0.5
  done
  [ -n "$port" ] || { cat "$out"; fail "$name did not listen within 60 s"; }
  check_http "http://127.0.0.1:$port" "$pid" || { cat "$out"; fail "$name"; }
  log "  $(grep -aoE 'loaded .* on [a-z]+ via [^(]*' "$out" | tail -1 | sed -E 's/^loaded .* on /served on /')"
  exes=$(group_exes "$pid" | xargs -r -n1 basename | sort -u | tr '\n' ' ')
  log "  processes: $exes"
  grep -qE "$want" <<<"$exes" || fail "$name runs [$exes], expected $want"
  if [ -n "$forbid" ] && grep -qE "$forbid" <<<"$exes"; then fail "$name runs [$exes], not expected: $forbid"; fi
  t1=$SECONDS
  kill -TERM -- "-$pid" 2>/dev/null || true
  for ((i = 0; i < 40; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.25
  done
  kill -KILL -- "-$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  for ((i = 0; i < 20; i++)); do
    [ -z "$(group_exes "$pid")" ] && break
    sleep 0.25
  done
  [ -z "$(group_exes "$pid")" ] || fail "$name: processes left after SIGKILL"
  log "  stopped in $((SECONDS - t1)) s; passed in $((SECONDS - t0)) s"
}

smoke_pack() {
  local t0=$SECONDS tgz app=$WORK/app
  log "=== npm package (node $(node --version), bun $("$BIN/bun" --version))"
  # prepack builds dist/ with tsc.
  tgz=$(npm pack --silent --pack-destination "$WORK" | tail -1)
  log "packed $tgz ($(du -h "$WORK/$tgz" | cut -f1)) in $((SECONDS - t0)) s"
  mkdir -p "$app"
  # An empty directory: the repository's allowScripts does not apply there, so onnxruntime-node's CUDA download is
  # turned off through its own environment variable.
  (cd "$app" && ONNXRUNTIME_NODE_INSTALL=skip npm install --prefix "$app" --no-audit --no-fund \
    --prefer-offline --loglevel=error "$WORK/$tgz" >/dev/null)
  log "installed into an empty directory in $((SECONDS - t0)) s ($(du -sh "$app/node_modules" | cut -f1))"
  smoke "node (npx gym-edge)" '(^| )node( |$)' '' "$app" "$WORK/cache-node" npx --no-install gym-edge
  # `bunx gym-edge` follows the bin's `#!/usr/bin/env node` when Node is installed; --bun runs it on Bun.
  smoke "bun (bunx --bun gym-edge)" '(^| )bun(\.exe)?( |$)' '(^| )node( |$)' "$app" "$WORK/cache-bun" \
    "$BIN/bun" x --bun gym-edge
}

# The paths `deno compile` leaves out here: deno.json's "compile.exclude" (development tools, builds the server
# never loads) and onnxruntime-node's binaries for other platforms.
compile_excludes() {
  node -e 'for (const p of JSON.parse(require("fs").readFileSync("deno.json", "utf8")).compile.exclude) console.log(p)'
  local dir=node_modules/onnxruntime-node/bin/napi-v6 here d
  here="$dir/$(node -p process.platform)/$(node -p process.arch)"
  for d in "$dir"/*/*; do
    if [ -d "$d" ] && [ "$d" != "$here" ]; then echo "$d"; fi
  done
}

denort_available() {
  if [ -n "${DENORT_BIN:-}" ] && [ -f "$DENORT_BIN" ]; then return 0; fi
  if [ "${SMOKE_DENORT_DOWNLOAD:-}" = 1 ]; then return 0; fi
  local ver deno_dir
  ver=$("$BIN/deno" eval 'console.log(Deno.version.deno)')
  deno_dir=${DENO_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/deno}
  compgen -G "$deno_dir/dl/release/v$ver/denort-*.zip" >/dev/null
}

smoke_binary() {
  log "=== deno compile"
  local t0=$SECONDS args=() p layout=$WORK/layout
  while read -r p; do args+=(--exclude "$p"); done < <(compile_excludes)
  if denort_available; then
    rm -rf dist/gym-edge dist/.gym-edge
    # deno.json's `compile` task (node_modules as npm installed it), plus this platform's excludes.
    "$BIN/deno" compile --node-modules-dir=manual -A --self-extracting --no-check "${args[@]}" \
      -o dist/gym-edge mod.ts >"$WORK/compile.log" 2>&1 || { cat "$WORK/compile.log"; fail "deno compile"; }
    log "compiled dist/gym-edge ($(du -h dist/gym-edge | cut -f1)) in $((SECONDS - t0)) s"
    smoke "binary (dist/gym-edge)" '(^| )gym-edge( |$)' '' "$WORK" "$WORK/cache-binary" "$ROOT/dist/gym-edge"
    return
  fi
  log "binary: SKIPPED: deno compile downloads its runtime (denort) and none is here; set DENORT_BIN to a" \
    "denort binary, or put denort-<target>.zip in Deno's cache, or SMOKE_DENORT_DOWNLOAD=1 when online."
  # Instead, what the self-extracting binary unpacks and runs: the module graph (mod.ts, src/, kernels/ with its
  # .wgsl files), package.json and node_modules less the excludes. Hard links keep the copy cheap.
  mkdir -p "$layout"
  cp -al mod.ts package.json deno.json src kernels node_modules "$layout/" 2>/dev/null ||
    cp -a mod.ts package.json deno.json src kernels node_modules "$layout/"
  for ((p = 1; p < ${#args[@]}; p += 2)); do rm -rf "${layout:?}/${args[p]}"; done
  log "serving the binary's file tree with deno run instead ($(du -sh "$layout" | cut -f1) after excludes)"
  # manual: the tree is served as it is, as the binary would, without Deno installing what the excludes took out.
  smoke "binary's tree, device auto" '(^| )deno( |$)' '' "$layout" "$WORK/cache-tree" \
    "$BIN/deno" run -A --node-modules-dir=manual mod.ts
  smoke "binary's tree, device wasm" '(^| )deno( |$)' '' "$layout" "$WORK/cache-tree" \
    "$BIN/deno" run -A --node-modules-dir=manual mod.ts --device wasm
  smoke_bun_binary
}

# The executable `bun build --compile` makes (what `npm run compile` builds without denort): alone in an empty
# folder it serves on wasm with what it carries; in dist/ of this checkout it finds node_modules/onnxruntime-node
# above it and serves on cpu.
smoke_bun_binary() {
  log "=== bun build --compile"
  local t0=$SECONDS alone=$WORK/alone
  bash scripts/compile.sh --outfile dist/gym-edge-bun >"$WORK/compile-bun.log" 2>&1 ||
    { cat "$WORK/compile-bun.log"; fail "bun build --compile"; }
  log "  $(tail -1 "$WORK/compile-bun.log")"
  mkdir -p "$alone/empty"
  mv dist/gym-edge-bun "$alone/gym-edge"
  smoke "bun executable alone" '(^| )gym-edge( |$)' '' "$alone/empty" "$WORK/cache-bun-exe" "$alone/gym-edge"
  grep -aq ' on wasm via ' "$SERVER_LOG" || fail "the executable alone did not serve on wasm"
  mv "$alone/gym-edge" dist/gym-edge-bun
  smoke "bun executable in dist/, --device cpu" '(^| )gym-edge-bun( |$)' '' "$WORK" "$WORK/cache-bun-exe" \
    "$ROOT/dist/gym-edge-bun" --device cpu
  grep -aq ' on cpu via onnxruntime-node' "$SERVER_LOG" || fail "the executable in dist/ did not serve on cpu"
  rm -f dist/gym-edge-bun
  log "  passed in $((SECONDS - t0)) s"
}

smoke_deno() {
  log "=== deno run"
  smoke "deno (deno run -A mod.ts)" '(^| )deno( |$)' '' "$ROOT" "$WORK/cache-deno" "$BIN/deno" run -A mod.ts
}

# A clone of HEAD with nothing installed, as a new user gets it.
fresh_clone() {
  local dir=$WORK/fresh-$1
  git clone --quiet "$ROOT" "$dir"
  [ ! -e "$dir/node_modules" ] || fail "the clone has a node_modules"
  printf '%s\n' "$dir"
}

# What the first run printed besides the server's own log lines and the installers' progress lines.
first_run_notes() {
  sed 's/\x1b\[[0-9;]*m//g' "$1" | grep -avE '^[0-9]{4}-[0-9]{2}-[0-9]{2}T|^(Download|Initialize|Task) |^> |^ *$' || true
}

# fresh_check NAME DIR [BEFORE]: the clone stays clean (or as BEFORE, an earlier `git status --porcelain`, left
# it), and the first run said nothing alarming of its own.
fresh_check() {
  local name=$1 dir=$2 before=${3:-} dirty notes
  dirty=$(git -C "$dir" status --porcelain | grep -vxF -e "$before" || true)
  if [ -n "$dirty" ]; then
    log "  the clone is not clean after it:"
    sed 's/^/    /' <<<"$dirty"
    fresh_failed+=("$name: left the clone dirty")
  elif [ -n "$before" ]; then
    log "  it changed nothing more in the clone (git status --porcelain)"
  else
    log "  the clone is clean (git status --porcelain)"
  fi
  notes=$(first_run_notes "$SERVER_LOG")
  if [ -n "$notes" ]; then
    log "  printed besides the server's log:"
    sed 's/^/    /' <<<"$notes" | head -20
  fi
  if grep -aq 'Ignored build scripts' "$SERVER_LOG"; then fresh_failed+=("$name: Deno warned of ignored install scripts"); fi
}

smoke_fresh() {
  local head dir t0 d before
  head=$(git rev-parse --short HEAD)
  fresh_failed=()
  log "=== first commands in fresh clones of HEAD ($head; changes not committed are not in them)"
  # Bun installs on the fly only where no node_modules is found in the directory or above it.
  d=$WORK
  while [ "$d" != / ]; do
    [ ! -d "$d/node_modules" ] || fail "$d/node_modules is above the clones: bun would not install on the fly there"
    d=$(dirname "$d")
  done
  if [ "${SMOKE_FRESH_CACHES:-}" = empty ]; then
    export DENO_DIR=$WORK/deno-dir BUN_INSTALL_CACHE_DIR=$WORK/bun-cache npm_config_cache=$WORK/npm-cache
    log "package caches: empty ($WORK)"
  else
    log "package caches: as they are (SMOKE_FRESH_CACHES=empty empties them)"
  fi

  dir=$(fresh_clone deno)
  smoke "deno run -A mod.ts" '(^| )deno( |$)' '' "$dir" "$WORK/cache-fresh-deno" "$BIN/deno" run -A mod.ts
  fresh_check "deno run -A mod.ts" "$dir"
  # No `deno task serve` here: it runs node_modules/.bin/deno, which npm install puts there (checked below). A task
  # naming plain `deno` got the bin of package.json's npm `deno` package, run from Deno's cache, where it cannot find
  # its platform binary (Deno 2.9.6, with or without node_modules).
  rm -rf "$dir"

  dir=$(fresh_clone bun)
  # The server installs node_modules itself on its first run (Bun's install on the fly does not reach the model
  # thread) and says so; the clone must stay clean all the same.
  smoke "bun mod.ts" '(^| )bun(\.exe)?( |$)' '(^| )node( |$)' "$dir" "$WORK/cache-fresh-bun" "$BIN/bun" mod.ts
  grep -aq 'installing the dependencies' "$SERVER_LOG" || fresh_failed+=("bun mod.ts: did not install node_modules on its first run")
  [ -d "$dir/node_modules/onnxruntime-node" ] || fresh_failed+=("bun mod.ts: left no node_modules/onnxruntime-node")
  fresh_check "bun mod.ts" "$dir"
  rm -rf "$dir"

  dir=$(fresh_clone npm)
  t0=$SECONDS
  log "--- npm install (in the clone)"
  (cd "$dir" && npm install --no-audit --no-fund --prefer-offline >"$WORK/npm-install.log" 2>&1) ||
    { cat "$WORK/npm-install.log"; fail "npm install"; }
  log "  installed in $((SECONDS - t0)) s ($(du -sh "$dir/node_modules" | cut -f1))"
  if grep -aq 'warn' "$WORK/npm-install.log"; then
    log "  npm install printed:"
    grep -a 'warn' "$WORK/npm-install.log" | sed 's/^/    /' | head -12
  fi
  # A setting npm does not know (as a project .npmrc key once was) warns on every npm command.
  if grep -aq 'Unknown .* config' "$WORK/npm-install.log"; then fail "npm install warned about an unknown config"; fi
  smoke "npm start" '(^| )node( |$)' '' "$dir" "$WORK/cache-fresh-npm" npm start --
  fresh_check "npm install && npm start" "$dir"
  # After npm install, `deno task serve` runs the Deno it put in node_modules/.bin.
  before=$(git -C "$dir" status --porcelain)
  smoke "deno task serve (after npm install)" '(^| )deno( |$)' '' "$dir" "$WORK/cache-fresh-deno-task" \
    "$BIN/deno" task serve
  fresh_check "deno task serve (after npm install)" "$dir" "$before"
  rm -rf "$dir"

  if [ ${#fresh_failed[@]} -gt 0 ]; then
    printf '  %s\n' "${fresh_failed[@]}"
    fail "fresh clones: ${#fresh_failed[@]} first command(s) served but fell short"
  fi
}

targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(pack binary)
for t in "${targets[@]}"; do
  case "$t" in
    pack) smoke_pack ;;
    binary) smoke_binary ;;
    deno) smoke_deno ;;
    fresh) smoke_fresh ;;
    *) fail "unknown target $t (pack, binary, deno, fresh)" ;;
  esac
done
log "smoke: all passed (${targets[*]}) in $SECONDS s"
