/**
 * Hugging Face checkpoints (safetensors): read as float32, converted into the engine layout, served, and taken as
 * new weights by a refit. A checkpoint of the built-in model's own weights must serve exactly like it.
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import process from "node:process";
import { SamplingParams } from "../../src/engine/sampling-params.ts";
import { unsupportedFeatures } from "../../src/model/builder/architectures/registry.ts";
import { Checkpoint, writeSafetensors } from "../../src/model/sources/safetensors.ts";
import { env as transformersEnv } from "@huggingface/transformers";
import { silentLogger } from "../../src/log.ts";
import { type LoadedModel, loadModel } from "../../src/model/loader.ts";
import { openWeights } from "../../src/model/weights.ts";
import { serve } from "../../src/runtime/serve.ts";
import type { ServedModel } from "../../src/server.ts";
import { writeCheckpoint } from "../support/checkpoint.ts";
import { generated, openServedTiny, testCacheDir } from "../support/served.ts";

const SLOW = { timeout: 180_000 };

/** Empty past_key_values feeds of a standard graph. */
function emptyPast(loaded: LoadedModel) {
  const feeds: Record<string, ReturnType<LoadedModel["tensor"]>> = {};
  for (const name of loaded.inputNames.filter((n) => n.startsWith("past_key_values."))) {
    const meta = loaded.inputMetadata.find((m) => m.name === name) as { shape?: unknown[] } | undefined;
    const [kvh, d] = [meta?.shape?.[1], meta?.shape?.[3]].map(Number);
    feeds[name] = loaded.tensor("float32", new Float32Array(0), [1, kvh, 0, d]);
  }
  return feeds;
}
const root = fs.mkdtempSync(path.join(os.tmpdir(), "gym-edge-checkpoint-"));


const greedy = SamplingParams.parse({ temperature: 0, max_tokens: 8, ignore_eos: true });
const prompt = [9707, 11, 1879, 0, 42, 151644, 872, 198, 3555, 374];

test("safetensors tensors read back as float32 from F32 and BF16, across shards", () => {
  const dir = path.join(root, "shards");
  fs.mkdirSync(dir, { recursive: true });
  const a = Float32Array.from([1.5, -2.25, 3.1415927, 1e-3, 65504, -0]);
  const b = Float32Array.from([0.1, 0.2, 0.3, 1 / 3]);
  writeSafetensors(path.join(dir, "one.safetensors"), [{ name: "a", dtype: "F32", shape: [2, 3], data: a }]);
  writeSafetensors(path.join(dir, "two.safetensors"), [{ name: "b", dtype: "BF16", shape: [4], data: b }]);
  fs.writeFileSync(
    path.join(dir, "model.safetensors.index.json"),
    JSON.stringify({ weight_map: { a: "one.safetensors", b: "two.safetensors" } }),
  );
  const checkpoint = new Checkpoint(dir);
  assert.deepEqual(checkpoint.names().sort(), ["a", "b"]);
  assert.deepEqual(checkpoint.shape("a"), [2, 3]);
  assert.deepEqual(checkpoint.read("a"), a);
  // BF16 keeps 8 significant bits: each value within half a unit in the last place (2^-9 relative).
  checkpoint.read("b").forEach((v, i) => assert.ok(Math.abs(v - b[i]) <= Math.abs(b[i]) * 2 ** -8, `b[${i}] = ${v}`));
  assert.throws(() => checkpoint.read("c"), /no tensor c/);
});

test("checkpoints the engine layout cannot reproduce are named and refused", () => {
  const base = { model_type: "llama", hidden_act: "silu", max_position_embeddings: 4096 };
  assert.deepEqual(unsupportedFeatures(base), []);
  assert.deepEqual(unsupportedFeatures({ ...base, model_type: "qwen3", rope_scaling: null }), []);
  assert.match(unsupportedFeatures({ ...base, model_type: "gemma" }).join(), /model_type gemma/);
  assert.match(unsupportedFeatures({ ...base, rope_scaling: { rope_type: "llama3", factor: 8 } }).join(), /llama3/);
  assert.match(unsupportedFeatures({ ...base, attention_bias: true }).join(), /biases/);
  assert.match(unsupportedFeatures({ ...base, sliding_window: 1024 }).join(), /sliding_window/);
});

describe("a checkpoint of the built-in model's weights", () => {
  let builtin: ServedModel;
  let converted: ServedModel;
  const dir = path.join(root, "tiny-checkpoint");

  before(async () => {
    await writeCheckpoint(dir, "tiny", 0);
    builtin = await openServedTiny();
    converted = await openServedTiny({ model: dir });
  }, SLOW);
  after(async () => {
    await builtin?.engine.runner.dispose();
    await converted?.engine.runner.dispose();
    fs.rmSync(root, { recursive: true, force: true });
  });

  test("is served under its own path and generates what the built-in model generates", SLOW, async () => {
    assert.equal(converted.loaded.id, path.resolve(dir));
    assert.ok(converted.loaded.dir.startsWith(path.join(testCacheDir(), "converted")), converted.loaded.dir);
    const expected = await generated(builtin.engine.submit(prompt, greedy));
    const actual = await generated(converted.engine.submit(prompt, greedy));
    assert.deepEqual(actual.ids, expected.ids);
    actual.logprobs.forEach((lp, i) => assert.ok(Math.abs(lp - expected.logprobs[i]) < 1e-5, `token ${i}`));
  });

  test("is converted once: a second load reuses the conversion", SLOW, async () => {
    const onnx = path.join(converted.loaded.dir, "onnx", "model.onnx");
    const before = fs.statSync(onnx).mtimeMs;
    const again = await openServedTiny({ model: dir });
    await again.engine.runner.dispose();
    assert.equal(again.loaded.dir, converted.loaded.dir);
    assert.equal(fs.statSync(onnx).mtimeMs, before);
  });

  test("is downloaded from a hub that has no ONNX files for it, then converted and run, later offline", SLOW, async () => {
    // A stand-in for the hub: serves the checkpoint folder at <id>/resolve/main/<file> (GET and HEAD).
    const hub = await serve((req) => {
      const match = new URL(req.url).pathname.match(/^\/test-org\/tiny-checkpoint\/resolve\/main\/(.+)$/);
      const file = match && path.join(dir, decodeURIComponent(match[1]));
      if (!file || !fs.existsSync(file)) return new Response("not found", { status: 404 });
      return new Response(req.method === "HEAD" ? null : fs.readFileSync(file));
    }, { hostname: "127.0.0.1", port: 0 });
    const remoteHost = transformersEnv.remoteHost;
    const cacheDir = path.join(root, "hub-cache");
    let closed = false;
    try {
      const hubUrl = `http://127.0.0.1:${hub.port}`;
      const loaded = await loadModel({ model: "test-org/tiny-checkpoint", device: "cpu", cacheDir, hubUrl, log: silentLogger });
      try {
        assert.equal(loaded.id, "test-org/tiny-checkpoint");
        assert.ok(fs.existsSync(path.join(cacheDir, "hub", "test-org", "tiny-checkpoint", "model.safetensors")));
        assert.ok(loaded.dir.startsWith(path.join(cacheDir, "converted")), loaded.dir);
        const feeds = { input_ids: loaded.tensor("int64", BigInt64Array.from(prompt, BigInt), [1, prompt.length]) };
        const logits = await loaded.forward({
          ...feeds,
          attention_mask: loaded.tensor("int64", new BigInt64Array(prompt.length).fill(1n), [1, prompt.length]),
          position_ids: loaded.tensor("int64", BigInt64Array.from(prompt, (_, i) => BigInt(i)), [1, prompt.length]),
          ...emptyPast(loaded),
        });
        assert.ok((logits.logits.data as Float32Array).every(Number.isFinite));
      } finally {
        await loaded.dispose();
      }
      // Once downloaded and converted, the model starts with the hub gone.
      await hub.close();
      closed = true;
      const offline = await loadModel({ model: "test-org/tiny-checkpoint", device: "cpu", cacheDir, hubUrl, log: silentLogger });
      assert.equal(offline.dir, loaded.dir);
      await offline.dispose();
    } finally {
      transformersEnv.remoteHost = remoteHost;
      if (!closed) await hub.close();
    }
  });

  test("from a gated repository: refused without HF_TOKEN, with the token named; downloaded with it", SLOW, async () => {
    // A stand-in for a gated hub repository: every file needs the bearer token.
    const hub = await serve((req) => {
      if (req.headers.get("authorization") !== "Bearer hf_secret") return new Response("Unauthorized", { status: 401 });
      const match = new URL(req.url).pathname.match(/^\/test-org\/gated\/resolve\/main\/(.+)$/);
      const file = match && path.join(dir, decodeURIComponent(match[1]));
      if (!file || !fs.existsSync(file)) return new Response("not found", { status: 404 });
      return new Response(req.method === "HEAD" ? null : fs.readFileSync(file));
    }, { hostname: "127.0.0.1", port: 0 });
    const remoteHost = transformersEnv.remoteHost;
    const saved = { HF_TOKEN: process.env.HF_TOKEN, HF_ACCESS_TOKEN: process.env.HF_ACCESS_TOKEN };
    const cacheDir = path.join(root, "gated-cache");
    try {
      delete process.env.HF_TOKEN;
      delete process.env.HF_ACCESS_TOKEN;
      const hubUrl = `http://127.0.0.1:${hub.port}`;
      const load = () => loadModel({ model: "test-org/gated", device: "cpu", cacheDir, hubUrl, log: silentLogger });
      await assert.rejects(load(), /test-org\/gated.*refused the request.*HF_TOKEN or --hf-token/s);
      process.env.HF_TOKEN = "hf_secret";
      const loaded = await load();
      assert.ok(fs.existsSync(path.join(cacheDir, "hub", "test-org", "gated", "model.safetensors")));
      await loaded.dispose();
    } finally {
      for (const [name, value] of Object.entries(saved)) {
        if (value === undefined) delete process.env[name];
        else process.env[name] = value;
      }
      transformersEnv.remoteHost = remoteHost;
      await hub.close();
    }
  });

  test("from a hub that cannot be reached: the error says how to start without it", async () => {
    const remoteHost = transformersEnv.remoteHost;
    // A port that was free a moment ago: nothing answers there.
    const gone = await serve(() => new Response(""), { hostname: "127.0.0.1", port: 0 });
    const hubUrl = `http://127.0.0.1:${gone.port}`;
    await gone.close();
    try {
      const cacheDir = path.join(root, "unreachable-cache");
      await assert.rejects(
        loadModel({ model: "test-org/elsewhere", device: "cpu", cacheDir, hubUrl, log: silentLogger }),
        /could not be reached\. Without network access, give --model a local directory.*HF_ENDPOINT or --hub-url/s,
      );
    } finally {
      transformersEnv.remoteHost = remoteHost;
    }
  });

  test("is taken by a refit as new weights, and a BF16 one too", SLOW, async () => {
    const bf16 = path.join(root, "tiny-bf16");
    await writeCheckpoint(bf16, "tiny", 1, "BF16");
    const served = {
      dir: builtin.loaded.dir,
      dtype: "fp32" as const,
      backend: builtin.loaded.backend,
      maxRows: 2,
      maxLength: 128,
      scratchDir: path.join(root, "scratch"),
    };
    const lastLogits = async (source: string) => {
      const runner = await openWeights(source, served);
      try {
        return (await runner.step([{ row: 0, tokens: prompt, start: 0 }]))[0].slice();
      } finally {
        await runner.dispose();
      }
    };
    const [reference, fromCheckpoint, fromBf16] = [
      await lastLogits(builtin.loaded.dir),
      await lastLogits(dir),
      await lastLogits(bf16),
    ];
    const maxDiff = (a: Float32Array, b: Float32Array) => a.reduce((m, v, i) => Math.max(m, Math.abs(v - b[i])), 0);
    assert.ok(maxDiff(fromCheckpoint, reference) < 1e-5, "the checkpoint of the same weights gives the same logits");
    assert.ok(fromBf16.every(Number.isFinite));
    assert.ok(maxDiff(fromBf16, reference) > 1e-3, "other weights give other logits");
    assert.deepEqual(fs.readdirSync(served.scratchDir), [], "the scratch conversions are removed");
  });
});
