/**
 * How far a quantized model's next-token distributions are from the fp32 model of the same build: the mean
 * KL(p_fp32 || p_dtype) over the same token chunks, as llama.cpp's `llama-perplexity --kl-divergence` measures a
 * quantized GGUF against its base (so the figures compare with llama.cpp's q8_0 / q4_0 of the same weights).
 * The text is tokenized (no special tokens), cut into --ctx-token chunks (the tail shorter than one is dropped), each
 * chunk is fed from position 0 through the engine's own graph and runner with every position's logits kept, and the
 * positions of its second half are scored (ctx/2 .. ctx-2: each predicts the next token of the chunk), as
 * llama-perplexity does. One JSON line per dtype: mean and 99th-percentile KL in nats, and how often the two models'
 * most likely tokens agree.
 * Run: node --import tsx bench/quality.ts [--preset bench-135m] [--dtype q8,q4] [--text FILE] [--ctx 256]
 *      [--chunks N] [--device cpu] [--cache-dir DIR]
 * The model is built (once, every dtype) into the cache directory; the default text is the repository's README.md.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { AutoTokenizer, env } from "@huggingface/transformers";
import { z } from "zod";
import { ensureModel } from "../src/model/builder/build.ts";
import { backendFor } from "../src/model/ort/backends.ts";
import { openEngineRunner } from "../src/model/runners/engine-runner.ts";
import { EngineBenchFlags, EngineDtype } from "./lib/engine-flags.ts";
import { benchFlags, intFlag } from "./lib/flags.ts";
import { report, round } from "./lib/report.ts";

const QualityFlags = EngineBenchFlags.pick({ preset: true, device: true, cacheDir: true }).extend({
  dtype: z.string().default("q8,q4").describe("dtypes to compare with fp32, comma-separated"),
  text: z.string().default(new URL("../README.md", import.meta.url).pathname).describe("the text to score"),
  ctx: intFlag(256).describe("tokens a chunk (llama-perplexity's -c)"),
  chunks: intFlag(0).describe("chunks scored, from the start (0: every whole chunk; llama-perplexity's --chunks)"),
});
const flags = benchFlags(
  QualityFlags,
  "KL divergence of a q8 / q4 model's next-token distributions from the fp32 model's.\n" +
    "Run: node --import tsx bench/quality.ts [flags]",
);
const dtypes = flags.dtype.split(",").map((d) => EngineDtype.parse(d)).filter((d) => d !== "fp32");
if (flags.ctx < 4 || flags.ctx % 2 !== 0) {
  throw new Error(`--ctx must be an even number of 4 or more, not ${flags.ctx}`);
}

const dir = path.join(flags.cacheDir, flags.preset);
await ensureModel({ preset: flags.preset, out: dir, seed: 0, dtype: ["fp32", ...dtypes] });
env.allowRemoteModels = false;
const tokenizer = await AutoTokenizer.from_pretrained(dir, { local_files_only: true });
const ids: number[] = tokenizer.encode(fs.readFileSync(flags.text, "utf8"), { add_special_tokens: false });
const whole = Math.floor(ids.length / flags.ctx);
const chunks = flags.chunks > 0 ? Math.min(flags.chunks, whole) : whole;
if (chunks === 0) throw new Error(`${flags.text} has ${ids.length} tokens, fewer than one chunk of ${flags.ctx}`);
console.error(`${flags.text}: ${ids.length} tokens, ${chunks} chunks of ${flags.ctx}`);

const backend = await backendFor(flags.device);
const open = (dtype: "fp32" | "q8" | "q4") =>
  openEngineRunner({ dir, dtype, backend, maxRows: 1, maxLength: flags.ctx });
const first = flags.ctx / 2;
const scored = flags.ctx - 1 - first; // positions a chunk: first .. ctx-2

/** Log-softmax of one logits row, in float64. */
function logSoftmax(logits: Float32Array, out: Float64Array): Float64Array {
  let max = -Infinity;
  for (let i = 0; i < logits.length; i++) max = Math.max(max, logits[i]);
  let sum = 0;
  for (let i = 0; i < logits.length; i++) sum += Math.exp(logits[i] - max);
  const logZ = max + Math.log(sum);
  for (let i = 0; i < logits.length; i++) out[i] = logits[i] - logZ;
  return out;
}

function argmax(values: Float64Array): number {
  let best = 0;
  for (let i = 1; i < values.length; i++) if (values[i] > values[best]) best = i;
  return best;
}

/** The logits of every position of chunk `c`'s scored half, [scored * vocab]. */
async function chunkLogits(runner: Awaited<ReturnType<typeof open>>, c: number): Promise<Float32Array> {
  runner.reserve(flags.ctx);
  const tokens = ids.slice(c * flags.ctx, (c + 1) * flags.ctx);
  const [all] = await runner.step([{ row: 0, tokens, start: 0, allLogits: true }]);
  return all.slice(first * runner.vocabSize, (first + scored) * runner.vocabSize);
}

// Every runner is open at once and each chunk goes through all of them in turn: no chunk's logits are kept past it.
const base = await open("fp32");
const runners = await Promise.all(dtypes.map(open));
const vocab = base.vocabSize;
const stats = dtypes.map(() => ({ kls: [] as number[], agree: 0 }));
const p = new Float64Array(vocab);
const q = new Float64Array(vocab);
const t0 = performance.now();
try {
  for (let c = 0; c < chunks; c++) {
    const baseLogits = await chunkLogits(base, c);
    for (const [k, runner] of runners.entries()) {
      const logits = await chunkLogits(runner, c);
      for (let pos = 0; pos < scored; pos++) {
        logSoftmax(baseLogits.subarray(pos * vocab, (pos + 1) * vocab), p);
        logSoftmax(logits.subarray(pos * vocab, (pos + 1) * vocab), q);
        let kl = 0;
        for (let i = 0; i < vocab; i++) kl += Math.exp(p[i]) * (p[i] - q[i]);
        stats[k].kls.push(Math.max(0, kl)); // rounding can leave a hair below zero
        if (argmax(p) === argmax(q)) stats[k].agree++;
      }
    }
  }
} finally {
  for (const runner of [base, ...runners]) await runner.dispose();
}

for (const [k, dtype] of dtypes.entries()) {
  const { kls, agree } = stats[k];
  const sorted = [...kls].sort((a, b) => a - b);
  report("quality", { device: flags.device, preset: flags.preset }, {
    dtype,
    reference: "fp32",
    text: path.basename(flags.text),
    text_tokens: ids.length,
    ctx: flags.ctx,
    chunks,
    positions: kls.length,
    mean_kl: Number((kls.reduce((a, b) => a + b, 0) / kls.length).toPrecision(4)),
    p99_kl: Number(sorted[Math.min(sorted.length - 1, Math.floor(0.99 * sorted.length))].toPrecision(4)),
    max_kl: Number(sorted[sorted.length - 1].toPrecision(4)),
    top1_agreement: round(agree / kls.length, 4),
    seconds: round((performance.now() - t0) / 1000, 1),
  });
}
