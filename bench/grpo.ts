/**
 * A GRPO-like load: 8 prompts of ~126 tokens, n=4 (a group per prompt), 64 new tokens, temperature 1, all submitted
 * at once. Prints the engine's generated tokens/s (median of `runs`) beside llama.cpp's figure for the same load
 * on a model of this shape (its own tools, 2 threads, fp32: ~17 s, ~120 generated tok/s before any sampling;
 * measured outside this script, it needs a GGUF build), and runs transformers.js generate() on the whole load as one
 * left-padded static batch as the in-script baseline.
 * With --http it also sends the same load through the HTTP server (gym-edge run as a child process on
 * --server-runtime, /v1/completions with the prompts' token ids, n samples a request, log-probabilities on) and
 * reports that figure beside the in-process one: what a client gets against what the engine does.
 * Run: node --import tsx bench/grpo.ts [--runs 3] [--baseline-runs 1] [--baseline-top-k 0[,50]] [--no-baseline]
 *      [--max-num-seqs 32] [--max-num-batched-tokens 512] [--device cpu|wasm|webgpu [--host-cache]] [--cache-dir DIR]
 *      [--http [--server-runtime node|deno|bun] [--server-flags "..."] [--no-in-process]]
 *      [--grammar none|json|digits] (every sample under a grammar that cannot finish: the cost of the masks)
 */
import process from "node:process";
import { z } from "zod";
import type { TokenConstraint } from "../src/engine/constraint.ts";
import { Grammars, type GrammarSpec } from "../src/engine/grammar/grammars.ts";
import { runtimeName } from "../src/runtime/detect.ts";
import { ServerProcess } from "./chaos/server.ts";
import { baselineFigures, baselineVariant, GenerateBaseline } from "./lib/baseline.ts";
import { type BenchEngine, benchModel, openBenchEngine, runEngineLoad } from "./lib/engine.ts";
import { EngineBenchFlags } from "./lib/engine-flags.ts";
import { benchFlags, intFlag, numberListFlag } from "./lib/flags.ts";
import { runHttpLoad } from "./lib/http-load.ts";
import { randomPrompts } from "./lib/prompts.ts";
import { median, report, residentMemory, round } from "./lib/report.ts";

/** llama.cpp on this load (same shape and weights, 2 threads, fp32): generated tokens / wall seconds. */
const LLAMA_CPP_TOK_S = 120;

const GrpoFlags = EngineBenchFlags.extend({
  prompts: intFlag(8).describe("prompts in the load"),
  promptLen: intFlag(126).describe("tokens a prompt (+-8)"),
  n: intFlag(4).describe("samples a prompt (a group)"),
  newTokens: intFlag(64).describe("tokens generated a sample"),
  baselineRuns: intFlag(1).describe("runs of the generate() baseline"),
  baselineTopK: numberListFlag("0").describe("the baseline's top_k, one baseline each (0: the whole vocabulary)"),
  http: z.boolean().default(false).describe("also send the load through the HTTP server, log-probabilities on"),
  serverRuntime: z.enum(["node", "deno", "bun"]).default(runtimeName()).describe("the runtime the --http server runs on"),
  serverFlags: z.string().default("").describe("more flags for the --http server, space-separated (\"--sampler-threads 1\")"),
  inProcess: z.boolean().default(true).describe("run the load through the engine in this process"),
  grammar: z.enum(["none", "json", "digits"]).default("none").describe(
    "constrain every sample (in process): json, an array of 1000 strings or more (most of the vocabulary allowed inside a " +
      "string); digits, 1000 digits (ten tokens allowed); neither can finish within new_tokens",
  ),
});

const flags = benchFlags(
  GrpoFlags,
  "A GRPO-like load through the engine, beside llama.cpp's figure and transformers.js generate() on one static batch.\n" +
    "Run: node --import tsx bench/grpo.ts [flags]",
);
const { prompts: numPrompts, promptLen, n, newTokens, baselineRuns, baselineTopK: baselineTopKs } = flags;
const sampling = { temperature: 1, max_tokens: newTokens, ignore_eos: true };
const load = { prompts: numPrompts, prompt_tokens: `${promptLen}+-8`, n, new_tokens: newTokens, temperature: 1 };
const promptsOf = (run: number) => randomPrompts(2000 + run, numPrompts, promptLen, 16);

const dir = await benchModel(flags);

async function benchEngine(): Promise<number> {
  const bench = await openBenchEngine(dir, flags);
  // Once loaded, before any request: what the weights and the engine hold (peak_rss_mb includes the loading).
  const loadedMb = residentMemory().rss_mb;
  const { engine, profile } = bench;
  const constraint = await grammarOf(bench);
  await runEngineLoad(engine, randomPrompts(2, 4, promptLen, 16), 2, { ...sampling, max_tokens: 8 }, 0);
  const rates: number[] = [];
  const profiles: Record<string, unknown>[] = [];
  const otherCores: (number | null)[] = [];
  const before = engine.stats();
  for (let run = 0; run < flags.runs; run++) {
    profile.clear();
    const result = await runEngineLoad(engine, promptsOf(run), n, sampling, run * 100, constraint);
    rates.push(result.generated / result.seconds);
    otherCores.push(result.cpu.other_cores);
    profiles.push({ tok_s: round(result.generated / result.seconds, 1), seconds: round(result.seconds, 1),
      ...result.cpu, ...profile.summary(result.seconds * 1000, result.generated) });
    console.error(JSON.stringify(profiles.at(-1)));
  }
  const after = engine.stats();
  const rate = median(rates);
  report("grpo", flags, {
    engine: "gym-edge",
    ...load,
    grammar: flags.grammar,
    requests: numPrompts * n,
    runs: flags.runs,
    tok_s: round(rate, 1),
    tok_s_runs: rates.map((r) => round(r, 1)),
    other_cores_runs: otherCores,
    seconds: round(numPrompts * n * newTokens / rate, 1),
    reference_llama_cpp_tok_s: LLAMA_CPP_TOK_S,
    reference_note: "llama.cpp, 2 threads, fp32, same shape and weights, measured on this machine outside this script",
    vs_llama_cpp: round(rate / LLAMA_CPP_TOK_S, 2),
    max_num_seqs: flags.maxNumSeqs,
    max_num_batched_tokens: flags.maxNumBatchedTokens,
    preemptions: after.preemptions - before.preemptions,
    prefix_cache_hit_tokens: after.cache.hitTokens - before.cache.hitTokens,
    peak_kv_rows_mb: round(bench.kvPeak.rows / 2 ** 20, 1),
    rss_loaded_mb: loadedMb,
    profile_of_median_run: profiles[rates.indexOf(rate)],
  });
  await bench.close();
  return rate;
}

/** Each sample's grammar matcher under --grammar (compiled before the timed runs), or none. */
async function grammarOf(bench: BenchEngine): Promise<(() => TokenConstraint) | undefined> {
  if (flags.grammar === "none") return undefined;
  const { tokenizer, engine, loaded } = bench.served;
  const grammars = new Grammars(() => ({
    tokens: tokenizer.tokenStrings(Array.from({ length: tokenizer.vocabSize }, (_, i) => i)),
    vocabSize: engine.runner.vocabSize,
    stopTokenIds: loaded.config.eosTokenIds,
  }));
  const spec: GrammarSpec = flags.grammar === "json"
    ? { kind: "json_schema", schema: JSON.stringify({ type: "array", items: { type: "string" }, minItems: 1000 }), anyWhitespace: false }
    : { kind: "regex", pattern: "[0-9]{1000}" };
  const compiled = await grammars.compile(spec);
  return () => compiled.matcher();
}

async function benchBaseline(engineRate: number): Promise<void> {
  const baseline = await GenerateBaseline.open(dir);
  try {
    for (const topK of baselineTopKs) {
      await baseline.generate([promptsOf(0)[0]], 4, { temperature: 1, topK });
      const rates: number[] = [];
      const otherCores: (number | null)[] = [];
      for (let run = 0; run < baselineRuns; run++) {
        const requests = promptsOf(run).flatMap((p) => Array.from({ length: n }, () => p));
        const { seconds, cpu } = await baseline.generate(requests, newTokens, { temperature: 1, topK });
        rates.push(requests.length * newTokens / seconds);
        otherCores.push(cpu.other_cores);
        console.error(`static batch run ${run}: ${round(rates.at(-1)!, 1)} tok/s`);
      }
      report("grpo_baseline_static_batch", flags, {
        engine: "transformers.js generate(), the whole load as one left-padded static batch",
        ...load,
        ...baselineVariant(topK),
        baseline_requests: numPrompts * n,
        ...baselineFigures(rates, otherCores, engineRate),
      });
    }
  } finally {
    await baseline.dispose();
  }
}

/** The same load through the HTTP server, a child process; `engineRate` is the in-process figure (or null). */
async function benchHttp(engineRate: number | null): Promise<void> {
  const server = await ServerProcess.start(flags.serverRuntime, [
    "--port", "0", "--host", "127.0.0.1", "--model", dir, "--device", flags.device,
    "--max-num-seqs", String(flags.maxNumSeqs), "--max-num-batched-tokens", String(flags.maxNumBatchedTokens),
    "--kv-cache-memory", String(flags.kvCacheMemory), ...flags.serverFlags.split(" ").filter(Boolean),
  ], { env: { GYM_EDGE_CACHE: process.env.GYM_EDGE_CACHE ?? flags.cacheDir } });
  try {
    const model: string = (await (await fetch(`${server.url}/v1/models`)).json()).data[0].id;
    const readyMb = server.rssMb();
    await runHttpLoad(server.url, model, randomPrompts(2, 4, promptLen, 16), 2, { ...sampling, max_tokens: 8 }, 0);
    let peakMb = 0;
    const watch = setInterval(() => peakMb = Math.max(peakMb, server.rssMb() ?? 0), 200);
    const rates: number[] = [];
    const cores: number[] = [];
    try {
      for (let run = 0; run < flags.runs; run++) {
        const result = await runHttpLoad(server.url, model, promptsOf(run), n, sampling, run * 100);
        rates.push(result.generated / result.seconds);
        cores.push(result.cpu.process_cores + (result.cpu.other_cores ?? 0));
        console.error(`http run ${run}: ${round(rates.at(-1)!, 1)} tok/s, ${round(result.seconds, 1)} s`);
      }
    } finally {
      clearInterval(watch);
    }
    const rate = median(rates);
    report("grpo_http", flags, {
      engine: "gym-edge through HTTP",
      server_runtime: flags.serverRuntime,
      server_flags: flags.serverFlags,
      ...load,
      requests: numPrompts,
      logprobs: 1,
      runs: flags.runs,
      tok_s: round(rate, 1),
      tok_s_runs: rates.map((r) => round(r, 1)),
      in_process_tok_s: engineRate === null ? null : round(engineRate, 1),
      vs_in_process: engineRate === null ? null : round(rate / engineRate, 2),
      machine_cores_busy_runs: cores.map((c) => round(c)),
      server_rss_ready_mb: readyMb === null ? null : Math.round(readyMb),
      server_rss_peak_mb: Math.round(Math.max(peakMb, server.rssMb() ?? 0)),
    });
  } finally {
    await server.stop(10_000);
  }
}

const engineRate = flags.inProcess ? await benchEngine() : null;
if (engineRate !== null && flags.baseline && flags.device === "cpu") await benchBaseline(engineRate);
if (flags.http) await benchHttp(engineRate);
