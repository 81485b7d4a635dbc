/**
 * The decoder the builder emits (Llama / Qwen3 / Mistral / SmolLM family: architectures/) and the names
 * and shapes of its weights. Linear weights are stored as the right operand of MatMul, [in, out],
 * hence the `.MatMul.weight` names; embeddings and norms keep their Hugging Face shapes.
 */
import { architectureFor } from "./architectures/registry.ts";

/** Dimensions and switches of a decoder-only transformer. */
export interface DecoderArch {
  hiddenSize: number;
  numLayers: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  intermediateSize: number;
  vocabSize: number;
  ropeTheta: number;
  rmsNormEps: number;
  maxPositionEmbeddings: number;
  /** RMSNorm over each head of q and k before rotary (the architecture's, see architectures/). */
  qkNorm: boolean;
  /** lm_head shares the token embedding matrix. */
  tieEmbeddings: boolean;
}

/** What a weight is, which decides its random initialization and its storage format. */
export type WeightKind = "embedding" | "linear" | "norm";

/** One weight: name, shape, kind. */
export interface WeightSpec {
  name: string;
  dims: number[];
  kind: WeightKind;
}

/** Names of one layer's weights. */
export function layerWeightNames(i: number) {
  const p = `model.layers.${i}`;
  return {
    inputNorm: `${p}.input_layernorm.weight`,
    q: `${p}.self_attn.q_proj.MatMul.weight`,
    k: `${p}.self_attn.k_proj.MatMul.weight`,
    v: `${p}.self_attn.v_proj.MatMul.weight`,
    o: `${p}.self_attn.o_proj.MatMul.weight`,
    qNorm: `${p}.self_attn.q_norm.weight`,
    kNorm: `${p}.self_attn.k_norm.weight`,
    postNorm: `${p}.post_attention_layernorm.weight`,
    gate: `${p}.mlp.gate_proj.MatMul.weight`,
    up: `${p}.mlp.up_proj.MatMul.weight`,
    down: `${p}.mlp.down_proj.MatMul.weight`,
  };
}

/** Names of the weights outside the layers. */
export const modelWeightNames = {
  embedding: "model.embed_tokens.weight",
  finalNorm: "model.norm.weight",
  lmHead: "lm_head.weight",
};

/** Every weight of `arch`, in a fixed order. */
export function weightSpecs(arch: DecoderArch): WeightSpec[] {
  const { hiddenSize: h, headDim: d, intermediateSize: m } = arch;
  const qDim = arch.numHeads * d;
  const kvDim = arch.numKvHeads * d;
  const specs: WeightSpec[] = [{ name: modelWeightNames.embedding, dims: [arch.vocabSize, h], kind: "embedding" }];
  for (let i = 0; i < arch.numLayers; i++) {
    const n = layerWeightNames(i);
    specs.push(
      { name: n.inputNorm, dims: [h], kind: "norm" },
      { name: n.q, dims: [h, qDim], kind: "linear" },
      { name: n.k, dims: [h, kvDim], kind: "linear" },
      { name: n.v, dims: [h, kvDim], kind: "linear" },
    );
    if (arch.qkNorm) specs.push({ name: n.qNorm, dims: [d], kind: "norm" }, { name: n.kNorm, dims: [d], kind: "norm" });
    specs.push(
      { name: n.o, dims: [qDim, h], kind: "linear" },
      { name: n.postNorm, dims: [h], kind: "norm" },
      { name: n.gate, dims: [h, m], kind: "linear" },
      { name: n.up, dims: [h, m], kind: "linear" },
      { name: n.down, dims: [m, h], kind: "linear" },
    );
  }
  specs.push({ name: modelWeightNames.finalNorm, dims: [h], kind: "norm" });
  if (!arch.tieEmbeddings) specs.push({ name: modelWeightNames.lmHead, dims: [arch.vocabSize, h], kind: "embedding" });
  return specs;
}

/** Number of parameters of `arch`. */
export function parameterCount(arch: DecoderArch): number {
  return weightSpecs(arch).reduce((sum, w) => sum + w.dims.reduce((a, b) => a * b, 1), 0);
}

/** The rotary inverse frequencies, 1 / theta^(2i / headDim), as float32. */
export function ropeInvFreq(arch: Pick<DecoderArch, "ropeTheta" | "headDim">): Float32Array {
  const half = arch.headDim / 2;
  const out = new Float32Array(half);
  for (let i = 0; i < half; i++) out[i] = 1 / arch.ropeTheta ** ((2 * i) / arch.headDim);
  return out;
}

/** Reads a DecoderArch from a Hugging Face config.json object; its switches come from the model_type's Architecture. */
export function archFromConfig(config: Record<string, any>): DecoderArch {
  const architecture = architectureFor(config.model_type);
  const hiddenSize = config.hidden_size;
  const numHeads = config.num_attention_heads;
  return {
    hiddenSize,
    numLayers: config.num_hidden_layers,
    numHeads,
    numKvHeads: config.num_key_value_heads ?? numHeads,
    headDim: config.head_dim ?? hiddenSize / numHeads,
    intermediateSize: config.intermediate_size,
    vocabSize: config.vocab_size,
    ropeTheta: config.rope_theta ?? 10000,
    rmsNormEps: config.rms_norm_eps ?? 1e-6,
    maxPositionEmbeddings: config.max_position_embeddings ?? 2048,
    qkNorm: architecture?.qkNorm ?? false,
    // transformers' own default is to tie when the config does not say.
    tieEmbeddings: config.tie_word_embeddings ?? architecture?.tiedByDefault ?? true,
  };
}
