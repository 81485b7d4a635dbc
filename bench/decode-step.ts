/**
 * Time of one batched decode step, engine graph (cache as input only, through the engine's runner) against the
 * standard graph (past in, present out) fed the same way. Prints one JSON line per (graph, context): the median of
 * `steps` timed steps after `warmup` untimed ones. The cached KV is zeros: the step costs the same whatever it holds.
 * "engine" times the model run alone; "engine_sampled" adds drawing every row's token the way the engine does
 * (T=1 over the whole vocabulary, logprobs 1): the CPU sampler over logits read back, or on webgpu the GPU-resident
 * runner's stepAndSample (cache, logits and sampler on the GPU); on webgpu "engine_sampled_host_cache" is the same
 * step with the cache in host memory and logits read back for the CPU sampler.
 * With --dtype fp32,q8,q4 the engine lines come for each dtype, their steps interleaved (one step of each in turn, so
 * a busy machine slows them alike); "standard" is the fp32 graph's.
 * Run: node --import tsx bench/decode-step.ts [--preset bench-135m] [--device cpu|wasm|webgpu] [--batch 16]
 *      [--contexts 64,256,1024] [--steps 7] [--warmup 2] [--dtype fp32[,q8,q4]] [--cache-dir DIR]
 * The model is built (once) into the cache directory, outside the repository.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { z } from "zod";
import { ensureModel, ONNX_FILES } from "../src/model/builder/build.ts";
import { getPreset } from "../src/model/builder/presets.ts";
import { openEngineRunner } from "../src/model/runners/engine-runner.ts";
import type { OrtModule, OrtSession, OrtTensor } from "../src/model/ort/ort-types.ts";
import { backendFor } from "../src/model/ort/backends.ts";
import { runtimeName, runtimeVersion } from "../src/runtime/detect.ts";
import { SamplingParams } from "../src/engine/sampling-params.ts";
import { SequenceSampler } from "../src/engine/sampler.ts";
import type { ModelRunner } from "../src/engine/model-runner.ts";
import { EngineBenchFlags, EngineDtype } from "./lib/engine-flags.ts";
import { benchFlags, intFlag, numberListFlag } from "./lib/flags.ts";

const DecodeStepFlags = EngineBenchFlags.pick({ preset: true, device: true, cacheDir: true }).extend({
  batch: intFlag(16).describe("rows in the step"),
  contexts: numberListFlag("64,256,1024").describe("tokens in each row after the step, one line each"),
  steps: intFlag(7).describe("timed steps (the figure is their median)"),
  warmup: intFlag(2).describe("untimed steps first"),
  dtype: z.string().default("fp32").describe("engine dtypes to time side by side, comma-separated (fp32,q8,q4)"),
});

const { preset: presetName, device, batch, contexts, steps, warmup, cacheDir, dtype: dtypeList } = benchFlags(
  DecodeStepFlags,
  "Time of one batched decode step, engine graph against standard graph.\n" +
    "Run: node --import tsx bench/decode-step.ts [flags]",
);

const preset = getPreset(presetName);
const { arch } = preset;
const dir = path.join(cacheDir, presetName);
const dtypes = dtypeList.split(",").map((d) => EngineDtype.parse(d));
const built = performance.now();
await ensureModel({ preset: presetName, out: dir, seed: 0, dtype: dtypes });
const buildSeconds = (performance.now() - built) / 1000;
const backend = await backendFor(device);
const runtime: OrtModule = backend.ort;
type TensorClass = new (type: string, data: unknown, dims: readonly number[]) => OrtTensor;
const Tensor = runtime.Tensor as unknown as TensorClass;

const median = (times: number[]) => [...times].sort((a, b) => a - b)[Math.floor(times.length / 2)];

/** Runs `step` warmup + steps times; returns the median and fastest of the timed runs, in ms. */
async function timeSteps(step: () => Promise<unknown>) {
  return (await timeInterleaved([step]))[0];
}

/** Runs each of `stepsOf` in turn, warmup + steps rounds; per step function, the median and fastest, in ms. */
async function timeInterleaved(stepsOf: (() => Promise<unknown>)[]) {
  const times: number[][] = stepsOf.map(() => []);
  for (let i = 0; i < warmup + steps; i++) {
    for (const [k, step] of stepsOf.entries()) {
      const t0 = performance.now();
      await step();
      if (i >= warmup) times[k].push(performance.now() - t0);
    }
  }
  return times.map((t) => ({ ms_median: Number(median(t).toFixed(2)), ms_min: Number(Math.min(...t).toFixed(2)) }));
}

function report(graph: string, context: number, extra: Record<string, unknown>) {
  console.log(JSON.stringify({
    what: "decode_step",
    graph,
    runtime: runtimeName(),
    version: runtimeVersion(),
    backend: device,
    model: presetName,
    batch,
    context,
    steps,
    warmup,
    ...extra,
  }));
}

async function benchEngine(hostCache: boolean) {
  const runners: (ModelRunner & { capacity: number })[] = [];
  try {
    for (const dtype of dtypes) {
      runners.push(await openEngineRunner({ dir, dtype, backend, maxRows: batch, maxLength: Math.max(...contexts), hostCache }));
    }
    const params = SamplingParams.parse({ temperature: 1, seed: 0, logprobs: 1 });
    const samplers = Array.from({ length: batch }, (_, row) => new SequenceSampler(params, [1000 + row], { index: row }));
    const label = hostCache && runners[0].stepAndSample === undefined && device === "webgpu" ? "_host_cache" : "";
    for (const context of contexts) {
      // `context` tokens after the step: context - 1 cached, one new, all rows at once.
      for (const runner of runners) runner.reserve(context);
      const rows = Array.from({ length: batch }, (_, row) => ({ row, tokens: [1000 + row], start: context - 1 }));
      const lines = (graph: string, timings: Awaited<ReturnType<typeof timeInterleaved>>) =>
        timings.forEach((t, k) => report(graph, context, { dtype: dtypes[k], cache_slots: runners[k].capacity, ...t }));
      if (!label) lines("engine", await timeInterleaved(runners.map((runner) => () => runner.step(rows))));
      const sampled = (runner: ModelRunner) =>
        runner.stepAndSample
          ? () => runner.stepAndSample!(rows, samplers.map((s) => s.next([], arch.vocabSize)))
          : async () => (await runner.step(rows)).map((logits, row) => samplers[row].sample(logits, []));
      lines(`engine_sampled${label}`, await timeInterleaved(runners.map(sampled)));
    }
  } finally {
    for (const runner of runners) await runner.dispose();
  }
}

async function openStandard(): Promise<OrtSession> {
  const file = path.join(dir, ONNX_FILES.fp32);
  const data = `${file}_data`;
  const externalData = fs.existsSync(data) ? [{ name: path.basename(data), path: data }] : [];
  return await backend.openFile({ model: file, externalData });
}

async function benchStandard() {
  const session = await openStandard();
  try {
    for (const context of contexts) {
      const past = context - 1;
      const i64 = (values: number[], width: number) =>
        new Tensor("int64", BigInt64Array.from(values, BigInt), [batch, width]);
      const feeds: Record<string, OrtTensor> = {
        input_ids: i64(Array.from({ length: batch }, (_, row) => 1000 + row), 1),
        attention_mask: i64(new Array(batch * context).fill(1), context),
        position_ids: i64(new Array(batch).fill(past), 1),
      };
      const cache = new Float32Array(batch * arch.numKvHeads * past * arch.headDim);
      for (let i = 0; i < arch.numLayers; i++) {
        for (const kind of ["key", "value"]) {
          feeds[`past_key_values.${i}.${kind}`] = new Tensor("float32", cache, [
            batch,
            arch.numKvHeads,
            past,
            arch.headDim,
          ]);
        }
      }
      const timing = await timeSteps(() => session.run(feeds));
      report("standard", context, timing);
    }
  } finally {
    await session.release();
  }
}

console.error(`model ${dir} ready in ${buildSeconds.toFixed(1)} s`);
await benchEngine(false);
if (device === "webgpu") await benchEngine(true);
if (dtypes.includes("fp32")) await benchStandard();
