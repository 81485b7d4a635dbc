/**
 * A plain-TypeScript forward pass of the decoder the builder emits, computed in float64 from the
 * weights stored in a built model's ONNX file. Its inputs and outputs mirror the ONNX graph's
 * (input_ids, attention_mask, position_ids, past K/V -> logits, present K/V), so any backend can be
 * checked against it.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import {
  archFromConfig,
  type DecoderArch,
  layerWeightNames,
  modelWeightNames,
  ropeInvFreq,
  weightSpecs,
} from "../../src/model/builder/arch.ts";
import { type BuildDtype, ONNX_FILES } from "../../src/model/builder/build.ts";
import { isQuantized, lmHeadCopyName, QUANT_FORMATS, quantizedNames } from "../../src/model/builder/layers.ts";
import { readInitializers } from "../../src/model/builder/onnx-read.ts";
import { DataType } from "../../src/model/builder/onnx-proto.ts";
import { dequantizeBlocks, float16ToFloat32 } from "../../src/model/builder/quantize.ts";

/** Architecture plus every weight as float32 (linear weights [in, out]). */
export interface ReferenceModel {
  arch: DecoderArch;
  weights: Map<string, Float32Array>;
  /** lm_head's own table [vocab, hidden] where it differs from the stored one (a quantized copy of it). */
  lmHead?: Float32Array;
}

/** One layer's cache, [batch, kv_heads, length, head_dim] row-major, as the ONNX graph takes it. */
export interface LayerKv {
  key: Float32Array;
  value: Float32Array;
}

/** The graph's inputs, as plain rows. */
export interface ForwardInput {
  inputIds: number[][];
  attentionMask: number[][];
  positionIds: number[][];
  /** Per layer; its length is attention_mask's width minus the number of new tokens. */
  past?: LayerKv[];
}

/** The graph's outputs. */
export interface ForwardOutput {
  /** [batch, seq, vocab] row-major. */
  logits: Float32Array;
  dims: [number, number, number];
  /** Per layer, [batch, kv_heads, past + seq, head_dim]. */
  present: LayerKv[];
}

function toFloat32(t: { dataType: number; data: Uint8Array }): Float32Array {
  const bytes = new Uint8Array(t.data); // an aligned copy of exactly this tensor
  if (t.dataType === DataType.FLOAT) return new Float32Array(bytes.buffer);
  if (t.dataType === DataType.FLOAT16) return float16ToFloat32(new Uint16Array(bytes.buffer));
  throw new Error(`reference: unsupported weight data type ${t.dataType}`);
}

/** Loads the architecture from config.json and the weights from the ONNX file of `dtype` (q8, q4 dequantized). */
export function loadReference(dir: string, dtype: BuildDtype = "fp32"): ReferenceModel {
  const arch = archFromConfig(JSON.parse(fs.readFileSync(path.join(dir, "config.json"), "utf8")));
  const tensors = readInitializers(path.join(dir, ONNX_FILES[dtype]));
  const weights = new Map<string, Float32Array>();
  const dequantized = (stored: string, k: number, n: number, layout: "kn" | "nk") => {
    if (!isQuantized(dtype)) return undefined;
    const names = quantizedNames(stored, dtype);
    const packed = tensors.get(names.codes);
    const scales = tensors.get(names.scales);
    if (!packed || !scales) return undefined;
    const { bits, block } = QUANT_FORMATS[dtype];
    return dequantizeBlocks({ packed: packed.data, scales: toFloat32(scales) }, k, n, bits, block, layout);
  };
  for (const spec of weightSpecs(arch)) {
    const plain = tensors.get(spec.name);
    const [k, n] = spec.dims;
    const weight = plain ? toFloat32(plain) : dequantized(spec.name, k, n, "kn");
    if (!weight) throw new Error(`reference: weight ${spec.name} not found`);
    weights.set(spec.name, weight);
  }
  const table = arch.tieEmbeddings ? modelWeightNames.embedding : modelWeightNames.lmHead;
  const lmHead = dequantized(lmHeadCopyName(table), arch.hiddenSize, arch.vocabSize, "nk");
  return { arch, weights, lmHead };
}

/** Left-pads token rows the way transformers.js batches them (position ids count real tokens only). */
export function leftPad(rows: number[][], padId: number): Omit<ForwardInput, "past"> {
  const width = Math.max(...rows.map((r) => r.length));
  const inputIds: number[][] = [];
  const attentionMask: number[][] = [];
  const positionIds: number[][] = [];
  for (const row of rows) {
    const pad = width - row.length;
    inputIds.push([...Array(pad).fill(padId), ...row]);
    attentionMask.push([...Array(pad).fill(0), ...Array(row.length).fill(1)]);
    positionIds.push([...Array(pad).fill(1), ...row.map((_, i) => i)]);
  }
  return { inputIds, attentionMask, positionIds };
}

function matvec(x: Float64Array, w: Float32Array, n: number): Float64Array {
  const out = new Float64Array(n);
  for (let k = 0; k < x.length; k++) {
    const xk = x[k];
    const row = k * n;
    for (let j = 0; j < n; j++) out[j] += xk * w[row + j];
  }
  return out;
}

function rmsNorm(x: Float64Array, w: Float32Array, eps: number, offset = 0, size = x.length): void {
  let ms = 0;
  for (let i = 0; i < size; i++) ms += x[offset + i] ** 2;
  const inv = 1 / Math.sqrt(ms / size + eps);
  for (let i = 0; i < size; i++) x[offset + i] = x[offset + i] * inv * w[i];
}

function normed(x: Float64Array, w: Float32Array, eps: number): Float64Array {
  const y = x.slice();
  rmsNorm(y, w, eps);
  return y;
}

function rotate(x: Float64Array, heads: number, d: number, pos: number, invFreq: Float32Array): void {
  const half = d / 2;
  for (let i = 0; i < half; i++) {
    const angle = Math.fround(Math.fround(pos) * invFreq[i]); // the graph multiplies in float32
    const c = Math.cos(angle), s = Math.sin(angle);
    for (let h = 0; h < heads; h++) {
      const a = x[h * d + i], b = x[h * d + i + half];
      x[h * d + i] = a * c - b * s;
      x[h * d + i + half] = b * c + a * s;
    }
  }
}

/** Runs the decoder on a batch; mirrors the ONNX graph's inputs and outputs. */
export function referenceForward(model: ReferenceModel, input: ForwardInput): ForwardOutput {
  const { arch, weights } = model;
  const W = (name: string) => weights.get(name)!;
  const { hiddenSize: hs, headDim: d, numHeads: nh, numKvHeads: nkv, vocabSize: vocab } = arch;
  const batch = input.inputIds.length;
  const seq = input.inputIds[0].length;
  const total = input.attentionMask[0].length;
  const pastLen = total - seq;
  const group = nh / nkv;
  const invFreq = ropeInvFreq(arch);
  const present = Array.from({ length: arch.numLayers }, () => ({
    key: new Float32Array(batch * nkv * total * d),
    value: new Float32Array(batch * nkv * total * d),
  }));
  const logits = new Float32Array(batch * seq * vocab);
  const table = model.lmHead ?? W(arch.tieEmbeddings ? modelWeightNames.embedding : modelWeightNames.lmHead);

  for (let b = 0; b < batch; b++) {
    const mask = input.attentionMask[b];
    let xs = input.inputIds[b].map((id) =>
      Float64Array.from(W(modelWeightNames.embedding).subarray(id * hs, (id + 1) * hs))
    );
    for (let l = 0; l < arch.numLayers; l++) {
      const w = layerWeightNames(l);
      const cache = present[l];
      const slot = (kv: number, t: number) => ((b * nkv + kv) * total + t) * d;
      if (pastLen > 0) {
        for (let kv = 0; kv < nkv; kv++) {
          const from = ((b * nkv + kv) * pastLen) * d;
          cache.key.set(input.past![l].key.subarray(from, from + pastLen * d), slot(kv, 0));
          cache.value.set(input.past![l].value.subarray(from, from + pastLen * d), slot(kv, 0));
        }
      }
      const qs = xs.map((x, s) => {
        const h = normed(x, W(w.inputNorm), arch.rmsNormEps);
        const q = matvec(h, W(w.q), nh * d), k = matvec(h, W(w.k), nkv * d), v = matvec(h, W(w.v), nkv * d);
        if (arch.qkNorm) {
          for (let i = 0; i < nh; i++) rmsNorm(q, W(w.qNorm), arch.rmsNormEps, i * d, d);
          for (let i = 0; i < nkv; i++) rmsNorm(k, W(w.kNorm), arch.rmsNormEps, i * d, d);
        }
        const pos = input.positionIds[b][s];
        rotate(q, nh, d, pos, invFreq);
        rotate(k, nkv, d, pos, invFreq);
        for (let kv = 0; kv < nkv; kv++) {
          cache.key.set(k.subarray(kv * d, (kv + 1) * d), slot(kv, pastLen + s));
          cache.value.set(v.subarray(kv * d, (kv + 1) * d), slot(kv, pastLen + s));
        }
        return q;
      });
      xs = xs.map((x, s) => {
        const attn = new Float64Array(nh * d);
        const last = pastLen + s;
        for (let h = 0; h < nh; h++) {
          const kv = Math.floor(h / group);
          const scores = new Float64Array(total);
          let anyAllowed = false;
          for (let t = 0; t < total; t++) {
            const allowed = t <= last && mask[t] === 1;
            anyAllowed ||= allowed;
            if (!allowed) {
              scores[t] = -Infinity;
              continue;
            }
            let dot = 0;
            for (let i = 0; i < d; i++) dot += qs[s][h * d + i] * cache.key[slot(kv, t) + i];
            scores[t] = dot / Math.sqrt(d);
          }
          // A row with nothing to attend to averages every slot, as softmax over equal masked scores does.
          if (!anyAllowed) scores.fill(0);
          const max = Math.max(...scores);
          let sum = 0;
          for (let t = 0; t < total; t++) sum += scores[t] = Math.exp(scores[t] - max);
          for (let t = 0; t < total; t++) {
            const p = scores[t] / sum;
            if (p === 0) continue;
            for (let i = 0; i < d; i++) attn[h * d + i] += p * cache.value[slot(kv, t) + i];
          }
        }
        const mid = matvec(attn, W(w.o), hs).map((o, i) => o + x[i]);
        const h2 = normed(mid, W(w.postNorm), arch.rmsNormEps);
        const gate = matvec(h2, W(w.gate), arch.intermediateSize);
        const up = matvec(h2, W(w.up), arch.intermediateSize);
        const act = gate.map((g, i) => (g / (1 + Math.exp(-g))) * up[i]);
        return matvec(act, W(w.down), hs).map((m, i) => m + mid[i]);
      });
    }
    xs.forEach((x, s) => {
      const h = normed(x, W(modelWeightNames.finalNorm), arch.rmsNormEps);
      const out = (b * seq + s) * vocab;
      for (let v = 0; v < vocab; v++) {
        let dot = 0;
        for (let i = 0; i < hs; i++) dot += h[i] * table[v * hs + i];
        logits[out + v] = dot;
      }
    });
  }
  return { logits, dims: [batch, seq, vocab], present };
}
