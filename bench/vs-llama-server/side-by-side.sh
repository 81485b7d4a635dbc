#!/bin/bash
# Side-by-side HTTP benchmark on identical weights: llama.cpp's llama-server against gym-edge on Node (and Deno, Bun),
# per weight format: fp32 (GGUF F32 vs ONNX fp32, bit-identical), q8 and q4 (each side's own quantization of those
# weights). The GRPO-like load (8 prompts of ~126 tokens x 4 samples, 64 new tokens each, temperature 1, EOS ignored,
# logprobs of every generated token), concurrent, RUNS timed rounds per server after WARMUP warm-up rounds. One
# server runs at a time. Per server: median generated tok/s and the ratio to llama-server of the same dtype, resident
# memory once ready and at its peak, and per dtype the mean KL divergence of next-token distributions from fp32.
#
# usage (from the project root; on a quiet machine):
#   bash bench/vs-llama-server/side-by-side.sh                                   # fp32, Node
#   DTYPES="fp32 q8 q4" RUNTIMES="node deno bun" bash bench/vs-llama-server/side-by-side.sh   # everything
#   SMOKE=1 DTYPES="fp32 q4" bash bench/vs-llama-server/side-by-side.sh          # end to end, figures meaningless
#   MODES= DTYPES="q8 q4" bash bench/vs-llama-server/side-by-side.sh             # the KL divergences only
#
# What it does (steps already done in $W are skipped):
#   prep  1. llama-server, llama-quantize, llama-perplexity built from the llama.cpp source bundled in the
#            node-llama-cpp npm tarball (build-llama-cpp.sh, -j1)
#         2. the model built by gym-edge itself, one dtype at a time:
#            `gym-edge build-model --preset bench-135m --out $W/bench-135m --dtype D` (seed 0; q8 and q4 again on every
#            run); a dtype that build-model cannot write yet is skipped with a message, on both servers
#            and, for Node, dist/ compiled by `npm run build` (Node runs `node dist/bin.js`, as `npm start` does)
#         3. $W/bench-135m-f32.gguf written from exactly the fp32 ONNX weights and checked bit for bit
#            (gguf-from-gym-edge.ts); q8_0 / q4_0 GGUFs from it by llama-quantize (its default tensor choices)
#         4. QUALITY=1: mean KL divergence from fp32 over the second half of each CTX-token chunk of one text:
#            llama-perplexity --kl-divergence for llama.cpp, bench/quality.ts (when present) for gym-edge
#   bench for each DTYPE and MODE (INTERLEAVE=1, the default): llama-server and gym-edge on each runtime started side
#         by side (each idle while another works); probe and warm-up on each; then round by round, one timed round
#         of the load on each server in turn (the order rotating each round), so that every server meets the same
#         phases of a machine whose speed drifts; then all stopped. INTERLEAVE=0: one server at a time, all its
#         rounds in a row (llama-server per DTYPE for every MODE, then gym-edge per runtime and MODE).
#         summary.mjs prints the table (also $OUT/SUMMARY.md); raw JSON per server in $OUT, memory and load averages
#         per server start in $OUT/servers.jsonl and env.json.
#
# MODES (default "split n"):
#   split  32 separate n=1 requests (4 per prompt). Equal work: 32 prefills + 32 x 64 decoded tokens on both;
#          llama-server gets cache_prompt:false per request, gym-edge runs with --no-prefix-caching.
#   n      8 requests with n=4: one prefill per prompt forked to 4 samples on both (llama-server's child slots,
#          gym-edge's shared prefill). 8 prefills + 32 x 64 decoded tokens.
#
# env: W (${TMPDIR:-/tmp}/gym-edge-vs-llama: builds, model, GGUFs, results), GYM (the current directory: the project
#      root), OUT ($W/results/<time>), DTYPES ("fp32"; any of fp32 q8 q4), RUNTIMES ("node"), MODES ("split n"),
#      THREADS (2), RUNS (3), WARMUP (1), PROMPTS (8), N (4), MAX_TOKENS (64), WORDS (110),
#      LLAMA_NP (32), LLAMA_CTX (8192 = 256 per slot), LLAMA_B (2048), LLAMA_UB (512), LLAMA_KV (f32), LLAMA_FA (off),
#      LLAMA_EXTRA (more llama-server flags), GYM_EXTRA (more gym-edge flags),
#      QUANTIZE_EXTRA (llama-quantize flags, e.g. "--token-embedding-type f32"; names its own GGUFs),
#      QUALITY (1; 0 skips the KL divergences), QUALITY_CTX (256), QUALITY_CHUNKS (12), QUALITY_TEXT ($W/quality-text.md,
#      a copy of the project's README.md made once), RSS_EVERY (1 s between memory samples during a load),
#      INTERLEAVE (1: servers side by side, their rounds taken in turn; 0: one server at a time),
#      REBUILD_QUANTIZED (1: gym-edge's q8 / q4 files are written anew each run, from this checkout's builder; 0 keeps
#      them), SKIP_PREP (1: fail instead of building), SERVER_WAIT (600 s for a server to answer /health).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
W=${W:-${TMPDIR:-/tmp}/gym-edge-vs-llama}
GYM=${GYM:-$PWD}
THREADS=${THREADS:-2}
if [ "${SMOKE:-0}" = 1 ]; then
  : "${RUNS:=1}" "${WARMUP:=0}" "${PROMPTS:=2}" "${N:=2}" "${MAX_TOKENS:=8}" "${QUALITY_CHUNKS:=2}"
fi
RUNS=${RUNS:-3}; WARMUP=${WARMUP:-1}; PROMPTS=${PROMPTS:-8}; N=${N:-4}; MAX_TOKENS=${MAX_TOKENS:-64}; WORDS=${WORDS:-110}
MODES=${MODES-"split n"}
RUNTIMES=${RUNTIMES:-node}
DTYPES=${DTYPES:-fp32}
LLAMA_NP=${LLAMA_NP:-32}; LLAMA_CTX=${LLAMA_CTX:-8192}; LLAMA_B=${LLAMA_B:-2048}; LLAMA_UB=${LLAMA_UB:-512}
LLAMA_KV=${LLAMA_KV:-f32}; LLAMA_FA=${LLAMA_FA:-off}
QUANTIZE_EXTRA=${QUANTIZE_EXTRA:-}
REBUILD_QUANTIZED=${REBUILD_QUANTIZED:-1}
QUALITY=${QUALITY:-1}; QUALITY_CTX=${QUALITY_CTX:-256}; QUALITY_CHUNKS=${QUALITY_CHUNKS:-12}
QUALITY_TEXT=${QUALITY_TEXT:-$W/quality-text.md}
RSS_EVERY=${RSS_EVERY:-1}
SERVER_WAIT=${SERVER_WAIT:-600}
INTERLEAVE=${INTERLEAVE:-1}
MODEL=$W/bench-135m
GGUF_F32=$W/bench-135m-f32.gguf
BIN=$W/llama-src/build/bin
# (an if, not `[ ] && echo`: a failing test in the substitution would end the script under set -e)
if [ "${SMOKE:-0}" = 1 ]; then OUT=${OUT:-$W/results/$(date +%Y%m%d-%H%M%S)-smoke}; else OUT=${OUT:-$W/results/$(date +%Y%m%d-%H%M%S)}; fi
mkdir -p "$OUT"
log() { echo "[$(date +%H:%M:%S)] $*" | tee -a "$OUT/run.log" >&2; }
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }

for d in $DTYPES; do
  case $d in fp32 | q8 | q4) ;; *) log "DTYPES: '$d' is not one of fp32 q8 q4"; exit 2 ;; esac
done
llama_type() { case $1 in fp32) echo f32 ;; q8) echo q8_0 ;; q4) echo q4_0 ;; esac; }
# QUANTIZE_EXTRA changes what llama-quantize writes, so its GGUFs get their own names
QSUFFIX=""
if [ -n "$QUANTIZE_EXTRA" ]; then QSUFFIX=-$(echo "$QUANTIZE_EXTRA" | tr -c 'A-Za-z0-9_\n' '_' | tr -s '_'); fi
gguf_of() { if [ "$1" = fp32 ]; then echo "$GGUF_F32"; else echo "$W/bench-135m-$(llama_type "$1")$QSUFFIX.gguf"; fi; }
json_field() { node -e 'const j=JSON.parse(require("fs").readFileSync(process.argv[1],"utf8"));const v=process.argv[2].split(".").reduce((o,k)=>o?.[k],j);console.log(typeof v==="object"?JSON.stringify(v):v??"")' "$1" "$2"; }

# ---------------------------------------------------------------- prep
need_build() { if [ "${SKIP_PREP:-0}" = 1 ]; then log "missing $1 (SKIP_PREP=1)"; exit 1; fi; }
for tool in llama-server llama-quantize llama-perplexity; do
  if [ ! -x "$BIN/$tool" ]; then
    need_build "$BIN/$tool"; log "building the llama.cpp tools (-j1; log in $OUT/prep.log)"
    JOBS=1 bash "$HERE/build-llama-cpp.sh" "$W" >> "$OUT/prep.log" 2>&1 \
      || { log "building the llama.cpp tools failed: $(tail -3 "$OUT/prep.log")"; exit 1; }
    break
  fi
done

# the build record lists the dtypes and the size of every file; a dtype counts when it is listed and all files match
RECORD=$MODEL/gym-edge-build.json
has_dtype() {
  node -e '
    const fs = require("fs"), path = require("path"); const [dir, dtype] = process.argv.slice(1);
    let r; try { r = JSON.parse(fs.readFileSync(path.join(dir, "gym-edge-build.json"), "utf8")); } catch { process.exit(1); }
    const size = (f) => { try { return fs.statSync(path.join(dir, f)).size; } catch { return -1; } };
    process.exit(r.dtypes.includes(dtype) && Object.entries(r.files).every(([f, n]) => size(f) === n) ? 0 : 1);
  ' "$MODEL" "$1"
}
# a failed build leaves the folder without a record: put the old one back, less the dtype and any file it changed
restore_record() { # saved-record dtype
  node -e '
    const fs = require("fs"), path = require("path"); const [saved, dir, dtype] = process.argv.slice(1);
    const r = JSON.parse(fs.readFileSync(saved, "utf8"));
    const size = (f) => { try { return fs.statSync(path.join(dir, f)).size; } catch { return -1; } };
    r.dtypes = r.dtypes.filter((d) => d !== dtype);
    r.files = Object.fromEntries(Object.entries(r.files).filter(([f, n]) => size(f) === n));
    fs.writeFileSync(path.join(dir, "gym-edge-build.json"), JSON.stringify(r, null, 2) + "\n");
  ' "$1" "$MODEL" "$2"
}
build_dtype() { # dtype -> 0 when the model folder holds it
  # quantized files are rebuilt every run (under a minute), so they always hold this checkout's formats
  if has_dtype "$1" && { [ "$1" = fp32 ] || [ "$REBUILD_QUANTIZED" != 1 ] || [ "${SKIP_PREP:-0}" = 1 ]; }; then return 0; fi
  need_build "$MODEL ($1)"
  log "gym-edge build-model --preset bench-135m --out $MODEL --dtype $1"
  local saved=""
  if [ -f "$RECORD" ]; then saved=$OUT/.build-record.json; cp "$RECORD" "$saved"; fi
  if (cd "$GYM" && node --import tsx mod.ts build-model --preset bench-135m --out "$MODEL" --dtype "$1") >> "$OUT/prep.log" 2>&1; then
    has_dtype "$1"; return
  fi
  if [ -n "$saved" ] && [ ! -f "$RECORD" ]; then restore_record "$saved" "$1"; fi
  return 1
}
if [[ " $RUNTIMES " == *" node "* ]]; then # Node runs the compiled dist/, as `npm start` does
  log "npm run build (dist/ for Node)"
  (cd "$GYM" && npm run build) >> "$OUT/prep.log" 2>&1 || { log "npm run build failed (see $OUT/prep.log)"; exit 1; }
fi
build_dtype fp32 || { log "gym-edge build-model --dtype fp32 failed (see $OUT/prep.log)"; exit 1; }
RUN_DTYPES=""
for d in $DTYPES; do
  if build_dtype "$d"; then RUN_DTYPES="$RUN_DTYPES $d"
  else log "SKIPPING $d on both servers: gym-edge build-model --dtype $d does not work in this checkout: $(tail -1 "$OUT/prep.log")"; fi
done
RUN_DTYPES=${RUN_DTYPES# }

# the weights model.onnx_data holds are the fp32 ones; building another dtype leaves them alone
if [ ! -f "$GGUF_F32.verify.json" ] || [ "$MODEL/onnx/model.onnx_data" -nt "$GGUF_F32.verify.json" ]; then
  need_build "$GGUF_F32"; log "writing $GGUF_F32 from the gym-edge ONNX weights and checking them bit for bit"
  (cd "$GYM" && node --import tsx "$HERE/gguf-from-gym-edge.ts" "$MODEL" "$GGUF_F32") > "$GGUF_F32.verify.json.tmp" 2>> "$OUT/prep.log" || true
  mv "$GGUF_F32.verify.json.tmp" "$GGUF_F32.verify.json"
fi
grep -q '"IDENTICAL (bitwise)"' "$GGUF_F32.verify.json" || { log "GGUF weights do not match the ONNX weights: $(cat "$GGUF_F32.verify.json")"; exit 1; }
cp "$GGUF_F32.verify.json" "$OUT/weights_check.json"
log "weights: $(json_field "$GGUF_F32.verify.json" weights), $(json_field "$GGUF_F32.verify.json" compared_tensors) tensors / $(json_field "$GGUF_F32.verify.json" compared_params) params, GGUF vs $(json_field "$GGUF_F32.verify.json" from)"

# llama-quantize's own choice of tensor types (no --pure): its log says per tensor what it became
# shellcheck disable=SC2016 # the ${...} are JavaScript's
quant_types() { # quantize log -> "q4_0 x210, q8_0 x1 (token_embd), f32 x61"
  node -e '
    const lines = require("fs").readFileSync(process.argv[1], "utf8").split("\n");
    const count = new Map(); let embd = "";
    for (const l of lines) {
      const m = /\]\s+(\S+)\s+-\s+\[.*type =\s*(\w+),\s*(?:converting to (\w+)|size)/.exec(l);
      if (!m) continue;
      const t = m[3] ?? m[2]; count.set(t, (count.get(t) ?? 0) + 1);
      if (m[1] === "token_embd.weight") embd = t;
    }
    console.log([...count].map(([t, n]) => `${t} x${n}${t === embd ? " (token_embd)" : ""}`).join(", "));
  ' "$1"
}
for d in $RUN_DTYPES; do
  [ "$d" = fp32 ] && continue
  g=$(gguf_of "$d")
  if [ ! -f "$g" ] || [ "$GGUF_F32" -nt "$g" ]; then
    need_build "$g"; log "llama-quantize $QUANTIZE_EXTRA $(basename "$GGUF_F32") -> $(basename "$g") ($(llama_type "$d"))"
    # shellcheck disable=SC2086
    nice -n 5 "$BIN/llama-quantize" $QUANTIZE_EXTRA "$GGUF_F32" "$g.tmp" "$(llama_type "$d")" "$THREADS" > "$g.log" 2>&1 \
      || { log "llama-quantize failed: $(tail -3 "$g.log")"; exit 1; }
    mv "$g.tmp" "$g"
  fi
  log "$(basename "$g"): $(quant_types "$g.log")"
done

# ---------------------------------------------------------------- quality: KL divergence from fp32
# One text, cut into QUALITY_CHUNKS chunks of QUALITY_CTX tokens; in each chunk the tokens of the second half are
# scored (what llama-perplexity does), the fp32 model's next-token distribution against the quantized one's.
# shellcheck disable=SC2016 # the ${...} are JavaScript's
kl_llama() { # dtype -> quality.jsonl line
  local d=$1 g base logf
  g=$(gguf_of "$d")
  base=$W/kl-base-$(sha256sum "$QUALITY_TEXT" | cut -c1-12)-c$QUALITY_CTX-n$QUALITY_CHUNKS.bin
  local common=(-c "$QUALITY_CTX" -t "$THREADS" -ctk f32 -ctv f32 -fa off)
  if [ ! -f "$base" ]; then
    log "llama-perplexity: fp32 next-token distributions of $QUALITY_CHUNKS x $QUALITY_CTX tokens -> $(basename "$base")"
    nice -n 5 "$BIN/llama-perplexity" -m "$GGUF_F32" -f "$QUALITY_TEXT" --chunks "$QUALITY_CHUNKS" "${common[@]}" \
      --kl-divergence-base "$base.tmp" > "$OUT/kl_llama-server_base.log" 2>&1 \
      || { log "llama-perplexity (base) failed: $(tail -3 "$OUT/kl_llama-server_base.log")"; return 0; }
    mv "$base.tmp" "$base"
  fi
  logf=$OUT/kl_llama-server_$d.log
  log "llama-perplexity --kl-divergence $(basename "$g")"
  if ! nice -n 5 "$BIN/llama-perplexity" -m "$g" --kl-divergence-base "$base" --kl-divergence "${common[@]}" > "$logf" 2>&1; then
    log "llama-perplexity --kl-divergence failed: $(tail -3 "$logf")"; return 0
  fi
  node -e '
    const [file, dtype, chunks, ctx, gguf] = process.argv.slice(1);
    const text = require("fs").readFileSync(file, "utf8");
    const kl = /Mean\s+KLD:\s*([-\d.e]+)\s*±\s*([-\d.e]+)/.exec(text);
    const ppl = /Mean PPL\(Q\)\s*:\s*([-\d.e]+)/.exec(text), pplBase = /Mean PPL\(base\)\s*:\s*([-\d.e]+)/.exec(text);
    const top = /Same top p:\s*([-\d.]+)/.exec(text);
    console.log(JSON.stringify({ server: "llama-server", dtype, mean_kl: kl ? +kl[1] : null, mean_kl_se: kl ? +kl[2] : null,
      ppl: ppl ? +ppl[1] : null, ppl_fp32: pplBase ? +pplBase[1] : null, same_top_pct: top ? +top[1] : null,
      chunks: +chunks, ctx: +ctx, model: gguf, tool: "llama-perplexity --kl-divergence",
      ...(kl ? {} : { note: `no "Mean KLD" in ${require("path").basename(file)}` }) }));
  ' "$logf" "$d" "$QUALITY_CHUNKS" "$QUALITY_CTX" "$(basename "$g")" >> "$OUT/quality.jsonl"
}
kl_gym() { # dtypes... -> one quality.jsonl line each (bench/quality.ts, when the checkout has it)
  local help logf args=() d
  local list; list=$(IFS=,; echo "$*")
  if [ ! -f "$GYM/bench/quality.ts" ]; then
    for d in "$@"; do
      echo "{\"server\":\"gym-edge\",\"dtype\":\"$d\",\"mean_kl\":null,\"note\":\"no bench/quality.ts in this checkout\"}" >> "$OUT/quality.jsonl"
    done
    return 0
  fi
  # pass what the script takes (its --help lists its flags); one call for all dtypes scores the fp32 model once
  help=$(cd "$GYM" && { node --import tsx bench/quality.ts --help 2>&1 || true; })
  args=(--text "$QUALITY_TEXT" --ctx "$QUALITY_CTX" --dtype "$list")
  if grep -q -- '--model' <<< "$help"; then args+=(--model "$MODEL")
  elif grep -q -- '--cache-dir' <<< "$help"; then args+=(--cache-dir "$(dirname "$MODEL")"); fi
  if grep -q -- '--chunks' <<< "$help"; then args+=(--chunks "$QUALITY_CHUNKS"); fi
  if grep -q -- '--threads' <<< "$help"; then args+=(--threads "$THREADS"); fi
  logf=$OUT/kl_gym-edge.log
  log "node --import tsx bench/quality.ts ${args[*]}"
  if ! (cd "$GYM" && nice -n 5 node --import tsx bench/quality.ts "${args[@]}") > "$logf" 2>&1; then
    log "bench/quality.ts failed: $(tail -3 "$logf")"
  fi
  node -e '
    const [file, chunksAsked, ctx, ...dtypes] = process.argv.slice(1);
    const lines = require("fs").readFileSync(file, "utf8").split("\n").filter((l) => l.startsWith("{"));
    const found = new Map();
    for (const l of lines) { try { const x = JSON.parse(l); if ("mean_kl" in x) found.set(x.dtype ?? dtypes[0], x); } catch {} }
    for (const dtype of dtypes) {
      const j = found.get(dtype) ?? { note: "no figure from bench/quality.ts (see kl_gym-edge.log)" };
      console.log(JSON.stringify({ ...j, server: "gym-edge", dtype, mean_kl: j.mean_kl ?? null, chunks_asked: +chunksAsked,
        ctx: j.ctx ?? +ctx, tool: "bench/quality.ts" }));
    }
  ' "$logf" "$QUALITY_CHUNKS" "$QUALITY_CTX" "$@" >> "$OUT/quality.jsonl"
}
if [ "$QUALITY" = 1 ]; then
  [ -f "$QUALITY_TEXT" ] || cp "$GYM/README.md" "$QUALITY_TEXT"
  log "quality text: $QUALITY_TEXT ($(wc -c < "$QUALITY_TEXT") bytes, sha256 $(sha256sum "$QUALITY_TEXT" | cut -c1-12))"
  quantized=()
  for d in $RUN_DTYPES; do [ "$d" = fp32 ] || quantized+=("$d"); done # fp32 is the reference: 0 by definition
  if [ ${#quantized[@]} -gt 0 ]; then
    for d in "${quantized[@]}"; do kl_llama "$d"; done
    kl_gym "${quantized[@]}"
  fi
fi

# ---------------------------------------------------------------- servers
SERVER_PID=""; SAMPLER_PID=""
# servers running side by side (INTERLEAVE=1), by label: pid, port and start record; `use LABEL` makes one current
declare -A S_PID=() S_PORT=() S_REC=()
remember() { S_PID[$1]=$SERVER_PID; S_PORT[$1]=$PORT; S_REC[$1]=$START_REC; }
use() { SERVER_PID=${S_PID[$1]}; PORT=${S_PORT[$1]}; START_REC=${S_REC[$1]}; }
stop_sampler() { if [ -n "$SAMPLER_PID" ]; then kill "$SAMPLER_PID" 2>/dev/null || true; wait "$SAMPLER_PID" 2>/dev/null || true; SAMPLER_PID=""; fi; }
cleanup() {
  stop_sampler
  local p
  for p in "$SERVER_PID" "${S_PID[@]}"; do
    if [ -n "$p" ] && kill -0 "$p" 2>/dev/null; then kill -TERM "$p" 2>/dev/null || true; sleep 2; kill -KILL "$p" 2>/dev/null || true; fi
  done
}
trap cleanup EXIT INT TERM
free_port() { node -e 'const s=require("net").createServer().listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})'; }

# memory of the server and any processes it started, from /proc/PID/status, in kB
tree_pids() { local c; echo "$1"; for c in $(ps -o pid= --ppid "$1" 2>/dev/null || true); do tree_pids "$c"; done; }
status_kb() { # field pid
  local sum=0 p v
  for p in $(tree_pids "$2"); do
    v=$(awk -v f="$1:" '$1 == f { print $2 }' "/proc/$p/status" 2>/dev/null || true)
    sum=$((sum + ${v:-0}))
  done
  echo "$sum"
}
mb() { echo $((($1 + 512) / 1024)); }
start_sampler() { # the largest VmRSS seen every RSS_EVERY s while the load runs -> $1
  local file=$1 pid=$SERVER_PID
  status_kb VmRSS "$pid" > "$file"
  (
    max=$(cat "$file")
    while kill -0 "$pid" 2>/dev/null; do
      v=$(status_kb VmRSS "$pid")
      if [ "$v" -gt "$max" ]; then max=$v; echo "$max" > "$file"; fi
      sleep "$RSS_EVERY"
    done
  ) &
  SAMPLER_PID=$!
}

# one JSON line per server start (memory once ready, load averages), and one per load run on it
START_REC=""
start_server() { # label server runtime dtype logfile dir cmd...
  local label=$1 server=$2 runtime=$3 dtype=$4 logf=$5 dir=$6; shift 6
  printf '%s\t(cd %s && %s)\n' "$label" "$dir" "$*" >> "$OUT/servers.tsv"
  local load0; load0=$(loadavg)
  log "start $label: $*"
  (cd "$dir" && exec "$@") > "$logf" 2>&1 &
  SERVER_PID=$!
  local t0=$SECONDS
  until curl -sf -o /dev/null "http://127.0.0.1:$PORT/health"; do
    kill -0 "$SERVER_PID" 2>/dev/null || { log "$label exited during startup:"; tail -20 "$logf" >&2; exit 1; }
    if [ $((SECONDS - t0)) -gt "$SERVER_WAIT" ]; then log "$label not healthy after ${SERVER_WAIT}s"; exit 1; fi
    sleep 1
  done
  local ready; ready=$(mb "$(status_kb VmRSS "$SERVER_PID")")
  log "$label ready after $((SECONDS - t0)) s (pid $SERVER_PID, rss $ready MB, load avg $(loadavg))"
  START_REC="\"label\":\"$label\",\"server\":\"$server\",\"runtime\":\"$runtime\",\"dtype\":\"$dtype\",\"pid\":$SERVER_PID,\"ready_s\":$((SECONDS - t0)),\"rss_ready_mb\":$ready,\"loadavg_start\":\"$load0\""
}
stop_server() {
  [ -z "$SERVER_PID" ] && return
  echo "{\"what\":\"server\",$START_REC,\"rss_hwm_mb\":$(mb "$(status_kb VmHWM "$SERVER_PID")"),\"loadavg_end\":\"$(loadavg)\"}" >> "$OUT/servers.jsonl"
  kill -TERM "$SERVER_PID" 2>/dev/null || true
  for _ in $(seq 1 60); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.5; done
  kill -KILL "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=""
}
run_client() { # label server runtime dtype mode [runs warmups first-round: a later round, added to the earlier ones]
  local label=$1 server=$2 runtime=$3 dtype=$4 mode=$5 runs=${6:-$RUNS} warmups=${7:-$WARMUP} first=${8:-1}
  local peak=$OUT/.rss_peak more=()
  if [ -n "${8:-}" ]; then more=(--append); fi
  if [ "$runs" = 0 ]; then log "load $label, mode $mode: $PROMPTS prompts x n=$N x $MAX_TOKENS tokens: probe, $warmups warm-up"
  else log "load $label, mode $mode: $PROMPTS prompts x n=$N x $MAX_TOKENS tokens, $warmups warm-up + timed round(s) $first..$((first + runs - 1))"; fi
  start_sampler "$peak"
  node "$HERE/client.mjs" --url "http://127.0.0.1:$PORT" --label "$label" --server "$server" --runtime "$runtime" \
    --dtype "$dtype" --mode "$mode" --runs "$runs" --warmup "$warmups" --first-round "$first" "${more[@]}" \
    --prompts "$PROMPTS" --n "$N" --max-tokens "$MAX_TOKENS" --words "$WORDS" --out "$OUT/client_${label}_${mode}.json" \
    >> "$OUT/client.jsonl" 2> >(tee -a "$OUT/run.log" >&2) || log "CHECK FAILED for $label / $mode (see $OUT/client.jsonl)"
  stop_sampler
  local load_peak hwm
  load_peak=$(mb "$(cat "$peak")"); hwm=$(mb "$(status_kb VmHWM "$SERVER_PID")")
  log "$label $mode: rss peak during the load $load_peak MB, VmHWM $hwm MB, load avg $(loadavg)"
  echo "{\"what\":\"load\",$START_REC,\"mode\":\"$mode\",\"rss_load_peak_mb\":$load_peak,\"rss_hwm_mb\":$hwm,\"loadavg_end\":\"$(loadavg)\"}" >> "$OUT/servers.jsonl"
}

# llama-server settings (LLAMA_* to change them):
#   -np 32            one slot per concurrent sequence (32 = 8 prompts x 4), so no request queues behind another
#   -c 8192           32 x 256 tokens; a sequence needs ~124 prompt (chat template included) + 64 generated = ~190
#   --no-kv-unified   each slot its own KV stream: a decode token attends over its own <=256 cells, not over the
#                     whole 8192-cell buffer with a mask (a noisy A/B had the unified buffer 2-3x slower per round)
#   -t 2 -tb 2        both cores for decode and for prompt batches (THREADS)
#   -cb               continuous batching (the default): new sequences join the running batch between steps
#   -b 2048 -ub 512   llama.cpp's defaults (gym-edge's --max-num-batched-tokens is 512 too)
#   -ctk/-ctv f32     F32 KV cache: what gym-edge keeps, for every dtype
#   -fa off           flash attention on the CPU rounds attention to f16; LLAMA_FA=on to try it
#   --cache-ram 0 --no-cache-idle-slots  no host-RAM prompt cache (nothing is reused here)
#   --reasoning-format none              output text left unparsed, as gym-edge without --reasoning-parser
CMD=()
words() { local w=(); if [ -n "$1" ]; then read -ra w <<< "$1"; fi; CMD+=("${w[@]}"); }
llama_cmd() { # gguf -> CMD
  CMD=("$BIN/llama-server" -m "$1" --host 127.0.0.1 --port "$PORT" -a bench-135m
    -np "$LLAMA_NP" -c "$LLAMA_CTX" -t "$THREADS" -tb "$THREADS" -b "$LLAMA_B" -ub "$LLAMA_UB" -cb --no-kv-unified
    -ctk "$LLAMA_KV" -ctv "$LLAMA_KV" -fa "$LLAMA_FA" --cache-ram 0 --no-cache-idle-slots --reasoning-format none
    --no-webui)
  words "${LLAMA_EXTRA:-}"
}
gym_cmd() { # runtime mode dtype -> CMD
  case $1 in
    node) CMD=(node dist/bin.js) ;; # what `npm start` and `npx gym-edge` run (tsx's loader costs ~190 MB)
    deno) CMD=(node_modules/.bin/deno run -A mod.ts) ;;
    bun) CMD=(node_modules/.bin/bun mod.ts) ;;
    *) log "unknown runtime $1 (node, deno, bun)"; exit 2 ;;
  esac
  CMD+=(--model "$MODEL" --dtype "$3" --device cpu --port "$PORT" --threads "$THREADS")
  if [ "$2" = split ]; then CMD+=(--no-prefix-caching); fi
  words "${GYM_EXTRA:-}"
}
PORT=0
for rt in $RUNTIMES; do gym_cmd "$rt" n fp32; done

node -e '
  const [out, ...kv] = process.argv.slice(1);
  const env = {};
  for (let i = 0; i < kv.length; i += 2) env[kv[i]] = /^-?\d+(\.\d+)?$/.test(kv[i + 1]) ? Number(kv[i + 1]) : kv[i + 1];
  require("fs").writeFileSync(out, JSON.stringify(env, null, 1) + "\n");
' "$OUT/env.json" date "$(date -Is)" host "$(hostname)" cpus "$(nproc)" cpu "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)" \
  node "$(node --version)" llama_cpp "$(git -C "$W/llama-src" log --oneline -1 2>/dev/null | cut -c1-60)" \
  gym_edge "$(git -C "$GYM" log --oneline -1 2>/dev/null | cut -c1-60)" dtypes_asked "$DTYPES" dtypes_run "$RUN_DTYPES" \
  quantize_extra "$QUANTIZE_EXTRA" loadavg_start "$(loadavg)" threads "$THREADS" prompts "$PROMPTS" n "$N" \
  max_tokens "$MAX_TOKENS" words "$WORDS" runs "$RUNS" warmup "$WARMUP" modes "$MODES" runtimes "$RUNTIMES" \
  quality "$QUALITY" quality_text "$QUALITY_TEXT" quality_ctx "$QUALITY_CTX" quality_chunks "$QUALITY_CHUNKS"
log "results in $OUT; dtypes $RUN_DTYPES; load average at start: $(loadavg)"

if [ -n "${MODES// /}" ] && [ "$INTERLEAVE" = 1 ]; then
  for d in $RUN_DTYPES; do
    for mode in $MODES; do
      labels=() servers=() runtimes=()
      PORT=$(free_port)
      llama_cmd "$(gguf_of "$d")"
      start_server "llama-server-$d" llama-server C++ "$d" "$OUT/server_llama-server-${d}_$mode.log" "$W" "${CMD[@]}"
      remember "llama-server-$d"; labels+=("llama-server-$d"); servers+=(llama-server); runtimes+=(C++)
      for rt in $RUNTIMES; do
        PORT=$(free_port)
        gym_cmd "$rt" "$mode" "$d"
        start_server "gym-edge-$rt-$d" gym-edge "$rt" "$d" "$OUT/server_gym-edge-$rt-${d}_$mode.log" "$GYM" "${CMD[@]}"
        remember "gym-edge-$rt-$d"; labels+=("gym-edge-$rt-$d"); servers+=(gym-edge); runtimes+=("$rt")
      done
      k=${#labels[@]}
      for ((i = 0; i < k; i++)); do
        use "${labels[i]}"; run_client "${labels[i]}" "${servers[i]}" "${runtimes[i]}" "$d" "$mode" 0 "$WARMUP"
      done
      for ((r = 1; r <= RUNS; r++)); do
        for ((j = 0; j < k; j++)); do
          i=$(((j + r - 1) % k))
          use "${labels[i]}"; run_client "${labels[i]}" "${servers[i]}" "${runtimes[i]}" "$d" "$mode" 1 0 "$r"
        done
      done
      for ((i = 0; i < k; i++)); do use "${labels[i]}"; stop_server; done
      S_PID=() S_PORT=() S_REC=()
    done
  done
elif [ -n "${MODES// /}" ]; then
  for d in $RUN_DTYPES; do
    # llama-server serves both modes from one start (the modes differ only in the requests)
    PORT=$(free_port)
    llama_cmd "$(gguf_of "$d")"
    start_server "llama-server-$d" llama-server C++ "$d" "$OUT/server_llama-server-$d.log" "$W" "${CMD[@]}"
    for mode in $MODES; do run_client "llama-server-$d" llama-server C++ "$d" "$mode"; done
    stop_server
    for rt in $RUNTIMES; do
      for mode in $MODES; do
        PORT=$(free_port)
        gym_cmd "$rt" "$mode" "$d"
        start_server "gym-edge-$rt-$d" gym-edge "$rt" "$d" "$OUT/server_gym-edge-$rt-${d}_$mode.log" "$GYM" "${CMD[@]}"
        run_client "gym-edge-$rt-$d" gym-edge "$rt" "$d" "$mode"
        stop_server
      done
    done
  done
fi

# env.json gets the server starts (memory, load averages) and the load average at the end
node -e '
  const fs = require("fs"); const [envFile, recs, load] = process.argv.slice(1);
  const env = JSON.parse(fs.readFileSync(envFile, "utf8"));
  env.servers = fs.existsSync(recs) ? fs.readFileSync(recs, "utf8").trim().split("\n").filter(Boolean).map((l) => JSON.parse(l)) : [];
  env.loadavg_end = load;
  fs.writeFileSync(envFile, JSON.stringify(env, null, 1) + "\n");
' "$OUT/env.json" "$OUT/servers.jsonl" "$(loadavg)"
echo
node "$HERE/summary.mjs" "$OUT" --md "$OUT/SUMMARY.md"
log "done: $OUT/SUMMARY.md"
