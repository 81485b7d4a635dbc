import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { availableDevices } from "../../src/model/ort/backends.ts";
import { buildModel } from "../../src/model/builder/build.ts";
import { DeviceUnavailableError } from "../../src/model/errors.ts";
import { onnxFilesIn } from "../../src/model/sources/model-files.ts";
import { type LoadedModel, loadModel, type LoadModelOptions } from "../../src/model/loader.ts";
import type { OrtTensor } from "../../src/model/ort/ort-types.ts";
import { RunQueue } from "../../src/model/ort/run-queue.ts";
import { type Logger, silentLogger } from "../../src/log.ts";
import { gpuDevicePresent } from "../../src/runtime/webgpu.ts";
import { leftPad } from "./reference.ts";

const root = fs.mkdtempSync(path.join(os.tmpdir(), "gym-edge-backends-"));
const tiny = path.join(root, "tiny");
await buildModel({ preset: "tiny", out: tiny, seed: 0 });
const PAD = 151643;
// Model loads take seconds on a small machine; Bun's default limit is 5 s a test.
const SLOW = { timeout: 120_000 };

const load = (device: LoadModelOptions["device"], log: Logger = silentLogger) =>
  loadModel({ model: tiny, device, cacheDir: path.join(root, "cache"), log });

// Whether this machine has a WebGPU adapter is only known by trying; the WebGPU test is skipped only without one.
let webgpu: LoadedModel | undefined;
let noWebGpu: DeviceUnavailableError | undefined;
try {
  webgpu = await load("webgpu");
} catch (err) {
  if (!(err instanceof DeviceUnavailableError)) throw err;
  noWebGpu = err;
}

/** Logits and KV cache of a left-padded prefill of two rows, then one decode step with that cache as past. */
async function prefillAndStep(model: LoadedModel) {
  const { numHiddenLayers, numKeyValueHeads, headDim } = model.config;
  const prompt = leftPad([[100, 200, 300, 400, 500], [151644, 872]], PAD);
  const i64 = (m: number[][]) => model.tensor("int64", BigInt64Array.from(m.flat(), BigInt), [2, m[0].length]);
  const past: Record<string, OrtTensor> = {};
  for (let i = 0; i < numHiddenLayers; i++) {
    for (const kv of ["key", "value"]) {
      past[`past_key_values.${i}.${kv}`] = model.tensor("float32", new Float32Array(0), [
        2,
        numKeyValueHeads,
        0,
        headDim,
      ]);
    }
  }
  const prefill = await model.forward({
    input_ids: i64(prompt.inputIds),
    attention_mask: i64(prompt.attentionMask),
    position_ids: i64(prompt.positionIds),
    ...past,
  });
  const cache: Record<string, OrtTensor> = {};
  for (let i = 0; i < numHiddenLayers; i++) {
    for (const kv of ["key", "value"]) cache[`past_key_values.${i}.${kv}`] = prefill[`present.${i}.${kv}`];
  }
  const step = await model.forward({
    input_ids: i64([[8], [9]]),
    attention_mask: i64(prompt.attentionMask.map((m) => [...m, 1])),
    position_ids: i64([[5], [2]]),
    ...cache,
  });
  return { prefill, step };
}

function maxDiff(a: OrtTensor, b: OrtTensor): number {
  assert.deepEqual(a.dims, b.dims);
  const x = a.data as Float32Array, y = b.data as Float32Array;
  let m = 0;
  for (let i = 0; i < x.length; i++) m = Math.max(m, Math.abs(x[i] - y[i]));
  return m;
}

/** Asserts that `other` computes what `cpu` computes, within 1e-4. */
function assertSameOutputs(cpu: Awaited<ReturnType<typeof prefillAndStep>>, other: typeof cpu) {
  for (const phase of ["prefill", "step"] as const) {
    for (const name of ["logits", "present.0.key", "present.1.value"]) {
      const diff = maxDiff(cpu[phase][name], other[phase][name]);
      assert.ok(diff < 1e-4, `${phase} ${name} differs from cpu by ${diff}`);
    }
  }
}

describe("device backends", () => {
  let cpu: LoadedModel;
  let cpuOut: Awaited<ReturnType<typeof prefillAndStep>>;
  before(async () => {
    cpu = await load("cpu");
    cpuOut = await prefillAndStep(cpu);
  }, SLOW);
  after(async () => {
    await cpu?.dispose();
    await webgpu?.dispose();
    fs.rmSync(root, { recursive: true, force: true });
  });

  test("cpu runs on onnxruntime-node", () => {
    assert.equal(cpu.device, "cpu");
    assert.equal(cpu.backend.label, "onnxruntime-node (cpu)");
    assert.equal(cpu.backend.runtime, "onnxruntime-node");
  });

  test("openFile opens a graph file on the backend's device", async () => {
    const session = await cpu.backend.openFile(onnxFilesIn(tiny, "fp32"));
    assert.deepEqual(session.inputNames, cpu.inputNames);
    await session.release();
  });

  test("wasm (onnxruntime-web, no native addon) gives the same logits and cache as cpu", SLOW, async () => {
    const wasm = await load("wasm");
    try {
      assert.equal(wasm.device, "wasm");
      assert.equal(wasm.backend.label, "onnxruntime-web (wasm)");
      assertSameOutputs(cpuOut, await prefillAndStep(wasm));
      // Any graph file opens on the same backend (bytes and external data handed over by the backend).
      const again = await wasm.backend.openFile(onnxFilesIn(tiny, "fp32"));
      assert.deepEqual(again.outputNames, wasm.outputNames);
      await again.release();
    } finally {
      await wasm.dispose();
    }
  });

  test(
    "webgpu gives the same logits and cache as cpu, with overlapping calls queued",
    { ...SLOW, skip: noWebGpu && `no WebGPU adapter here: ${noWebGpu.reason}` },
    async () => {
      const gpu = webgpu!;
      assert.equal(gpu.device, "webgpu");
      // Two calls at once: unqueued, overlapping runs on one WebGPU session hang.
      const [first, second] = await Promise.all([prefillAndStep(gpu), prefillAndStep(gpu)]);
      assertSameOutputs(cpuOut, first);
      assertSameOutputs(cpuOut, second);
    },
  );

  test(
    "asking for webgpu without an adapter is an error that names the devices that work",
    { skip: webgpu && "this machine has a WebGPU adapter" },
    () => {
      assert.ok(noWebGpu);
      assert.equal(noWebGpu.device, "webgpu");
      assert.deepEqual(noWebGpu.available, ["cpu", "wasm"]);
      assert.match(noWebGpu.message, /device "webgpu" is not available: .*adapter.*Available here: cpu, wasm\./);
    },
  );

  test(
    "asking for webgpu where navigator.gpu has no adapter is an error that names the devices that work",
    SLOW,
    async () => {
      const original = Object.getOwnPropertyDescriptor(globalThis, "navigator");
      const noAdapter = { gpu: { requestAdapter: () => Promise.resolve(null) } };
      Object.defineProperty(globalThis, "navigator", { value: noAdapter, configurable: true, writable: true });
      try {
        await assert.rejects(load("webgpu"), (err: unknown) => {
          assert.ok(err instanceof DeviceUnavailableError);
          assert.deepEqual(err.available, ["cpu", "wasm"]);
          assert.match(
            err.message,
            /navigator\.gpu found no adapter .*mesa-vulkan-drivers.*Available here: cpu, wasm\./,
          );
          return true;
        });
      } finally {
        if (original) Object.defineProperty(globalThis, "navigator", original);
        else delete (globalThis as { navigator?: unknown }).navigator;
      }
    },
  );

  test("auto takes the best device that works and logs its choice", SLOW, async () => {
    const lines: string[] = [];
    const log: Logger = { ...silentLogger, info: (msg) => lines.push(msg) };
    const auto = await load("auto", log);
    try {
      assert.equal(lines.length, 1);
      // A hardware WebGPU adapter wins; a software one (lavapipe), no GPU device, or none leaves the CPU.
      const expected = webgpu && !/only a software adapter|no GPU device/.test(lines[0]) ? "webgpu" : "cpu";
      if (gpuDevicePresent() === false) assert.match(lines[0], /webgpu skipped: this machine has no GPU device/);
      assert.equal(auto.device, expected);
      assert.match(lines[0], new RegExp(`^device auto: using ${auto.device} via onnxruntime-`));
    } finally {
      await auto.dispose();
    }
  });

  test("a GPU device node is a DRM render node, an NVIDIA device or WSL's dxg; only Linux tells", () => {
    const dev = fs.mkdtempSync(path.join(os.tmpdir(), "gym-edge-dev-"));
    try {
      assert.equal(gpuDevicePresent(dev, "linux"), false);
      fs.mkdirSync(path.join(dev, "dri"));
      fs.writeFileSync(path.join(dev, "dri", "card0"), "");
      fs.writeFileSync(path.join(dev, "nvidiactl"), "");
      assert.equal(gpuDevicePresent(dev, "linux"), false, "a card node or nvidiactl alone is no GPU to render on");
      fs.writeFileSync(path.join(dev, "dri", "renderD128"), "");
      assert.equal(gpuDevicePresent(dev, "linux"), true);
      fs.rmSync(path.join(dev, "dri"), { recursive: true });
      fs.writeFileSync(path.join(dev, "nvidia0"), "");
      assert.equal(gpuDevicePresent(dev, "linux"), true);
      assert.equal(gpuDevicePresent(dev, "darwin"), null);
    } finally {
      fs.rmSync(dev, { recursive: true, force: true });
    }
  });

  test("availableDevices lists cpu and wasm everywhere", async () => {
    const devices = await availableDevices();
    assert.deepEqual(devices.slice(0, 2), ["cpu", "wasm"]);
  });
});

describe("RunQueue", () => {
  test("runs jobs one at a time in the order queued, and a failed job does not stop the next", async () => {
    const queue = new RunQueue();
    const events: string[] = [];
    const job = (name: string, ms: number, fail = false) => () =>
      new Promise<string>((resolve, reject) => {
        events.push(`start ${name}`);
        setTimeout(() => {
          events.push(`end ${name}`);
          fail ? reject(new Error(name)) : resolve(name);
        }, ms);
      });
    const results = await Promise.allSettled([
      queue.run(job("a", 20)),
      queue.run(job("b", 1, true)),
      queue.run(job("c", 1)),
    ]);
    assert.deepEqual(events, ["start a", "end a", "start b", "end b", "start c", "end c"]);
    assert.deepEqual(results.map((r) => r.status), ["fulfilled", "rejected", "fulfilled"]);
  });
});
