/**
 * The GPU-resident engine runner (onnxruntime-web's WebGPU, cache and logits kept on the GPU) against the
 * standard graph on the CPU, and its on-GPU sampling against the CPU sampler on the same logits; then the engine
 * over it against the engine over the host-cache runner on the same device. Runs where navigator.gpu has an
 * adapter (Deno; lavapipe in CI); Node and Bun have no navigator.gpu, so there the tests are skipped.
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import process from "node:process";
import { ChatTokenizer } from "../../src/chat/template.ts";
import { Engine, type SubmittedRequest } from "../../src/engine/engine.ts";
import { Grammars } from "../../src/engine/grammar/grammars.ts";
import { SamplingParams, type SamplingParamsInput } from "../../src/engine/sampling-params.ts";
import { SequenceSampler } from "../../src/engine/sampler.ts";
import { type Backend, backendFor } from "../../src/model/ort/backends.ts";
import { buildModel } from "../../src/model/builder/build.ts";
import { PRESETS } from "../../src/model/builder/presets.ts";
import { openEngineRunner } from "../../src/model/runners/engine-runner.ts";
import { GpuEngineRunner } from "../../src/model/runners/gpu-engine-runner.ts";
import { engineRowCapacity } from "../../src/model/runners/engine-kv.ts";
import { assertClose, prefill, tokens } from "../support/runner-checks.ts";
import { allLogits, canonicalKv, mixedChunks, refusesBadSteps, type RunnerUnderTest } from "../support/runner-contract.ts";
import { releaseStandardRuns, standardRun } from "../support/standard-graph.ts";

if (process.platform === "linux") process.env.DENO_WEBGPU_BACKEND ??= "vulkan";
const SLOW = { timeout: 180_000 };
const arch = PRESETS.tiny.arch;

/** onnxruntime-web's WebGPU backend, or why this runtime has none (the only reason these tests skip). */
async function webGpuBackend(): Promise<Backend | string> {
  if (!(globalThis as { navigator?: { gpu?: unknown } }).navigator?.gpu) return "this runtime has no navigator.gpu";
  try {
    const backend = await backendFor("webgpu");
    return backend.runtime === "onnxruntime-web" ? backend : "WebGPU here is onnxruntime-node's";
  } catch (err) {
    return `no WebGPU adapter: ${err instanceof Error ? err.message : String(err)}`;
  }
}

const found = await webGpuBackend();
const backend = typeof found === "string" ? null : found;
const skip = typeof found === "string" ? found : false;

describe("GPU-resident engine runner", { skip }, () => {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), "gym-edge-gpu-runner-"));
  const tiny = path.join(root, "tiny");
  const open = async (maxRows = 4, hostCache = false) =>
    await openEngineRunner({ dir: tiny, backend: backend!, maxRows, maxLength: 4096, hostCache });

  before(async () => {
    await buildModel({ preset: "tiny", out: tiny, seed: 0 });
  }, SLOW);
  after(async () => {
    await releaseStandardRuns();
    fs.rmSync(root, { recursive: true, force: true });
  });

  test("on onnxruntime-web's WebGPU the engine graph gets the GPU-resident runner", SLOW, async () => {
    const [onGpu, onHost] = [await open(), await open(4, true)];
    try {
      assert.ok(onGpu instanceof GpuEngineRunner);
      assert.ok(!(onHost instanceof GpuEngineRunner));
      assert.equal(typeof onGpu.stepAndSample, "function");
    } finally {
      await onGpu.dispose();
      await onHost.dispose();
    }
  });

  const underTest: RunnerUnderTest = { open: () => open(), reference: (ids) => standardRun(tiny, ids), arch };
  test("readKv gives the canonical layout, and writeKv or copyRow move a row's KV", SLOW, canonicalKv(underTest));
  test(
    "blocks in shared memory (the prefix cache's) are read and written with the same results",
    SLOW,
    canonicalKv(underTest, true),
  );
  test("chunks of different lengths in rows out of order, run together, match their solo runs", SLOW, mixedChunks(underTest));
  test("a row that asks for all logits gets every fed position's, beside a row that wants only its last", SLOW, allLogits(underTest));

  test("steps that name a row twice, a row outside the runner, or no tokens are refused", SLOW, async () => {
    const runner = await open();
    try {
      await refusesBadSteps(runner);
    } finally {
      await runner.dispose();
    }
  });

  test("growing the cache across a bucket boundary, then shrinking it, keeps every row's tokens", SLOW, async () => {
    const runner = await open() as GpuEngineRunner;
    try {
      const prompt = tokens(60, 9);
      const next = tokens(6, 10);
      const expected = await standardRun(tiny, [...prompt, ...next]);
      runner.reserve(prompt.length);
      assert.equal(runner.capacity, 64);
      await prefill(runner, 2, prompt, 16);
      runner.reserve(100);
      assert.equal(runner.capacity, engineRowCapacity(100, 4096));
      for (let i = 0; i < 3; i++) {
        const [logits] = await runner.step([{ row: 2, tokens: [next[i]], start: prompt.length + i }]);
        assertClose(logits, expected.at(prompt.length + i), `after growing, step ${i}`);
      }
      runner.copyRow(2, 0, prompt.length + 3);
      runner.releaseRow(2);
      for (let i = 3; i < 6; i++) {
        const [logits] = await runner.step([{ row: 0, tokens: [next[i]], start: prompt.length + i }]);
        assertClose(logits, expected.at(prompt.length + i), `in the copied row, step ${i}`);
      }
      // Rows of 66 tokens need 80 slots: a request for 2048 grows, and the next small reserve shrinks back.
      runner.reserve(2048);
      assert.equal(runner.capacity, 2048);
      runner.reserve(1);
      assert.equal(runner.capacity, engineRowCapacity(66, 4096));
      const [logits] = await runner.step([{ row: 0, tokens: [next[5]], start: prompt.length + 5 }]);
      assertClose(logits, expected.at(prompt.length + 5), "after growing and shrinking");
    } finally {
      await runner.dispose();
    }
  });

  test("sampling on the GPU gives the CPU sampler's tokens and log-probabilities on the same logits", SLOW, async () => {
    const [gpu, host] = [await open(6) as GpuEngineRunner, await open(6, true)];
    try {
      const settings: SamplingParamsInput[] = [
        { temperature: 0, logprobs: 5 },
        { temperature: 1, seed: 7, logprobs: 3 },
        { temperature: 0.8, top_k: 50, top_p: 0.9, seed: 8, logprobs: 20, return_sampling_mask: true },
        { temperature: 1.2, min_p: 0.2, seed: 9, logprobs: 2, logprobs_mode: "raw", return_sampling_mask: true },
        { temperature: 1, seed: 10, repetition_penalty: 1.3, frequency_penalty: 0.5, logit_bias: { "42": 30 }, logprobs: 1 },
      ];
      const prompts = settings.map((_, i) => tokens(5 + 3 * i, 30 + i));
      const samplers = () =>
        settings.map((s, i) => new SequenceSampler(SamplingParams.parse({ ...s, max_tokens: 8 }), prompts[i]));
      const [onGpu, onHost] = [samplers(), samplers()];
      const outputs: number[][] = settings.map(() => []);
      // Each row prefills (the last chunk samples), then decodes four tokens; both runners see the same tokens.
      let inputs = prompts.map((p, row) => ({ row, tokens: p, start: 0 }));
      for (let step = 0; step < 5; step++) {
        const logits = await host.step(inputs);
        const expected = logits.map((l, i) => onHost[i].sample(l, outputs[i]));
        const got = await gpu.stepAndSample(inputs, onGpu.map((s, i) => s.next(outputs[i], arch.vocabSize)));
        got.forEach((pick, i) => {
          const want = expected[i];
          assert.equal(pick!.tokenId, want.tokenId, `row ${i} step ${step}: token`);
          assert.ok(Math.abs(pick!.logprob - want.logprob) < 1e-5, `row ${i} step ${step}: ${pick!.logprob} vs ${want.logprob}`);
          assert.deepEqual(pick!.topLogprobs?.map((t) => t.tokenId), want.topLogprobs?.map((t) => t.tokenId));
          pick!.topLogprobs?.forEach((t, k) => assert.ok(Math.abs(t.logprob - want.topLogprobs![k].logprob) < 1e-5));
          // The sampling mask, for the rows that asked: the same set on the GPU as on the CPU.
          assert.deepEqual(pick!.kept && [...pick!.kept], want.kept && [...want.kept], `row ${i} step ${step}: kept set`);
          assert.equal(pick!.kept !== undefined, i === 2 || i === 3);
          outputs[i].push(want.tokenId);
        });
        inputs = inputs.map((r, i) => ({ row: r.row, tokens: [outputs[i].at(-1)!], start: r.start + r.tokens.length }));
      }
      // A row given no sampling only fills its cache.
      const filled = await gpu.stepAndSample(inputs.slice(0, 2), [null, onGpu[1].next(outputs[1], arch.vocabSize)]);
      assert.equal(filled[0], null);
      assert.equal(typeof filled[1]?.tokenId, "number");
    } finally {
      await gpu.dispose();
      await host.dispose();
    }
  });

  const engineOver = async (hostCache: boolean) => {
    const runner = await open(9, hostCache);
    return new Engine(runner, {
      maxModelLen: 4096,
      maxNumSeqs: 8,
      maxNumBatchedTokens: 48,
      eosTokenIds: [151645],
      kvCacheBytes: 64 * 1024 * 1024,
      rowCapacity: (n) => (runner as GpuEngineRunner).rowCapacity(n),
    });
  };
  const collect = async (req: SubmittedRequest) => {
    const events = [];
    for await (const e of req.events) events.push(e);
    return events;
  };

  test("the engine over it generates what the engine over the host-cache runner does, prefix cache included", SLOW, async () => {
    const shared = tokens(40, 50);
    const run = async (engine: Engine) => {
      const params = (seed: number) => SamplingParams.parse({ temperature: 1, seed, max_tokens: 12, ignore_eos: true, logprobs: 2 });
      // Four samples of one prompt and two other prompts together, then a prompt that reuses the cached prefix.
      const first = await Promise.all([
        ...[0, 1, 2, 3].map((i) => collect(engine.submit(shared, params(1), i))),
        collect(engine.submit(tokens(23, 51), params(2))),
        collect(engine.submit(tokens(70, 52), SamplingParams.parse({ temperature: 0, max_tokens: 12, ignore_eos: true }))),
      ]);
      const later = await collect(engine.submit([...shared, ...tokens(5, 53)], params(3)));
      return { results: [...first, later], hits: engine.stats().cache.hitTokens };
    };
    const [gpuEngine, hostEngine] = [await engineOver(false), await engineOver(true)];
    try {
      const [gpu, host] = [await run(gpuEngine), await run(hostEngine)];
      assert.ok(gpu.hits >= 32, `the later prompt reused the cached prefix on the GPU (${gpu.hits} tokens)`);
      assert.equal(gpu.hits, host.hits);
      gpu.results.forEach((events, r) => {
        assert.deepEqual(events.map((e) => e.tokenId), host.results[r].map((e) => e.tokenId), `request ${r}: tokens`);
        events.forEach((e, j) => {
          const want = host.results[r][j];
          assert.ok(Math.abs(e.logprob - want.logprob) < 1e-4, `request ${r} token ${j}: ${e.logprob} vs ${want.logprob}`);
        });
      });
    } finally {
      await gpuEngine.runner.dispose();
      await hostEngine.runner.dispose();
    }
  });

  test("under a grammar the engine over it samples what the engine over the host-cache runner does", SLOW, async () => {
    // The grammar's mask goes to the WGSL sampler on one side and to the CPU sampler on the other.
    const tokenizer = await ChatTokenizer.load(tiny);
    const grammars = new Grammars(() => ({
      tokens: tokenizer.tokenStrings(Array.from({ length: arch.vocabSize }, (_, i) => i)),
      vocabSize: arch.vocabSize,
      stopTokenIds: [151645, 151643],
    }));
    const schema = {
      type: "object",
      properties: { n: { type: "integer", minimum: 0, maximum: 99 }, pet: { enum: ["cat", "dog"] } },
      required: ["n", "pet"],
    };
    const compiled = await grammars.compile({ kind: "json_schema", schema: JSON.stringify(schema), anyWhitespace: false });
    const run = async (engine: Engine) =>
      await Promise.all([0, 1, 2].map((i) => {
        const params = SamplingParams.parse({ temperature: 1, seed: 7, max_tokens: 64, logprobs: 1 });
        return collect(engine.submit(tokens(20, 60), params, i, compiled.matcher()));
      }));
    const [gpuEngine, hostEngine] = [await engineOver(false), await engineOver(true)];
    try {
      const [gpu, host] = [await run(gpuEngine), await run(hostEngine)];
      gpu.forEach((events, r) => {
        assert.deepEqual(events.map((e) => e.tokenId), host[r].map((e) => e.tokenId), `sample ${r}: tokens`);
        events.forEach((e, j) => assert.ok(Math.abs(e.logprob - host[r][j].logprob) < 1e-4, `sample ${r} token ${j}`));
        // A random model writes JSON only under the grammar, and ends it only when the grammar is complete.
        assert.equal(events.at(-1)?.finishReason, "stop", `sample ${r}`);
        const text = tokenizer.decode(events.map((e) => e.tokenId), { skipSpecialTokens: true });
        const value = JSON.parse(text);
        assert.ok(Number.isInteger(value.n) && ["cat", "dog"].includes(value.pet), text);
      });
    } finally {
      await gpuEngine.runner.dispose();
      await hostEngine.runner.dispose();
    }
  });
});
