/**
 * Per-step cost of sampling a batch of rows of 151,936 logits (Qwen's vocabulary): the WebGPU sampler with the
 * logits already on the GPU (what a runner that keeps them there pays), the same with the logits uploaded first,
 * and the CPU twin over the same rows one after another. One JSON line per (mode, batch, path): median and 90th
 * percentile of `runs` timed steps after `warmup` untimed ones. Needs navigator.gpu (Deno):
 *   deno run -A bench/gpu-sampler.ts [runs] [batches, e.g. 1,16,64] [warmup]  (or --runs, --batches, --warmup)
 * On a software adapter (Mesa lavapipe) the GPU timings are those of a CPU emulating a GPU: they say nothing about
 * a real GPU, and every line says so.
 */
import process from "node:process";
import { type GpuSampleRow, GpuSampler } from "../kernels/gpu-sampler.ts";
import { logitEdits } from "../kernels/row-sampling.ts";
import { openGpuDevice } from "../kernels/webgpu.ts";
import { Rng } from "../src/engine/rng.ts";
import { modelLikeRow, percentile, VOCAB } from "./logit-rows.ts";
import { Sampler } from "../src/engine/sampler.ts";
import { SamplingParams, type SamplingParamsInput } from "../src/engine/sampling-params.ts";
import { z } from "zod";
import { benchFlags, intFlag, numberListFlag } from "./lib/flags.ts";
import { runtimeName, runtimeVersion } from "../src/runtime/detect.ts";

const GpuSamplerFlags = z.object({
  runs: intFlag(10).describe("timed steps a line"),
  batches: numberListFlag("1,8").describe("rows a step, one set of lines each"),
  warmup: intFlag(3).describe("untimed steps first"),
});

const { runs, batches, warmup } = benchFlags(
  GpuSamplerFlags,
  "Per-step cost of sampling a batch of rows of 151,936 logits: the WebGPU sampler against the CPU twin.\n" +
    "Run: deno run -A bench/gpu-sampler.ts [flags]",
  { positional: ["runs", "batches", "warmup"] },
);

const cases: [string, SamplingParamsInput][] = [
  ["greedy", { temperature: 0, logprobs: 0 }],
  ["temperature 1 full", { temperature: 1, logprobs: 0 }],
  ["top_k 50", { temperature: 1, top_k: 50, logprobs: 0 }],
  ["top_p 0.9", { temperature: 1, top_p: 0.9, logprobs: 0 }],
  ["top_k 50 top_p 0.9 min_p 0.05 + 5 top logprobs", { temperature: 0.7, top_k: 50, top_p: 0.9, min_p: 0.05, logprobs: 5 }],
  ["temperature 1 + presence penalty over 256 outputs, raw logprobs", {
    temperature: 1,
    presence_penalty: 0.5,
    logprobs: 0,
    logprobs_mode: "raw",
  }],
];

// A step that returns a number has timed itself (leaving out its setup).
async function timed(step: () => unknown): Promise<{ median_ms: number; p90_ms: number }> {
  const times: number[] = [];
  for (let j = 0; j < warmup + runs; j++) {
    const t0 = performance.now();
    const own = await step();
    if (j >= warmup) times.push(typeof own === "number" ? own : performance.now() - t0);
  }
  times.sort((a, b) => a - b);
  return { median_ms: Number(percentile(times, 0.5).toFixed(3)), p90_ms: Number(percentile(times, 0.9).toFixed(3)) };
}

// Deno's WebGPU opens OpenGL (EGL) next to Vulkan; on Linux with Mesa that stack's teardown sometimes corrupts the
// heap as the process exits. Vulkan alone does not.
if (process.platform === "linux") process.env.DENO_WEBGPU_BACKEND ??= "vulkan";
const gpu = await openGpuDevice();
const common = { runtime: runtimeName(), version: runtimeVersion(), vocab: VOCAB, runs };
if (!("device" in gpu)) {
  console.log(JSON.stringify({ ...common, what: "gpu sampler", skipped: `no WebGPU adapter: ${gpu.reason}` }));
} else {
  const { device } = gpu;
  const info = device.adapterInfo as GPUAdapterInfo & { isFallbackAdapter?: boolean };
  const adapter = [info.vendor, info.architecture, info.description].filter(Boolean).join(" ");
  const software = info.isFallbackAdapter === true || /llvmpipe|lavapipe|swiftshader/i.test(adapter);
  const note = software
    ? "software adapter: GPU timings are a CPU emulating a GPU and mean nothing for a real GPU"
    : undefined;
  const sampler = await GpuSampler.create(device, { vocabSize: VOCAB, maxRows: Math.max(...batches) });
  const cpu = new Sampler();
  const outputIds = Array.from({ length: 256 }, (_, j) => (j * 7919) % VOCAB);
  for (const batch of batches) {
    const rows = Array.from({ length: batch }, (_, r) => modelLikeRow(r + 1));
    const packed = new Float32Array(batch * VOCAB);
    rows.forEach((row, r) => packed.set(row, r * VOCAB));
    const onGpu = device.createBuffer({ size: packed.byteLength, usage: 0x80 | 0x08 /* STORAGE | COPY_DST */ });
    for (const [what, input] of cases) {
      const params = SamplingParams.parse(input);
      const rng = Rng.fromSeed(7);
      const requests = (): GpuSampleRow[] =>
        rows.map(() => ({
          temperature: params.temperature,
          topK: params.top_k,
          topP: params.top_p,
          minP: params.min_p,
          uniform: rng.nextUniform(),
          topLogprobs: params.logprobs,
          logprobsMode: params.logprobs_mode,
          edits: logitEdits({ outputIds, presencePenalty: params.presence_penalty }, VOCAB),
        }));
      const line = { ...common, what: `sample ${what}`, batch, adapter, ...(note ? { note } : {}) };
      // The edits change the logits in place: each step starts again from the model's rows (untimed).
      const resident = await timed(async () => {
        device.queue.writeBuffer(onGpu, 0, packed);
        await device.queue.onSubmittedWorkDone();
        const reqs = requests();
        const t0 = performance.now();
        await sampler.sample(onGpu, reqs);
        return performance.now() - t0;
      });
      console.log(JSON.stringify({ ...line, path: "gpu, logits resident", ...resident }));
      console.log(JSON.stringify({ ...line, path: "gpu, logits uploaded", ...(await timed(() => sampler.sampleArrays(packed, requests()))) }));
      const state = { params, outputIds, promptIds: [] as number[], rng };
      console.log(JSON.stringify({ ...line, path: "cpu twin", ...(await timed(() => rows.forEach((row) => cpu.sample(row, state)))) }));
    }
    onGpu.destroy();
  }
  sampler.destroy();
  device.destroy();
}
