/**
 * Cost of sampling one token on the CPU from a row of 151,936 logits (Qwen's vocabulary), per sampling mode.
 * Prints one JSON line per case: the median and 90th percentile of `runs` timed calls, after `warmup` untimed ones
 * (V8 and JSC need a few hundred calls to settle). Run: node --import tsx bench/sampler.ts [runs] [warmup]
 * (or --runs, --warmup)
 */
import { runtimeName, runtimeVersion } from "../src/runtime/detect.ts";
import { Rng } from "../src/engine/rng.ts";
import { flatRow, modelLikeRow, percentile, VOCAB } from "./logit-rows.ts";
import { Sampler } from "../src/engine/sampler.ts";
import { SamplingScratch } from "../kernels/sampling.ts";
import { SamplingParams, type SamplingParamsInput } from "../src/engine/sampling-params.ts";
import { z } from "zod";
import { benchFlags, intFlag } from "./lib/flags.ts";

const SamplerFlags = z.object({
  runs: intFlag(200).describe("timed calls a case"),
  warmup: intFlag(300).describe("untimed calls first"),
});

const { runs, warmup } = benchFlags(
  SamplerFlags,
  "Cost of sampling one token on the CPU from a row of 151,936 logits, per sampling mode.\n" +
    "Run: node --import tsx bench/sampler.ts [flags]",
  { positional: ["runs", "warmup"] },
);

const cases: [string, SamplingParamsInput][] = [
  ["greedy", { temperature: 0, logprobs: 0 }],
  ["top_k 50", { temperature: 1, top_k: 50, logprobs: 0 }],
  ["top_p 0.9", { temperature: 1, top_p: 0.9, logprobs: 0 }],
  ["temperature 1 full", { temperature: 1, logprobs: 0 }],
  ["temperature 1 full + 1 top logprob (the RL load)", { temperature: 1, logprobs: 1 }],
  ["min_p 0.05", { temperature: 1, min_p: 0.05, logprobs: 0 }],
  ["top_k 50 top_p 0.9 + 5 top logprobs", { temperature: 0.7, top_k: 50, top_p: 0.9, logprobs: 5 }],
  ["temperature 1 full, raw logprobs", { temperature: 1, logprobs: 0, logprobs_mode: "raw" }],
];

const rows = { "model-like": [modelLikeRow(1), modelLikeRow(2)], flat: [flatRow(3), flatRow(4)] };
const sampler = new Sampler();
const simd = new SamplingScratch(1).kernels !== null;
for (const [shape, [rowA, rowB]] of Object.entries(rows)) {
  for (const [what, input] of cases) {
    const state = { params: SamplingParams.parse(input), outputIds: [] as number[], promptIds: [] as number[], rng: Rng.fromSeed(7) };
    const times: number[] = [];
    for (let j = 0; j < warmup + runs; j++) {
      // Alternate rows so that nothing is cached between calls.
      const row = j % 2 === 0 ? rowA : rowB;
      const t0 = performance.now();
      sampler.sample(row, state);
      if (j >= warmup) times.push(performance.now() - t0);
    }
    times.sort((a, b) => a - b);
    console.log(JSON.stringify({
      what: `sampleToken ${what}`,
      logits: shape,
      runtime: runtimeName(),
      version: runtimeVersion(),
      backend: "cpu",
      // Whether the row passes ran as WebAssembly SIMD (kernels/sampling-simd.ts) or as JavaScript.
      passes: simd ? "wasm-simd" : "javascript",
      vocab: VOCAB,
      runs,
      median_ms: Number(percentile(times, 0.5).toFixed(3)),
      p90_ms: Number(percentile(times, 0.9).toFixed(3)),
    }));
  }
}
