/**
 * Rollout throughput: 16 prompts of ~256 tokens, n=4, 128 new tokens each, temperature 1, ignore_eos, submitted at
 * once to the engine, against transformers.js generate() one request at a time and on a left-padded static batch.
 * Prints one JSON line per measurement (medians of `runs`); the engine runs the full load, the baselines a subset of
 * its requests (generated tokens/s is a rate; `baseline_requests` says how many). Also peak resident memory sampled
 * during the engine's runs and the KV bytes in use.
 * Run: node --import tsx bench/rollouts.ts [--runs 3] [--prompts 16] [--prompt-len 256] [--n 4] [--new-tokens 128]
 *      [--sequential-requests 2] [--baseline-runs 3] [--static-batch 32] [--static-runs 1] [--baseline-top-k 0[,50]]
 *      [--no-baseline]
 *      [--max-num-seqs 32] [--max-num-batched-tokens 512] [--kv-cache-memory BYTES] [--device cpu|wasm|webgpu [--host-cache]] [--cache-dir DIR]
 */
import { z } from "zod";
import { baselineFigures, baselineVariant, GenerateBaseline } from "./lib/baseline.ts";
import { benchModel, openBenchEngine, runEngineLoad } from "./lib/engine.ts";
import { EngineBenchFlags } from "./lib/engine-flags.ts";
import { benchFlags, intFlag, numberListFlag } from "./lib/flags.ts";
import { RssSampler, rssBytes } from "./lib/meters.ts";
import { randomPrompts } from "./lib/prompts.ts";
import { median, report, round } from "./lib/report.ts";

const RolloutsFlags = EngineBenchFlags.extend({
  prompts: intFlag(16).describe("prompts in the load"),
  promptLen: intFlag(256).describe("tokens a prompt (+-16)"),
  n: intFlag(4).describe("samples a prompt"),
  newTokens: intFlag(128).describe("tokens generated a sample"),
  sequentialRequests: intFlag(2).describe("requests the one-at-a-time baseline generates a run"),
  staticBatch: z.coerce.number().int().optional().describe("requests in the static-batch baseline (default: --max-num-seqs)"),
  baselineRuns: z.coerce.number().int().optional().describe("runs of the one-at-a-time baseline (default: --runs)"),
  // One static batch of 32 x 128 tokens over the whole vocabulary takes minutes: one run unless asked.
  staticRuns: intFlag(1).describe("runs of the static-batch baseline"),
  baselineTopK: numberListFlag("0").describe("the baselines' top_k, one set of baselines each (0: the whole vocabulary)"),
});

const flags = benchFlags(
  RolloutsFlags,
  "Rollout throughput of the engine against transformers.js generate(), one request at a time and on a static batch.\n" +
    "Run: node --import tsx bench/rollouts.ts [flags]",
);
const { prompts: numPrompts, promptLen, n, newTokens, sequentialRequests, staticRuns } = flags;
const staticBatch = flags.staticBatch ?? flags.maxNumSeqs;
const baselineRuns = flags.baselineRuns ?? flags.runs;
const baselineTopKs = flags.baselineTopK;
const sampling = { temperature: 1, max_tokens: newTokens, ignore_eos: true };
const load = { prompts: numPrompts, prompt_tokens: `${promptLen}+-16`, n, new_tokens: newTokens, temperature: 1 };
/** Run r's prompts: fresh ones each run, so that no run finds the previous one's prompts in the prefix cache. */
const promptsOf = (run: number) => randomPrompts(1000 + run, numPrompts, promptLen, 32);
/** The load's requests in submission order (each prompt n times), the baselines' subsets are taken from the front. */
const requestsOf = (run: number) => promptsOf(run).flatMap((p) => Array.from({ length: n }, () => p));

const dir = await benchModel(flags);

async function benchEngine(): Promise<number> {
  const rssBeforeLoad = rssBytes();
  const bench = await openBenchEngine(dir, flags);
  const { engine, profile } = bench;
  const rssLoaded = rssBytes();
  // Warm-up: the first runs at a new cache size allocate; not measured.
  await runEngineLoad(engine, randomPrompts(1, 4, promptLen, 32), 2, { ...sampling, max_tokens: 8 }, 0);
  const rss = new RssSampler();
  const rates: number[] = [];
  const profiles: Record<string, unknown>[] = [];
  const ttfts: number[] = [];
  const otherCores: (number | null)[] = [];
  const before = engine.stats();
  for (let run = 0; run < flags.runs; run++) {
    profile.clear();
    rss.start();
    const result = await runEngineLoad(engine, promptsOf(run), n, sampling, run * 100);
    rss.stop();
    rates.push(result.generated / result.seconds);
    ttfts.push(median(result.ttftMs));
    otherCores.push(result.cpu.other_cores);
    profiles.push({ tok_s: round(result.generated / result.seconds, 1), seconds: round(result.seconds, 1),
      ...result.cpu, ...profile.summary(result.seconds * 1000, result.generated) });
    console.error(JSON.stringify(profiles.at(-1)));
  }
  const after = engine.stats();
  const rate = median(rates);
  const medianRun = profiles[rates.indexOf(rate)];
  report("rollouts", flags, {
    engine: "gym-edge",
    ...load,
    requests: numPrompts * n,
    generated_tokens_per_run: numPrompts * n * newTokens,
    runs: flags.runs,
    tok_s: round(rate, 1),
    tok_s_runs: rates.map((r) => round(r, 1)),
    other_cores_runs: otherCores,
    ttft_ms_median: round(median(ttfts), 0),
    max_num_seqs: flags.maxNumSeqs,
    max_num_batched_tokens: flags.maxNumBatchedTokens,
    preemptions: after.preemptions - before.preemptions,
    prefix_cache_hit_tokens: after.cache.hitTokens - before.cache.hitTokens,
    prefix_cache_queried_tokens: after.cache.queriedTokens - before.cache.queriedTokens,
    profile_of_median_run: medianRun,
  });
  report("rollouts_memory", flags, {
    engine: "gym-edge",
    rss_before_load_mb: round(rssBeforeLoad / 2 ** 20, 0),
    rss_loaded_mb: round(rssLoaded / 2 ** 20, 0),
    peak_rss_mb: round(rss.peak / 2 ** 20, 0),
    kv_rows_peak_mb: round(bench.kvPeak.rows / 2 ** 20, 1),
    kv_prefix_cache_peak_mb: round(bench.kvPeak.prefix / 2 ** 20, 1),
    kv_cache_budget_mb: round(flags.kvCacheMemory / 2 ** 20, 0),
    kv_bytes_per_token: engine.runner.floatsPerToken * 4,
  });
  await bench.close();
  return rate;
}

async function benchBaselines(engineRate: number): Promise<void> {
  const baseline = await GenerateBaseline.open(dir);
  try {
    for (const topK of baselineTopKs) {
      const variant = baselineVariant(topK);
      // Warm-up, not measured.
      await baseline.generate([promptsOf(0)[0]], 4, { temperature: 1, topK });
      const sequential: number[] = [];
      const sequentialOthers: (number | null)[] = [];
      for (let run = 0; run < baselineRuns; run++) {
        let seconds = 0;
        let others = 0;
        for (const prompt of requestsOf(run).slice(0, sequentialRequests)) {
          const result = await baseline.generate([prompt], newTokens, { temperature: 1, topK });
          seconds += result.seconds;
          others += (result.cpu.other_cores ?? NaN) * result.seconds;
        }
        sequential.push(sequentialRequests * newTokens / seconds);
        sequentialOthers.push(Number.isNaN(others) ? null : round(others / seconds));
        console.error(`sequential run ${run}: ${round(sequential.at(-1)!, 1)} tok/s`);
      }
      report("rollouts_baseline_sequential", flags, {
        engine: "transformers.js generate(), one request at a time",
        ...load,
        ...variant,
        baseline_requests: sequentialRequests,
        note: "a subset of the load's requests: tok_s is a rate",
        ...baselineFigures(sequential, sequentialOthers, engineRate),
      });
      const batched: number[] = [];
      const batchedOthers: (number | null)[] = [];
      for (let run = 0; run < staticRuns; run++) {
        const requests = requestsOf(run).slice(0, staticBatch);
        const { seconds, cpu } = await baseline.generate(requests, newTokens, { temperature: 1, topK });
        batched.push(staticBatch * newTokens / seconds);
        batchedOthers.push(cpu.other_cores);
        console.error(`static batch run ${run}: ${round(batched.at(-1)!, 1)} tok/s`);
      }
      report("rollouts_baseline_static_batch", flags, {
        engine: "transformers.js generate(), one left-padded static batch",
        ...load,
        ...variant,
        baseline_requests: staticBatch,
        note: "one batch of the load's first requests: tok_s is a rate",
        ...baselineFigures(batched, batchedOthers, engineRate),
      });
    }
  } finally {
    await baseline.dispose();
  }
}

const engineRate = await benchEngine();
if (flags.baseline && flags.device === "cpu") await benchBaselines(engineRate);
