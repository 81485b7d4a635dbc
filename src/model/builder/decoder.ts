/**
 * The standard decoder layout, the one transformers.js and hub exports use:
 * inputs input_ids, attention_mask, position_ids, past_key_values.{i}.key/value;
 * outputs logits and present.{i}.key/value (past and new K/V concatenated).
 */
import type { DecoderArch } from "./arch.ts";
import { GraphBuilder } from "./graph.ts";
import {
  attend,
  DecoderContext,
  decoderLayer,
  embed,
  lmHead,
  type QuantFormat,
  rotaryTables,
  type WeightDtype,
} from "./layers.ts";
import { DataType, type ModelDef } from "./onnx-proto.ts";
import type { WeightSource } from "./random-weights.ts";

/** What to emit and where the weights come from. */
export interface EmitOptions {
  dtype: WeightDtype;
  weights: WeightSource;
  /** The quantized format, when not the dtype's QUANT_FORMATS entry. */
  format?: QuantFormat;
}

/** Symbolic dimension names; transformers.js sizes an empty cache from "batch_size" and fixed dims. */
export const DIMS = {
  batch: "batch_size",
  seq: "sequence_length",
  past: "past_sequence_length",
  total: "total_sequence_length",
} as const;

/**
 * Allowed attention [B, 1, S, T] for the standard layout: key slot j is visible from query i
 * (absolute slot T - S + i) when j <= T - S + i and attention_mask[b, j] is 1.
 */
function standardMask(g: GraphBuilder, inputIds: string, attentionMask: string): string {
  const dim = (t: string, axis: number) => g.op("Gather", [g.op("Shape", [t]), g.int64([axis], [])], { axis: 0 });
  const total = dim(attentionMask, 1);
  const past = g.op("Sub", [total, dim(inputIds, 1)]);
  const one = g.int64([1], []);
  const queryPos = g.op("Unsqueeze", [g.op("Range", [past, total, one]), g.int64([1])]); // [S, 1]
  const keyPos = g.op("Unsqueeze", [g.op("Range", [g.int64([0], []), total, one]), g.int64([0])]); // [1, T]
  const causal = g.op("LessOrEqual", [keyPos, queryPos]); // [S, T]
  const padding = g.op("Cast", [g.op("Unsqueeze", [attentionMask, g.int64([1, 2])])], { to: DataType.BOOL });
  return g.op("And", [causal, padding]); // [B, 1, S, T]
}

/** Emits the standard-layout decoder for `arch`. */
export function emitStandardDecoder(arch: DecoderArch, options: EmitOptions): ModelDef {
  const g = new GraphBuilder(17);
  const ctx = new DecoderContext(g, arch, options.dtype, options.weights, options.format);
  const inputIds = g.input("input_ids", DataType.INT64, [DIMS.batch, DIMS.seq]);
  const attentionMask = g.input("attention_mask", DataType.INT64, [DIMS.batch, DIMS.total]);
  const positionIds = g.input("position_ids", DataType.INT64, [DIMS.batch, DIMS.seq]);
  const cacheDims = [DIMS.batch, arch.numKvHeads, DIMS.past, arch.headDim];
  for (let i = 0; i < arch.numLayers; i++) {
    g.input(`past_key_values.${i}.key`, ctx.act, cacheDims);
    g.input(`past_key_values.${i}.value`, ctx.act, cacheDims);
  }

  const allowed = g.within("/model/attn_mask", () => standardMask(g, inputIds, attentionMask));
  const rope = g.within("/model/rotary_emb", () => rotaryTables(ctx, positionIds));
  let x = g.within("/model/embed_tokens", () => embed(ctx, inputIds));
  const presentDims = [DIMS.batch, arch.numKvHeads, DIMS.total, arch.headDim];
  for (let i = 0; i < arch.numLayers; i++) {
    x = decoderLayer(ctx, i, x, rope, (layer, q, k, v) => {
      const cat = (kind: string, t: string) =>
        g.op("Concat", [`past_key_values.${layer}.${kind}`, t], { axis: 2 }, { outputs: [`present.${layer}.${kind}`] });
      return attend(ctx, q, cat("key", k), cat("value", v), allowed);
    });
  }
  g.within("/lm_head", () => lmHead(ctx, x, "logits"));

  g.output("logits", DataType.FLOAT, [DIMS.batch, DIMS.seq, arch.vocabSize]);
  for (let i = 0; i < arch.numLayers; i++) {
    g.output(`present.${i}.key`, ctx.act, presentDims);
    g.output(`present.${i}.value`, ctx.act, presentDims);
  }
  return g.toModel("gym_edge_decoder", "gym-edge");
}
