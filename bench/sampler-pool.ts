/**
 * Cost of sampling one decode step's rows (151,936 logits each, temperature 1 over the whole vocabulary, 1 top
 * log-probability) on the calling thread alone against the SamplerPool with helper threads. Prints one JSON line
 * per thread count: the median and 90th percentile of `runs` timed batches after `warmup` untimed ones.
 * Run: node --import tsx bench/sampler-pool.ts [--rows 32] [--runs 40] [--warmup 10] [--threads 1]
 */
import { SamplerPool } from "../src/engine/sampler-pool.ts";
import { SequenceSampler } from "../src/engine/sampler.ts";
import { SamplingParams } from "../src/engine/sampling-params.ts";
import { runtimeName, runtimeVersion } from "../src/runtime/detect.ts";
import { z } from "zod";
import { benchFlags, intFlag } from "./lib/flags.ts";
import { modelLikeRow, percentile, VOCAB } from "./logit-rows.ts";

const SamplerPoolFlags = z.object({
  rows: intFlag(32).describe("rows a decode step samples"),
  runs: intFlag(40).describe("timed batches"),
  warmup: intFlag(10).describe("untimed batches first"),
  threads: intFlag(1).describe("helper threads of the pool measured against none"),
});

const { rows: rowCount, runs, warmup, threads } = benchFlags(
  SamplerPoolFlags,
  "Cost of sampling one decode step's rows on the calling thread alone against the SamplerPool with helper threads.\n" +
    "Run: node --import tsx bench/sampler-pool.ts [flags]",
);

const rows = Array.from({ length: rowCount }, (_, i) => modelLikeRow(i + 1));
const params = SamplingParams.parse({ temperature: 1, logprobs: 1 });
for (const helpers of [0, threads]) {
  const pool = new SamplerPool(helpers);
  const sequences = rows.map((_, i) => new SequenceSampler({ ...params, seed: i }, [1]));
  const times: number[] = [];
  for (let j = 0; j < warmup + runs; j++) {
    const settings = sequences.map((s) => s.next([], VOCAB));
    const t0 = performance.now();
    await pool.sample(rows, settings);
    if (j >= warmup) times.push(performance.now() - t0);
  }
  await pool.close();
  times.sort((a, b) => a - b);
  console.log(JSON.stringify({
    what: "sample step rows",
    runtime: runtimeName(),
    version: runtimeVersion(),
    backend: "cpu",
    rows: rowCount,
    helper_threads: helpers,
    ms_median: Number(percentile(times, 0.5).toFixed(2)),
    ms_p90: Number(percentile(times, 0.9).toFixed(2)),
    runs,
  }));
}
