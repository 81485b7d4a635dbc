/**
 * q8 and q4 models: the block quantizer's bounds and bytes, MatMulNBits multiplying by exactly what the quantizer
 * says it stored, and a built q8 model served by the engine: log-probabilities of the graph it runs, next-token
 * distributions close to the fp32 model's.
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import * as ort from "onnxruntime-node";
import { buildModel, ENGINE_FILES, ONNX_FILES } from "../../src/model/builder/build.ts";
import { emitStandardDecoder } from "../../src/model/builder/decoder.ts";
import { writeOnnx } from "../../src/model/builder/onnx-write.ts";
import { PRESETS } from "../../src/model/builder/presets.ts";
import { randomWeights } from "../../src/model/builder/random-weights.ts";
import { openEngineRunner } from "../../src/model/runners/engine-runner.ts";
import { backendFor } from "../../src/model/ort/backends.ts";
import { GraphBuilder } from "../../src/model/builder/graph.ts";
import { QUANT_FORMATS } from "../../src/model/builder/layers.ts";
import { decodeModel } from "../../src/model/builder/onnx-read.ts";
import { DataType, encodeModel } from "../../src/model/builder/onnx-proto.ts";
import {
  dequantizeBlocks,
  dequantizeQ8,
  type QuantBits,
  quantizeBlocks,
  quantizeQ8,
  type WeightLayout,
} from "../../src/model/builder/quantize.ts";
import { SamplingParams } from "../../src/engine/sampling-params.ts";
import type { ServedModel } from "../../src/server.ts";
import { writeCheckpoint } from "../support/checkpoint.ts";
import { generated, openServedTiny } from "../support/served.ts";
import { standardRun } from "../support/standard-graph.ts";
import { assertClose, maxDiff, prefill, tokens } from "../support/runner-checks.ts";
import { leftPad, loadReference, referenceForward } from "./reference.ts";

const SLOW = { timeout: 180_000 };
const root = fs.mkdtempSync(path.join(os.tmpdir(), "gym-edge-quantized-"));
const tiny = path.join(root, "tiny");

/** Deterministic values of varied magnitude, with a few outliers and an all-zero stretch. */
function sampleWeights(count: number): Float32Array {
  const w = new Float32Array(count);
  let state = 12345;
  for (let i = 0; i < count; i++) {
    state = (Math.imul(state, 1103515245) + 12345) >>> 0;
    w[i] = ((state >>> 8) / 2 ** 24 - 0.5) * (i % 97 === 0 ? 3 : 0.2);
  }
  w.fill(0, 64, 128);
  return w;
}

function logSoftmax(logits: Float32Array): Float64Array {
  let max = -Infinity;
  for (const x of logits) max = Math.max(max, x);
  let sum = 0;
  for (const x of logits) sum += Math.exp(x - max);
  const logZ = max + Math.log(sum);
  return Float64Array.from(logits, (x) => x - logZ);
}

/** KL(p || q) of two logit rows, in nats. */
function klDivergence(p: Float32Array, q: Float32Array): number {
  const [lp, lq] = [logSoftmax(p), logSoftmax(q)];
  let kl = 0;
  for (let i = 0; i < lp.length; i++) kl += Math.exp(lp[i]) * (lp[i] - lq[i]);
  return kl;
}

/** One MatMulNBits node at accuracy_level 0 (float compute) over `q`, run on x [rows, k]. */
async function matMulNBits(x: Float32Array, rows: number, k: number, n: number, bits: QuantBits, block: number, q: {
  packed: Uint8Array;
  scales: Float32Array;
}): Promise<Float32Array> {
  const g = new GraphBuilder(17);
  const input = g.input("x", DataType.FLOAT, [rows, k]);
  const b = g.initializer({
    name: "b",
    dataType: DataType.UINT8,
    dims: [n, k / block, (block * bits) / 8],
    data: q.packed,
  });
  const scales = g.initializer({
    name: "scales",
    dataType: DataType.FLOAT,
    dims: [q.scales.length],
    data: new Uint8Array(q.scales.buffer),
  });
  const attributes = { K: k, N: n, bits, block_size: block, accuracy_level: 0 };
  g.op("MatMulNBits", [input, b, scales], attributes, { outputs: ["y"], domain: "com.microsoft" });
  g.output("y", DataType.FLOAT, [rows, n]);
  const chunks = encodeModel(g.toModel("matmul_nbits", "test")).finish();
  const bytes = new Uint8Array(chunks.reduce((a, c) => a + c.byteLength, 0));
  chunks.reduce((at, c) => (bytes.set(c, at), at + c.byteLength), 0);
  const session = await ort.InferenceSession.create(bytes);
  try {
    const out = await session.run({ x: new ort.Tensor("float32", x, [rows, k]) });
    return out.y.data as Float32Array;
  } finally {
    await session.release();
  }
}

describe("block quantization", () => {
  test("q8 round trip: every weight within half a step of its block's scale, zero blocks stay zero", () => {
    const [k, n] = [128, 24];
    const w = sampleWeights(k * n);
    const q = quantizeQ8(w, k, n);
    assert.equal(q.packed.length, k * n);
    assert.equal(q.scales.length, n * (k / 32));
    const back = dequantizeQ8(q, k, n);
    for (let row = 0; row < k; row++) {
      for (let col = 0; col < n; col++) {
        const i = row * n + col;
        const scale = q.scales[col * (k / 32) + Math.floor(row / 32)];
        let amax = 0;
        for (let j = 0; j < 32; j++) amax = Math.max(amax, Math.abs(w[(Math.floor(row / 32) * 32 + j) * n + col]));
        assert.ok(Math.abs(scale - amax / 127) <= amax * 1e-7, `scale of block ${row >> 5} column ${col}`);
        assert.ok(Math.abs(back[i] - w[i]) <= scale / 2 + 1e-9, `weight ${row},${col}: ${w[i]} -> ${back[i]}`);
      }
    }
    // Rows 64..127 of column 0 hold the zeroed stretch only partly; a column's block of all zeros keeps scale 0.
    const zero = quantizeQ8(new Float32Array(32 * 2), 32, 2);
    assert.deepEqual([...zero.scales], [0, 0]);
    assert.ok(zero.packed.every((code) => code === 128));
  });

  test("q8 codes use the symmetric range 1..255 around the zero point 128; the largest weight of a block maps to an end", () => {
    const w = Float32Array.from({ length: 32 }, (_, j) => (j - 16) / 16); // -1 .. 0.9375 in one column
    const q = quantizeQ8(w, 32, 1);
    assert.equal(q.packed[0], 1); // -1 is -127 steps
    assert.equal(q.packed[16], 128); // 0
    assert.ok(Math.min(...q.packed) >= 1 && Math.max(...q.packed) <= 255);
  });

  test("an [N, K] table quantizes to the same blocks as its [K, N] transpose", () => {
    const [k, n] = [64, 10];
    const w = sampleWeights(k * n);
    const t = new Float32Array(k * n);
    for (let row = 0; row < k; row++) for (let col = 0; col < n; col++) t[col * k + row] = w[row * n + col];
    for (const bits of [8, 4] as const) {
      const a = quantizeBlocks(w, k, n, bits, 32, "kn");
      const b = quantizeBlocks(t, k, n, bits, 32, "nk");
      assert.deepEqual(b.packed, a.packed);
      assert.deepEqual(b.scales, a.scales);
      assert.deepEqual(
        dequantizeBlocks(b, k, n, bits, 32, "nk"),
        (() => {
          const back = dequantizeBlocks(a, k, n, bits, 32, "kn");
          const out = new Float32Array(k * n);
          for (let row = 0; row < k; row++) for (let col = 0; col < n; col++) out[col * k + row] = back[row * n + col];
          return out;
        })(),
      );
    }
  });

  // The q4 digest is that of the quantizer before q8 existed: q4 files keep their bytes.
  test("the quantizer writes the same bytes on every runtime", () => {
    const [k, n] = [96, 40];
    const w = sampleWeights(k * n);
    const digest = (q: { packed: Uint8Array; scales: Float32Array }) =>
      createHash("sha256").update(q.packed).update(new Uint8Array(q.scales.buffer)).digest("hex").slice(0, 16);
    assert.equal(digest(quantizeBlocks(w, k, n, 8, 32)), "5f4a724c37ef596f");
    assert.equal(digest(quantizeBlocks(w, k, n, 4, 32)), "cb2a31895a8c8fe6");
  });

  for (const [bits, block, layout] of [[8, 32, "kn"], [8, 64, "nk"], [4, 32, "kn"], [4, 32, "nk"]] as const) {
    test(`MatMulNBits with ${bits} bits, block ${block}, multiplies by the dequantized ${layout} weight`, async () => {
      const [rows, k, n] = [3, 128, 20];
      const w = sampleWeights(k * n);
      const q = quantizeBlocks(w, k, n, bits, block, layout as WeightLayout);
      const dense = dequantizeBlocks(q, k, n, bits, block, layout as WeightLayout);
      const x = sampleWeights(rows * k).map((v) => v * 5);
      const y = await matMulNBits(x, rows, k, n, bits, block, q);
      for (let r = 0; r < rows; r++) {
        for (let c = 0; c < n; c++) {
          let expected = 0;
          for (let i = 0; i < k; i++) {
            expected += x[r * k + i] * (layout === "kn" ? dense[i * n + c] : dense[c * k + i]);
          }
          assert.ok(Math.abs(y[r * n + c] - expected) < 1e-4, `row ${r} column ${c}: ${y[r * n + c]} vs ${expected}`);
        }
      }
    });
  }
});

describe("a q8 model", () => {
  let served: ServedModel;

  before(async () => {
    await buildModel({ preset: "tiny", out: tiny, seed: 0, dtype: ["fp32", "q8", "q4"] });
    served = await openServedTiny({ model: tiny, dtype: "q8" });
  }, SLOW);
  after(async () => {
    await served?.engine.runner.dispose();
    fs.rmSync(root, { recursive: true, force: true });
  });

  test("is written as transformers.js names it, with MatMulNBits of its format for every linear weight", () => {
    assert.equal(ONNX_FILES.q8, "onnx/model_quantized.onnx");
    const { bits, block, accuracyLevel, lmHead } = QUANT_FORMATS.q8;
    for (const file of [ONNX_FILES.q8, ENGINE_FILES.q8]) {
      const graph = decodeModel(fs.readFileSync(path.join(tiny, file))).graph;
      const nbits = graph.nodes.filter((n) => n.opType === "MatMulNBits");
      // 7 per layer, plus lm_head when the format quantizes it; no float MatMul against a weight is left.
      assert.equal(nbits.length, 2 * 7 + (lmHead ? 1 : 0), file);
      for (const node of nbits) {
        assert.deepEqual(
          [node.attributes?.bits, node.attributes?.block_size, node.attributes?.accuracy_level],
          [bits, block, accuracyLevel],
        );
      }
      assert.equal(graph.nodes.some((n) => n.opType === "Gemm"), !lmHead, file);
    }
  });

  test("computes what its own weights give, within int8 compute's rounding of activations", SLOW, async () => {
    const ids = [9707, 11, 1879, 0, 42, 151644, 872, 198];
    const run = await standardRun(tiny, ids, ONNX_FILES.q8);
    const ref = referenceForward(loadReference(tiny, "q8"), leftPad([ids], 151643)).logits;
    const fp32 = await standardRun(tiny, ids, ONNX_FILES.fp32);
    const vocab = PRESETS.tiny.arch.vocabSize;
    const last = (ids.length - 1) * vocab;
    const diff = maxDiff(run.at(ids.length - 1), ref.subarray(last, last + vocab));
    assert.ok(diff < 2e-2, `q8 vs the reference of its weights: ${diff}`);
    // Its weights are not fp32's, nor are they far from them.
    const fromFp32 = maxDiff(ref.subarray(last, last + vocab), fp32.at(ids.length - 1));
    assert.ok(fromFp32 > 0 && fromFp32 < 5e-2, `q8 weights vs fp32 weights: ${fromFp32}`);
  });

  test("served by the engine, reports the log-probabilities of its own q8 graph", SLOW, async () => {
    assert.equal(served.layout, "engine");
    const prompt = [9707, 11, 1879, 0, 42, 151644, 872, 198];
    const sampling = SamplingParams.parse({ temperature: 1, max_tokens: 12, ignore_eos: true, seed: 7 });
    const out = await generated(served.engine.submit(prompt, sampling));
    assert.equal(out.ids.length, 12);
    const expected = await standardRun(tiny, [...prompt, ...out.ids], ONNX_FILES.q8);
    out.ids.forEach((id, i) => {
      const logprob = logSoftmax(expected.at(prompt.length - 1 + i))[id];
      assert.ok(Math.abs(out.logprobs[i] - logprob) < 1e-4, `token ${i}: ${out.logprobs[i]} vs ${logprob}`);
    });
  });

  test("a safetensors checkpoint of the same weights, served with --dtype q8, generates the same", SLOW, async () => {
    const checkpoint = path.join(root, "tiny-checkpoint");
    await writeCheckpoint(checkpoint, "tiny", 0);
    const converted = await openServedTiny({ model: checkpoint, dtype: "q8" });
    try {
      const prompt = [151644, 872, 198, 3555, 374, 220, 17, 10, 17, 30];
      const greedy = SamplingParams.parse({ temperature: 0, max_tokens: 8, ignore_eos: true });
      const expected = await generated(served.engine.submit(prompt, greedy));
      const actual = await generated(converted.engine.submit(prompt, greedy));
      assert.deepEqual(actual.ids, expected.ids);
      actual.logprobs.forEach((lp, i) => assert.ok(Math.abs(lp - expected.logprobs[i]) < 1e-5, `token ${i}`));
      assert.ok(fs.existsSync(path.join(converted.loaded.dir, ONNX_FILES.q8)));
    } finally {
      await converted.engine.runner.dispose();
    }
  });

  test("next-token distributions stay close to the fp32 model's, closer than q4's", SLOW, async () => {
    const ids = tokens(32, 3);
    const [fp32, q8, q4] = await Promise.all(
      (["fp32", "q8", "q4"] as const).map((dtype) => standardRun(tiny, ids, ONNX_FILES[dtype])),
    );
    let [kl8, kl4] = [0, 0];
    for (let p = 0; p < ids.length; p++) {
      kl8 += klDivergence(fp32.at(p), q8.at(p)) / ids.length;
      kl4 += klDivergence(fp32.at(p), q4.at(p)) / ids.length;
    }
    // Measured: q8 1.2e-6 (random weights spread the distributions thin, so every KL here is small); codes one step
    // off the zero point gave 5.9e-6.
    assert.ok(kl8 < 2.5e-6, `q8 mean KL ${kl8}`);
    assert.ok(kl8 < kl4 / 4, `q8 mean KL ${kl8}, q4 ${kl4}`);
  });
});

describe("an engine graph written from a q4 file of another format", () => {
  const dir = path.join(root, "tiny-q4-float");
  const arch = PRESETS.tiny.arch;

  before(async () => {
    await buildModel({ preset: "tiny", out: tiny, seed: 0, dtype: ["fp32", "q8", "q4"] });
    fs.mkdirSync(path.join(dir, "onnx"), { recursive: true });
    for (const file of ["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"]) {
      fs.copyFileSync(path.join(tiny, file), path.join(dir, file));
    }
    // As q4 was written before int8 compute: float compute, lm_head through the float table.
    const format = { bits: 4 as const, block: 32, accuracyLevel: 0, lmHead: false };
    const model = emitStandardDecoder(arch, { dtype: "q4", weights: randomWeights(arch, 0), format });
    await writeOnnx(path.join(dir, ONNX_FILES.q4), model);
  }, SLOW);

  test("multiplies as that file does: its accuracy level, its float lm_head, its logits", SLOW, async () => {
    const runner = await openEngineRunner({
      dir,
      dtype: "q4",
      backend: await backendFor("cpu"),
      maxRows: 2,
      maxLength: 64,
    });
    try {
      const prompt = tokens(9, 5);
      const logits = await prefill(runner, 0, prompt);
      assertClose(
        logits,
        (await standardRun(dir, prompt, ONNX_FILES.q4)).at(prompt.length - 1),
        "vs its standard graph",
      );
    } finally {
      await runner.dispose();
    }
    const graph = decodeModel(fs.readFileSync(path.join(dir, ENGINE_FILES.q4))).graph;
    const levels = graph.nodes.filter((n) => n.opType === "MatMulNBits").map((n) => n.attributes?.accuracy_level);
    assert.deepEqual(levels, new Array(2 * 7).fill(0));
    assert.ok(graph.nodes.some((n) => n.opType === "Gemm"));
  });
});
