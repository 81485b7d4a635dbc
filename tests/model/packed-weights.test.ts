import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { buildModel, ENGINE_FILES, ONNX_FILES } from "../../src/model/builder/build.ts";
import { type DecodedModel, decodeModel } from "../../src/model/builder/onnx-read.ts";
import { DataType } from "../../src/model/builder/onnx-proto.ts";
import { PRESETS } from "../../src/model/builder/presets.ts";
import { localNativeBackend } from "../../src/model/ort/backends.ts";
import { shareTiedWeights } from "../../src/model/ort/packed-weights.ts";
import type { OrtModule, OrtSession } from "../../src/model/ort/ort-types.ts";

const root = fs.mkdtempSync(path.join(os.tmpdir(), "gym-edge-packed-weights-"));
const tiny = path.join(root, "tiny");
// The tiny preset with its weights in external data, as models of real size have them (inline weights are not split).
await buildModel({ preset: { ...PRESETS.tiny, externalData: true }, out: tiny, seed: 0 });
const arch = PRESETS.tiny.arch;
const enginePath = path.join(tiny, ENGINE_FILES.fp32);
const dataFile = path.join(tiny, `${ONNX_FILES.fp32}_data`);
const EMBEDDING = "model.embed_tokens.weight";
// Sessions take seconds on a small machine; Bun's default limit is 5 s a test.
const SLOW = { timeout: 120_000 };

const decode = (bytes: Uint8Array) => decodeModel(bytes);
const readGraph = () => new Uint8Array(fs.readFileSync(enginePath));
const consumers = (model: DecodedModel, name: string) =>
  model.graph.nodes.filter((n) => n.inputs.includes(name)).map((n) => n.opType).sort();

describe("shareTiedWeights", () => {
  test("declares the tied embedding table a graph input too: the Gather and the lm_head Gemm read one table", () => {
    const original = decode(readGraph());
    assert.deepEqual(consumers(original, EMBEDDING), ["Gather", "Gemm"], "the tiny model ties its embeddings");
    const shared = shareTiedWeights(readGraph());
    assert.ok(shared, "a tied table is shared");
    const model = decode(shared);
    assert.deepEqual(consumers(model, EMBEDDING), ["Gather", "Gemm"]);
    const table = model.graph.initializers.find((t) => t.name === EMBEDDING)!;
    assert.ok(table.external, "the table is in external data");
    const input = model.graph.inputs.find((i) => i.name === EMBEDDING);
    assert.deepEqual(input, { name: EMBEDDING, elemType: DataType.FLOAT, dims: [arch.vocabSize, arch.hiddenSize] });
  });

  test("keeps every node, weight, input and output as it was", () => {
    const original = decode(readGraph());
    const model = decode(shareTiedWeights(readGraph())!);
    assert.deepEqual(model.graph.nodes, original.graph.nodes);
    assert.deepEqual(model.graph.initializers, original.graph.initializers);
    assert.deepEqual(model.graph.inputs.filter((i) => i.name !== EMBEDDING), original.graph.inputs);
    assert.equal(model.graph.inputs.length, original.graph.inputs.length + 1);
    assert.deepEqual(model.graph.outputs, original.graph.outputs);
    assert.deepEqual([model.irVersion, model.opsets, model.graph.name], [original.irVersion, original.opsets, original.graph.name]);
  });

  test("leaves a graph with no shared packed weight alone", () => {
    assert.equal(shareTiedWeights(shareTiedWeights(readGraph())!), null, "a shared graph has nothing left to share");
  });
});

describe("the cpu backend's sessions", () => {
  let ort: OrtModule;
  let shared: OrtSession;
  let plain: OrtSession;
  before(async () => {
    const backend = await localNativeBackend("cpu");
    ort = backend.ort;
    shared = await backend.openFile({ model: enginePath, externalData: [{ name: path.basename(dataFile), path: dataFile }] });
    plain = await ort.InferenceSession.create(enginePath, { executionProviders: ["cpu"] });
  });
  after(async () => {
    await shared?.release();
    await plain?.release();
    fs.rmSync(root, { recursive: true, force: true });
  });

  /** Logits and new K/V of one three-token prefill into an empty cache of one slot. */
  async function prefill(session: OrtSession) {
    const { numLayers, numKvHeads: kvh, headDim: d } = arch;
    const ids = [151644, 872, 9707];
    const i64 = (values: number[], dims: number[]) => new ort.Tensor("int64", BigInt64Array.from(values, BigInt), dims);
    const feeds: Record<string, InstanceType<OrtModule["Tensor"]>> = {
      input_ids: i64(ids, [1, 3]),
      position_ids: i64([0, 1, 2], [1, 3]),
      past_lengths: i64([0], [1]),
      logit_index: i64([0, 1, 2], [1, 3]),
    };
    for (let l = 0; l < numLayers; l++) {
      feeds[`key_cache.${l}`] = new ort.Tensor("float32", new Float32Array(kvh * d), [1, kvh, d, 1]);
      feeds[`value_cache.${l}`] = new ort.Tensor("float32", new Float32Array(kvh * d), [1, kvh, 1, d]);
    }
    const out = await session.run(feeds);
    return Object.fromEntries(Object.entries(out).map(([name, t]) => [name, Array.from(t.data as Float32Array)]));
  }

  test("do not ask for the shared table: it is no input a run must feed", () => {
    assert.ok(!shared.inputNames.includes(EMBEDDING));
    assert.deepEqual(shared.inputNames, plain.inputNames);
  });

  test("run the shared graph from its bytes to the same outputs as the file, bit for bit", SLOW, async () => {
    const [a, b] = [await prefill(shared), await prefill(plain)];
    assert.equal(a.logits.length, 3 * arch.vocabSize);
    assert.deepEqual(a, b);
  });
});
