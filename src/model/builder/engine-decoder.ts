/**
 * The engine's own decoder layout, one graph for prefill chunks and decode steps. The KV cache is an INPUT
 * only (the engine keeps it in its row buffers); the graph returns just the new tokens' K/V and the logits of
 * each row's last token, so no step copies the cache or a [B, S, vocab] tensor.
 *   inputs   input_ids, position_ids [B, S] int64; past_lengths [B] int64 (valid cache slots per row);
 *            logit_index [B, P] int64 (the positions whose logits a row wants: its last real token, or each of
 *            its tokens for prompt log-probabilities; rows shorter than S are padded on the right);
 *            key_cache.{i} [B, KvH, D, M] (K transposed: Q·K needs no transpose), value_cache.{i} [B, KvH, M, D]
 *   outputs  logits [B * P, vocab] float32 (at logit_index, row-major); key.{i}, value.{i} [B, KvH, S, D] (rotated
 *            K, V of the new tokens; a padded row's tail is garbage the runner does not keep)
 * Its weights are the standard graph's (same names, shapes and bytes); see writeEngineGraph. Unlike the standard
 * graph, which keeps to standard operators for other ONNX runtimes, it norms and rotates with ONNX Runtime's fused
 * nodes (DecoderContext.fused): 1,324 nodes instead of 2,137 for a 30-layer model.
 */
import * as fs from "node:fs";
import { type DecoderArch, modelWeightNames } from "./arch.ts";
import { AtomicFile } from "./atomic-file.ts";
import { GraphBuilder } from "./graph.ts";
import {
  DecoderContext,
  decoderLayer,
  embed,
  isQuantized,
  lmHeadCopyName,
  type QuantFormat,
  quantizedNames,
  rmsNorm,
  rotaryCaches,
  rotaryTables,
  type WeightDtype,
} from "./layers.ts";
import { type DecodedModel, decodeModel } from "./onnx-read.ts";
import { BYTES_PER_ELEMENT, DataType, encodeModel, type ExternalRef, type ModelDef } from "./onnx-proto.ts";
import type { WeightSource } from "./random-weights.ts";

/** Symbolic dimensions of the engine graph; M (cache_length) is chosen by the runner. */
export const ENGINE_DIMS = {
  batch: "batch_size",
  seq: "sequence_length",
  cache: "cache_length",
} as const;

/** The emitted graph's name, with its version: bump it whenever the emitter's output changes, so stale files are rewritten. */
export const ENGINE_GRAPH_NAME = "gym_edge_engine_decoder_v7";

/** Masks and sizes shared by every layer's attention. */
interface EngineMasks {
  /** [B, 1, 1, 1, M] bool: cache slot m holds a token of row b (m < past_lengths[b]). */
  cacheValid: string;
  /** [S, S] bool: new token j is visible from new token i (j <= i). */
  causal: string;
  /** [2] int64: (M, S), the split of the concatenated scores. */
  split: string;
}

function engineMasks(g: GraphBuilder, inputIds: string, pastLengths: string, keyCache0: string): EngineMasks {
  const dim = (t: string, axis: number) => g.op("Gather", [g.op("Shape", [t]), g.int64([axis], [])], { axis: 0 });
  const zero = g.int64([0], []);
  const one = g.int64([1], []);
  const slots = g.op("Range", [zero, dim(keyCache0, 3), one]); // [M]
  const lengths = g.op("Unsqueeze", [pastLengths, g.int64([1, 2, 3, 4])]); // [B, 1, 1, 1, 1]
  const cacheValid = g.op("Less", [slots, lengths]); // [B, 1, 1, 1, M]
  const positions = g.op("Range", [zero, dim(inputIds, 1), one]); // [S]
  const query = g.op("Unsqueeze", [positions, g.int64([1])]); // [S, 1]
  const key = g.op("Unsqueeze", [positions, g.int64([0])]); // [1, S]
  const causal = g.op("LessOrEqual", [key, query]); // [S, S]
  const split = g.op("Concat", [
    g.op("Shape", [keyCache0], { start: 3, end: 4 }),
    g.op("Shape", [inputIds], {
      start: 1,
      end: 2,
    }),
  ], { axis: 0 });
  return { cacheValid, causal, split };
}

/**
 * Attention of q [B, H, S, D] over the cache (keyCache [B, KvH, D, M], valueCache [B, KvH, M, D]) and the new
 * tokens (k, v [B, KvH, S, D]) without concatenating K/V: the two score blocks are masked, joined (they are
 * small), soft-maxed together and split again. Returns [B, S, H*D].
 */
function attendCacheAndNew(
  ctx: DecoderContext,
  masks: EngineMasks,
  q: string,
  k: string,
  v: string,
  keyCache: string,
  valueCache: string,
): string {
  const { g, arch } = ctx;
  const { numHeads: h, numKvHeads: kvh, headDim: d } = arch;
  // Scaling q instead of the scores: D multiplies a query rather than M + S.
  const scaledQ = g.op("Mul", [q, g.float([1 / Math.sqrt(d)], ctx.act)]);
  const grouped = g.op("Reshape", [scaledQ, g.int64([0, kvh, h / kvh, -1, d])]); // [B, KvH, G, S, D]
  const shared = (t: string) => g.op("Unsqueeze", [t, g.int64([2])]); // [B, KvH, 1, *, *]
  const lowest = g.float([ctx.act === DataType.FLOAT16 ? -65504 : -3.4028234663852886e38], ctx.act);
  const cacheScores = g.op("MatMul", [grouped, shared(keyCache)]); // [B, KvH, G, S, M]
  const newScores = g.op("MatMul", [grouped, shared(g.op("Transpose", [k], { perm: [0, 1, 3, 2] }))]); // [B, KvH, G, S, S]
  // Masked with the lowest finite value, not -inf: a row never turns NaN, and stale slots are discarded.
  const scores = g.op("Concat", [
    g.op("Where", [masks.cacheValid, cacheScores, lowest]),
    g.op("Where", [masks.causal, newScores, lowest]),
  ], { axis: -1 });
  const probs = g.op("Softmax", [scores], { axis: -1 });
  const [cacheProbs, newProbs] = g.opN("Split", [probs, masks.split], 2, { axis: -1 });
  const mixed = g.op("Add", [
    g.op("MatMul", [cacheProbs, shared(valueCache)]),
    g.op("MatMul", [newProbs, shared(v)]),
  ]); // [B, KvH, G, S, D]
  const bshd = g.op("Transpose", [g.op("Reshape", [mixed, g.int64([0, h, -1, d])])], { perm: [0, 2, 1, 3] });
  return g.op("Reshape", [bshd, g.int64([0, 0, h * d])]);
}

/** Hidden states [B * P, H] of x [B, S, H] at each row's positions index[b, 0..P). */
function atPositions(g: GraphBuilder, x: string, index: string, hidden: number): string {
  const shape = g.op("Concat", [g.op("Shape", [index]), g.op("Shape", [x], { start: 2, end: 3 })], { axis: 0 }); // [B, P, H]
  const expanded = g.op("Expand", [g.op("Unsqueeze", [index, g.int64([2])]), shape]);
  const picked = g.op("GatherElements", [x, expanded], { axis: 1 }); // [B, P, H]
  return g.op("Reshape", [picked, g.int64([-1, hidden])]);
}

/** What to emit; `weights` is read only if the model is written with writeOnnx (not by writeEngineGraph). */
export interface EngineEmitOptions {
  dtype: WeightDtype;
  weights: WeightSource;
  /** The quantized format, when not the dtype's QUANT_FORMATS entry. */
  format?: QuantFormat;
}

/** Emits the engine-layout decoder for `arch`. */
export function emitEngineDecoder(arch: DecoderArch, options: EngineEmitOptions): ModelDef {
  const g = new GraphBuilder(17);
  // ONNX Runtime's fused RMSNorm and rotation: fewer, cheaper nodes (1-3% off a 32-row decode step).
  const ctx = new DecoderContext(g, arch, options.dtype, options.weights, options.format, { fused: true });
  const { batch, seq, cache } = ENGINE_DIMS;
  const { numKvHeads: kvh, headDim: d } = arch;
  const inputIds = g.input("input_ids", DataType.INT64, [batch, seq]);
  const positionIds = g.input("position_ids", DataType.INT64, [batch, seq]);
  const pastLengths = g.input("past_lengths", DataType.INT64, [batch]);
  const logitIndex = g.input("logit_index", DataType.INT64, [batch, "logit_positions"]);
  for (let i = 0; i < arch.numLayers; i++) {
    g.input(`key_cache.${i}`, ctx.act, [batch, kvh, d, cache]);
    g.input(`value_cache.${i}`, ctx.act, [batch, kvh, cache, d]);
  }

  const masks = g.within("/model/attn_mask", () => engineMasks(g, inputIds, pastLengths, "key_cache.0"));
  const rope = g.within("/model/rotary_emb", () => (ctx.fused ? rotaryCaches : rotaryTables)(ctx, positionIds));
  let x = g.within("/model/embed_tokens", () => embed(ctx, inputIds));
  for (let i = 0; i < arch.numLayers; i++) {
    x = decoderLayer(ctx, i, x, rope, (layer, q, k, v) => {
      g.op("Identity", [k], {}, { outputs: [`key.${layer}`] });
      g.op("Identity", [v], {}, { outputs: [`value.${layer}`] });
      return attendCacheAndNew(ctx, masks, q, k, v, `key_cache.${layer}`, `value_cache.${layer}`);
    });
  }
  g.within("/lm_head", () => {
    // Only each row's last real position reaches lm_head, and Gemm writes the graph output itself: no
    // [B, S, vocab] tensor and no copy of the logits into the output. Causal attention keeps a row's real tokens
    // blind to the padding after them.
    const last = rmsNorm(ctx, atPositions(g, x, logitIndex, arch.hiddenSize), modelWeightNames.finalNorm);
    const table = arch.tieEmbeddings ? modelWeightNames.embedding : modelWeightNames.lmHead;
    ctx.logits(last, table, "logits");
  });

  g.output("logits", DataType.FLOAT, ["logit_rows", arch.vocabSize]);
  for (let i = 0; i < arch.numLayers; i++) {
    g.output(`key.${i}`, ctx.act, [batch, kvh, seq, d]);
    g.output(`value.${i}`, ctx.act, [batch, kvh, seq, d]);
  }
  return g.toModel(ENGINE_GRAPH_NAME, "gym-edge");
}

/** A standard graph whose weights are not the builder's (another exporter's names, another architecture). */
export class EngineLayoutError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "EngineLayoutError";
  }
}

/**
 * The quantized format a standard graph was written in (its MatMulNBits attributes, and whether lm_head has its own
 * quantized table): the engine graph multiplies exactly as the standard graph does, whichever builder wrote it.
 */
function quantFormatOf(standard: DecodedModel, arch: DecoderArch, dtype: WeightDtype): QuantFormat | undefined {
  if (!isQuantized(dtype)) return undefined;
  const node = standard.graph.nodes.find((n) => n.opType === "MatMulNBits");
  if (!node) throw new EngineLayoutError(`the ${dtype} standard graph has no MatMulNBits`);
  const attr = (name: string, fallback?: number) => {
    const value = node.attributes?.[name] ?? fallback;
    if (typeof value !== "number") throw new EngineLayoutError(`its MatMulNBits has no ${name}`);
    return value;
  };
  const bits = attr("bits", 4);
  if (bits !== 4 && bits !== 8) throw new EngineLayoutError(`its MatMulNBits has ${bits} bits`);
  const table = arch.tieEmbeddings ? modelWeightNames.embedding : modelWeightNames.lmHead;
  const lmHeadCodes = quantizedNames(lmHeadCopyName(table), dtype).codes;
  return {
    bits,
    block: attr("block_size"),
    accuracyLevel: attr("accuracy_level", 0),
    lmHead: standard.graph.initializers.some((t) => t.name === lmHeadCodes),
  };
}

/** True when `enginePath` holds an engine graph of the current version. */
export function isCurrentEngineGraph(enginePath: string): boolean {
  try {
    const file = fs.readFileSync(enginePath);
    return decodeModel(new Uint8Array(file.buffer, file.byteOffset, file.byteLength)).graph.name === ENGINE_GRAPH_NAME;
  } catch {
    return false;
  }
}

/**
 * Writes the engine graph of `arch` to `enginePath`, its weights taken from the standard graph at `standardPath`
 * (same folder): weights the standard graph keeps in external data are referenced at the same file and offsets,
 * so nothing is duplicated on disk; inline ones are copied. Returns the written file's size.
 */
export function writeEngineGraph(
  standardPath: string,
  enginePath: string,
  arch: DecoderArch,
  dtype: WeightDtype,
): number {
  const file = fs.readFileSync(standardPath);
  const standard = decodeModel(new Uint8Array(file.buffer, file.byteOffset, file.byteLength));
  const stored = new Map(standard.graph.initializers.map((t) => [t.name, t]));
  const unread: WeightSource = (name) => {
    throw new Error(`engine graph: weight ${name} must come from ${standardPath}`);
  };
  const model = emitEngineDecoder(arch, { dtype, weights: unread, format: quantFormatOf(standard, arch, dtype) });
  const externals = new Map<string, ExternalRef>();
  model.graph.initializers = model.graph.initializers.map((t) => {
    if (!t.produce) return t; // the engine graph's own constants
    const source = stored.get(t.name);
    // A missing name is another exporter's layout (the caller may run the standard graph instead); a weight of
    // another type or shape is another model.
    if (!source) throw new EngineLayoutError(`${standardPath}: it has no weight named ${t.name}`);
    if (source.dataType !== t.dataType || source.dims.join() !== t.dims.join()) {
      throw new Error(`${standardPath}: weight ${t.name} differs from the ${dtype} engine graph's (dims ${source.dims}, expected ${t.dims})`);
    }
    if (source.external) {
      const length = source.external.length >= 0
        ? source.external.length
        : t.dims.reduce((a, b) => a * b, 1) * BYTES_PER_ELEMENT[t.dataType];
      externals.set(t.name, { ...source.external, length });
      return { name: t.name, dataType: t.dataType, dims: t.dims };
    }
    return { name: t.name, dataType: t.dataType, dims: t.dims, data: source.data };
  });
  const out = new AtomicFile(enginePath);
  try {
    for (const chunk of encodeModel(model, externals).finish()) out.write(chunk);
    out.commit();
    return out.size;
  } catch (e) {
    out.abort();
    throw e;
  }
}
