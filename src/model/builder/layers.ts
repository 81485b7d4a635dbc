/**
 * The building blocks of a Llama/Qwen decoder as ONNX subgraphs, shared by every I/O layout:
 * embedding, RMSNorm, rotary embedding, grouped-query attention over given K/V, SwiGLU MLP, lm_head.
 * A layout (decoder.ts, or a cache-as-input decode graph) decides where K/V come from and go to.
 */
import { type DecoderArch, layerWeightNames, modelWeightNames, ropeInvFreq, weightSpecs } from "./arch.ts";
import type { GraphBuilder, OpOptions } from "./graph.ts";
import { DataType } from "./onnx-proto.ts";
import { float16Bytes, type QuantBits, quantizeBlocks, type QuantizedWeight, type WeightLayout } from "./quantize.ts";
import type { WeightSource } from "./random-weights.ts";

/** How weights are stored and activations computed. */
export type WeightDtype = "fp32" | "fp16" | "q8" | "q4";

/** The dtypes whose linear weights are MatMulNBits blocks. */
export type QuantizedDtype = "q8" | "q4";

/** How a quantized dtype's weights are stored and multiplied (com.microsoft MatMulNBits). */
export interface QuantFormat {
  bits: QuantBits;
  /** Weights per block (one scale each) along the input dimension. */
  block: number;
  /** MatMulNBits' accuracy_level: 0 multiplies in float32, 4 quantizes activations to int8 per block. */
  accuracyLevel: number;
  /** Whether lm_head multiplies by a quantized copy of its table (the float table stays for the embedding). */
  lmHead: boolean;
}

/**
 * The format of each quantized dtype, chosen with bench/matmul-nbits.ts on a 2-core AVX2 CPU (onnxruntime-node 1.30,
 * CPU time of bench-135m's matmuls): int8 compute (accuracy_level 4) is what makes 8 bits fast at all (at level 0 they
 * took 5-10x fp32's time), and cuts 4 bits' decode matmuls by a sixth to a half against level 0, while a 512-row
 * prefill costs 14% (q4) to 60% (q8) more than fp32 there. Block 64 was no faster than 32. A quantized lm_head
 * takes a quarter to a half off 4 bits' logits; for 8 bits it gains at a few rows and loses at 32.
 */
export const QUANT_FORMATS: Record<QuantizedDtype, QuantFormat> = {
  q8: { bits: 8, block: 32, accuracyLevel: 4, lmHead: false },
  q4: { bits: 4, block: 32, accuracyLevel: 4, lmHead: true },
};

/** Block size of q4 weights along the input dimension. */
export const Q4_BLOCK = QUANT_FORMATS.q4.block;

/** True for dtypes whose linear weights are quantized. */
export function isQuantized(dtype: WeightDtype): dtype is QuantizedDtype {
  return dtype === "q8" || dtype === "q4";
}

/** Initializer names of weight `name` quantized as `dtype`: its codes and its scales. */
export function quantizedNames(name: string, dtype: QuantizedDtype): { codes: string; scales: string } {
  return { codes: `${name}_${dtype.toUpperCase()}`, scales: `${name}_scales` };
}

/** The name under which lm_head's quantized copy of `table` is stored, apart from the embedding's float table. */
export function lmHeadCopyName(table: string): string {
  return `lm_head.${table}`;
}

/** Rotary cos/sin tables, [batch, 1, seq, head_dim / 2], in the activation type. */
export interface Rope {
  cos: string;
  sin: string;
  /** The fused tables (rotaryCaches): cos and sin are [rows, D/2], looked up at these row indices [B, S]. */
  positions?: string;
}

/** One layer's attention, given its rotated q [B,H,S,D] and new k/v [B,KvH,S,D]; returns [B,S,H*D]. */
export type AttentionStep = (layer: number, q: string, k: string, v: string) => string;

/** The graph under construction with the model's dimensions, dtype and weights. */
export class DecoderContext {
  /** Element type of activations, KV cache and non-quantized weights. */
  readonly act: number;
  /** How linear weights are quantized (q8, q4), or undefined for float weights. */
  readonly format: QuantFormat | undefined;
  private dims: Map<string, number[]>;
  private registered = new Set<string>();

  /**
   * Whether RMSNorm (and the residual add before it) and the rotation are ONNX Runtime's fused nodes
   * (SimplifiedLayerNormalization, com.microsoft SkipSimplifiedLayerNormalization and RotaryEmbedding) rather than
   * the standard operators that transformers.js-style exports use. Float32 activations only.
   */
  readonly fused: boolean;

  /** `format` replaces the dtype's QUANT_FORMATS entry (a graph that must match weights already written). */
  constructor(
    readonly g: GraphBuilder,
    readonly arch: DecoderArch,
    readonly dtype: WeightDtype,
    readonly weights: WeightSource,
    format?: QuantFormat,
    options: { fused?: boolean } = {},
  ) {
    this.act = dtype === "fp16" ? DataType.FLOAT16 : DataType.FLOAT;
    this.fused = (options.fused ?? false) && this.act === DataType.FLOAT;
    this.format = isQuantized(dtype) ? format ?? QUANT_FORMATS[dtype] : undefined;
    this.dims = new Map(weightSpecs(arch).map((s) => [s.name, s.dims]));
  }

  /** Registers a float weight in the activation type; its bytes are produced when the file is written. */
  param(name: string): string {
    const dims = this.dims.get(name);
    if (!dims) throw new Error(`unknown weight ${name}`);
    if (this.registered.has(name)) return name;
    this.registered.add(name);
    const fp16 = this.act === DataType.FLOAT16;
    return this.g.initializer({
      name,
      dataType: this.act,
      dims,
      produce: () => {
        const values = this.weights(name);
        return fp16 ? float16Bytes(values) : new Uint8Array(values.buffer, values.byteOffset, values.byteLength);
      },
    });
  }

  /** x [.., in] times the weight `name` [in, out]: MatMul, or MatMulNBits for q8 and q4. */
  linear(x: string, name: string): string {
    if (!this.format) return this.g.op("MatMul", [x, this.param(name)]);
    const [k, n] = this.dims.get(name)!;
    return this.quantizedMatMul(x, name, name, k, n, "kn");
  }

  /** Whether lm_head multiplies by a quantized table. */
  get quantizesLmHead(): boolean {
    return this.format?.lmHead === true;
  }

  /**
   * x [rows, hidden] times the transposed table `name` [vocab, hidden]: float32 logits [rows, vocab], written to the
   * graph value `output` when given. Gemm with transB reads the table as it is; a dtype whose format quantizes
   * lm_head multiplies by a quantized copy instead (the table is already MatMulNBits' [N, K]).
   */
  logits(x: string, name: string, output?: string): string {
    const outputs = output === undefined ? {} : { outputs: [output] };
    if (this.quantizesLmHead) {
      const [n, k] = this.dims.get(name)!;
      return this.quantizedMatMul(x, name, lmHeadCopyName(name), k, n, "nk", outputs);
    }
    const table = this.param(name);
    if (this.act === DataType.FLOAT) return this.g.op("Gemm", [x, table], { transB: 1 }, outputs);
    return this.g.op("Cast", [this.g.op("Gemm", [x, table], { transB: 1 })], { to: DataType.FLOAT }, outputs);
  }

  /** x times weight `name` quantized, stored as `stored` (quantizedNames). */
  private quantizedMatMul(
    x: string,
    name: string,
    stored: string,
    k: number,
    n: number,
    layout: WeightLayout,
    outputs: OpOptions = {},
  ): string {
    const format = this.format!;
    const names = quantizedNames(stored, this.dtype as QuantizedDtype);
    const blocks = k / format.block;
    // Both initializers come from one quantization, done when the first of them is written.
    let cached: QuantizedWeight | undefined;
    const quantized = () => cached ??= quantizeBlocks(this.weights(name), k, n, format.bits, format.block, layout);
    const b = this.g.initializer({
      name: names.codes,
      dataType: DataType.UINT8,
      dims: [n, blocks, (format.block * format.bits) / 8],
      produce: () => quantized().packed,
    });
    const scales = this.g.initializer({
      name: names.scales,
      dataType: DataType.FLOAT,
      dims: [n * blocks],
      produce: () => {
        const s = quantized().scales;
        cached = undefined;
        return new Uint8Array(s.buffer);
      },
    });
    const attributes = { K: k, N: n, bits: format.bits, block_size: format.block, accuracy_level: format.accuracyLevel };
    return this.g.op("MatMulNBits", [x, b, scales], attributes, { ...outputs, domain: "com.microsoft" });
  }
}

/** RMSNorm over the last axis, computed in float32 whatever the activation type. */
export function rmsNorm(ctx: DecoderContext, x: string, weightName: string): string {
  const { g } = ctx;
  if (ctx.fused) {
    const attributes = { axis: -1, epsilon: normEpsilon(ctx), stash_type: 1 };
    return g.op("SimplifiedLayerNormalization", [x, ctx.param(weightName)], attributes);
  }
  const half = ctx.act === DataType.FLOAT16;
  const xf = half ? g.op("Cast", [x], { to: DataType.FLOAT }) : x;
  const mean = g.op("ReduceMean", [g.op("Mul", [xf, xf])], { axes: [-1], keepdims: 1 });
  const eps = g.float([ctx.arch.rmsNormEps]);
  const inv = g.op("Reciprocal", [g.op("Sqrt", [g.op("Add", [mean, eps])])]);
  const normed = g.op("Mul", [xf, inv]);
  const back = half ? g.op("Cast", [normed], { to: DataType.FLOAT16 }) : normed;
  return g.op("Mul", [back, ctx.param(weightName)]);
}

function normEpsilon(ctx: DecoderContext) {
  return { float: ctx.arch.rmsNormEps };
}

/** x + y [B, S, hidden] and the RMSNorm of that sum, in one SkipSimplifiedLayerNormalization (ctx.fused). */
function skipNorm(ctx: DecoderContext, x: string, y: string, weightName: string): { sum: string; normed: string } {
  const { g } = ctx;
  const base = g.fresh("SkipSimplifiedLayerNormalization");
  const [normed, sum] = [`${base}_output_0`, `${base}_output_3`];
  // Outputs 1 and 2 (mean, inverse standard deviation) are left out.
  g.op("SkipSimplifiedLayerNormalization", [y, x, ctx.param(weightName)], { epsilon: normEpsilon(ctx) }, {
    outputs: [normed, "", "", sum],
    domain: "com.microsoft",
  });
  return { sum, normed };
}

/** Token embeddings [B, S, hidden] for input_ids [B, S]. */
export function embed(ctx: DecoderContext, inputIds: string): string {
  return ctx.g.op("Gather", [ctx.param(modelWeightNames.embedding), inputIds], { axis: 0 });
}

/** Rotary tables from position_ids [B, S] (int64), computed in float32 like Hugging Face does. */
export function rotaryTables(ctx: DecoderContext, positionIds: string): Rope {
  const { g } = ctx;
  const invFreq = inverseFrequencies(ctx);
  const pos = g.op("Unsqueeze", [g.op("Cast", [positionIds], { to: DataType.FLOAT }), g.int64([2])]);
  const freqs = g.op("Mul", [pos, invFreq]); // [B, S, D/2]
  const table = (fn: string) => {
    const t = g.op("Unsqueeze", [g.op(fn, [freqs]), g.int64([1])]);
    return ctx.act === DataType.FLOAT ? t : g.op("Cast", [t], { to: ctx.act });
  };
  return { cos: table("Cos"), sin: table("Sin") };
}

/** The rotary inverse frequencies [D/2], float32 (ropeInvFreq). */
function inverseFrequencies(ctx: DecoderContext): string {
  return ctx.g.initializer({
    name: "rotary_inv_freq",
    dataType: DataType.FLOAT,
    dims: [ctx.arch.headDim / 2],
    data: new Uint8Array(ropeInvFreq(ctx.arch).buffer),
  });
}

/**
 * Rotary tables for RotaryEmbedding (ctx.fused): cos and sin [B * S, D/2] of each token's own position, by the same
 * float32 operations as rotaryTables (so the same values), and the index of each token's row in them, [B, S]. A
 * step computes the tables of its tokens only, not of every position up to the longest row.
 */
export function rotaryCaches(ctx: DecoderContext, positionIds: string): Rope {
  const { g } = ctx;
  const invFreq = inverseFrequencies(ctx);
  const pos = g.op("Unsqueeze", [g.op("Cast", [positionIds], { to: DataType.FLOAT }), g.int64([2])]);
  const freqs = g.op("Reshape", [g.op("Mul", [pos, invFreq]), g.int64([-1, ctx.arch.headDim / 2])]); // [B * S, D/2]
  const rows = g.op("Range", [g.int64([0], []), g.op("Size", [positionIds]), g.int64([1], [])]);
  const index = g.op("Reshape", [rows, g.op("Shape", [positionIds])]); // [B, S]: b * S + s
  return { cos: g.op("Cos", [freqs]), sin: g.op("Sin", [freqs]), positions: index };
}

/** Rotates x [B, N, S, D] by the rope tables (the "rotate half" convention of Llama and Qwen). */
export function applyRotary(ctx: DecoderContext, x: string, rope: Rope): string {
  const { g } = ctx;
  if (rope.positions) {
    return g.op("RotaryEmbedding", [x, rope.positions, rope.cos, rope.sin], { interleaved: 0 }, { domain: "com.microsoft" });
  }
  const half = ctx.arch.headDim / 2;
  const [x1, x2] = g.opN("Split", [x, g.int64([half, half])], 2, { axis: -1 });
  const first = g.op("Sub", [g.op("Mul", [x1, rope.cos]), g.op("Mul", [x2, rope.sin])]);
  const second = g.op("Add", [g.op("Mul", [x2, rope.cos]), g.op("Mul", [x1, rope.sin])]);
  return g.op("Concat", [first, second], { axis: -1 });
}

/** Projects x [B, S, hidden] to rotated q [B, H, S, D] and k, v [B, KvH, S, D]. */
export function projectQkv(ctx: DecoderContext, layer: number, x: string, rope: Rope) {
  const { g, arch } = ctx;
  const w = layerWeightNames(layer);
  const heads = (weight: string, count: number, norm?: string) => {
    let t = g.op("Reshape", [ctx.linear(x, weight), g.int64([0, 0, count, arch.headDim])]);
    if (norm) t = rmsNorm(ctx, t, norm);
    return g.op("Transpose", [t], { perm: [0, 2, 1, 3] });
  };
  const q = heads(w.q, arch.numHeads, arch.qkNorm ? w.qNorm : undefined);
  const k = heads(w.k, arch.numKvHeads, arch.qkNorm ? w.kNorm : undefined);
  const v = heads(w.v, arch.numKvHeads);
  return { q: applyRotary(ctx, q, rope), k: applyRotary(ctx, k, rope), v };
}

/** The lowest finite value of the activation type: masked scores, never -inf, so no row turns NaN. */
function lowest(ctx: DecoderContext): string {
  return ctx.g.float([ctx.act === DataType.FLOAT16 ? -65504 : -3.4028234663852886e38], ctx.act);
}

/**
 * Grouped-query attention of q [B, H, S, D] over k, v [B, KvH, T, D] where `allowed` [B, 1, S, T]
 * (bool) is true. Queries are regrouped per KV head instead of repeating K and V. Returns [B, S, H*D].
 */
export function attend(ctx: DecoderContext, q: string, k: string, v: string, allowed: string): string {
  const { g, arch } = ctx;
  const { numHeads: h, numKvHeads: kvh, headDim: d } = arch;
  const grouped = g.op("Reshape", [q, g.int64([0, kvh, -1, d])]); // [B, KvH, G*S, D]
  const kT = g.op("Transpose", [k], { perm: [0, 1, 3, 2] });
  const raw = g.op("MatMul", [grouped, kT]); // [B, KvH, G*S, T]
  const scaled = g.op("Mul", [raw, g.float([1 / Math.sqrt(d)], ctx.act)]);
  const scores = g.op("Reshape", [scaled, g.int64([0, h, -1, 0])]); // [B, H, S, T]
  // Where, not an additive mask: it also discards anything non-finite computed at padded positions.
  const probs = g.op("Softmax", [g.op("Where", [allowed, scores, lowest(ctx)])], { axis: -1 });
  const mixed = g.op("MatMul", [g.op("Reshape", [probs, g.int64([0, kvh, -1, 0])]), v]); // [B, KvH, G*S, D]
  const perHead = g.op("Reshape", [mixed, g.int64([0, h, -1, d])]);
  const bshd = g.op("Transpose", [perHead], { perm: [0, 2, 1, 3] });
  return g.op("Reshape", [bshd, g.int64([0, 0, h * d])]);
}

/** SwiGLU MLP: down(silu(gate(x)) * up(x)). */
export function mlp(ctx: DecoderContext, layer: number, x: string): string {
  const { g } = ctx;
  const w = layerWeightNames(layer);
  const gate = ctx.linear(x, w.gate);
  const silu = g.op("Mul", [gate, g.op("Sigmoid", [gate])]);
  return ctx.linear(g.op("Mul", [silu, ctx.linear(x, w.up)]), w.down);
}

/** One pre-norm decoder layer on the residual stream x [B, S, hidden]. */
export function decoderLayer(ctx: DecoderContext, layer: number, x: string, rope: Rope, attention: AttentionStep) {
  const { g } = ctx;
  const w = layerWeightNames(layer);
  return g.within(`/model/layers.${layer}`, () => {
    const { q, k, v } = g.within("/self_attn", () => projectQkv(ctx, layer, rmsNorm(ctx, x, w.inputNorm), rope));
    const attn = g.within("/self_attn", () => ctx.linear(attention(layer, q, k, v), w.o));
    if (ctx.fused) {
      const { sum, normed } = skipNorm(ctx, x, attn, w.postNorm);
      return g.op("Add", [sum, g.within("/mlp", () => mlp(ctx, layer, normed))]);
    }
    const mid = g.op("Add", [x, attn]);
    const ff = g.within("/mlp", () => mlp(ctx, layer, rmsNorm(ctx, mid, w.postNorm)));
    return g.op("Add", [mid, ff]);
  });
}

/** Final norm and lm_head: float32 logits [B, S, vocab], written to the graph value `outputName`. */
export function lmHead(ctx: DecoderContext, x: string, outputName: string): string {
  const { g, arch } = ctx;
  const normed = rmsNorm(ctx, x, modelWeightNames.finalNorm);
  const table = arch.tieEmbeddings ? modelWeightNames.embedding : modelWeightNames.lmHead;
  // A float table is registered before the reshape's constant: the float graphs keep their initializers' order.
  if (!ctx.quantizesLmHead) ctx.param(table);
  const flat = g.op("Reshape", [normed, g.int64([-1, arch.hiddenSize])]);
  const logits2d = ctx.logits(flat, table);
  const leading = g.op("Slice", [g.op("Shape", [x]), g.int64([0]), g.int64([2])]);
  const shape = g.op("Concat", [leading, g.int64([arch.vocabSize])], { axis: 0 });
  return g.op("Reshape", [logits2d, shape], {}, { outputs: [outputName] });
}
