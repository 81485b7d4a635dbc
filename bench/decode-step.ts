/**
 * Time of one batched decode step, engine graph (cache as input only, through the engine's runner) against the
 * standard graph (past in, present out) fed the same way. Prints one JSON line per (graph, context): the median of
 * `steps` timed steps after `warmup` untimed ones. The cached KV is zeros: the step costs the same whatever it holds.
 * "engine" times the model run alone; "engine_sampled" adds drawing every row's token the way the engine does
 * (T=1 over the whole vocabulary, logprobs 1): the CPU sampler over logits read back, or on webgpu the GPU-resident
 * runner's stepAndSample (cache, logits and sampler on the GPU); on webgpu "engine_sampled_host_cache" is the same
 * step with the cache in host memory and logits read back for the CPU sampler.
 * Run: node --import tsx bench/decode-step.ts [--preset bench-135m] [--device cpu|wasm|webgpu] [--batch 16]
 *      [--contexts 64,256,1024] [--steps 7] [--warmup 2] [--cache-dir DIR]
 * The model is built (once) into the cache directory, outside the repository.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { ensureModel, ONNX_FILES } from "../src/model/builder/build.ts";
import { getPreset } from "../src/model/builder/presets.ts";
import { openEngineRunner } from "../src/model/runners/engine-runner.ts";
import type { OrtModule, OrtSession, OrtTensor } from "../src/model/ort/ort-types.ts";
import { backendFor } from "../src/model/ort/backends.ts";
import { runtimeName, runtimeVersion } from "../src/runtime/detect.ts";
import { SamplingParams } from "../src/engine/sampling-params.ts";
import { SequenceSampler } from "../src/engine/sampler.ts";
import type { ModelRunner } from "../src/engine/model-runner.ts";
import { EngineBenchFlags } from "./lib/engine-flags.ts";
import { benchFlags, intFlag, numberListFlag } from "./lib/flags.ts";

const DecodeStepFlags = EngineBenchFlags.pick({ preset: true, device: true, cacheDir: true }).extend({
  batch: intFlag(16).describe("rows in the step"),
  contexts: numberListFlag("64,256,1024").describe("tokens in each row after the step, one line each"),
  steps: intFlag(7).describe("timed steps (the figure is their median)"),
  warmup: intFlag(2).describe("untimed steps first"),
});

const { preset: presetName, device, batch, contexts, steps, warmup, cacheDir } = benchFlags(
  DecodeStepFlags,
  "Time of one batched decode step, engine graph against standard graph.\n" +
    "Run: node --import tsx bench/decode-step.ts [flags]",
);

const preset = getPreset(presetName);
const { arch } = preset;
const dir = path.join(cacheDir, presetName);
const built = performance.now();
await ensureModel({ preset: presetName, out: dir, seed: 0 });
const buildSeconds = (performance.now() - built) / 1000;
const backend = await backendFor(device);
const runtime: OrtModule = backend.ort;
type TensorClass = new (type: string, data: unknown, dims: readonly number[]) => OrtTensor;
const Tensor = runtime.Tensor as unknown as TensorClass;

const median = (times: number[]) => [...times].sort((a, b) => a - b)[Math.floor(times.length / 2)];

/** Runs `step` warmup + steps times; returns the median and fastest of the timed runs, in ms. */
async function timeSteps(step: () => Promise<unknown>) {
  const times: number[] = [];
  for (let i = 0; i < warmup + steps; i++) {
    const t0 = performance.now();
    await step();
    if (i >= warmup) times.push(performance.now() - t0);
  }
  return { ms_median: Number(median(times).toFixed(2)), ms_min: Number(Math.min(...times).toFixed(2)) };
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
  const runner: ModelRunner & { capacity: number } = await openEngineRunner({
    dir,
    backend,
    maxRows: batch,
    maxLength: Math.max(...contexts),
    hostCache,
  });
  const params = SamplingParams.parse({ temperature: 1, seed: 0, logprobs: 1 });
  const samplers = Array.from({ length: batch }, (_, row) => new SequenceSampler(params, [1000 + row], { index: row }));
  const label = hostCache && runner.stepAndSample === undefined && device === "webgpu" ? "_host_cache" : "";
  try {
    for (const context of contexts) {
      // `context` tokens after the step: context - 1 cached, one new, all rows at once.
      runner.reserve(context);
      const rows = Array.from({ length: batch }, (_, row) => ({ row, tokens: [1000 + row], start: context - 1 }));
      if (!label) report("engine", context, { cache_slots: runner.capacity, ...await timeSteps(() => runner.step(rows)) });
      const sampled = runner.stepAndSample
        ? () => runner.stepAndSample!(rows, samplers.map((s) => s.next([], arch.vocabSize)))
        : async () => (await runner.step(rows)).map((logits, row) => samplers[row].sample(logits, []));
      report(`engine_sampled${label}`, context, { cache_slots: runner.capacity, ...await timeSteps(sampled) });
    }
  } finally {
    await runner.dispose();
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
await benchStandard();
