/** The parts of a Hugging Face config.json the engine needs, read once and checked. */
import { z } from "zod";
import { ModelLoadError } from "./errors.ts";

const count = z.number().int().positive();
const tokenIds = z.union([z.number().int().nonnegative(), z.array(z.number().int().nonnegative())]).nullish();

/** config.json as published (snake_case); unknown keys are kept by the caller as `raw`. */
const HfConfig = z.object({
  model_type: z.string().min(1),
  hidden_size: count,
  num_hidden_layers: count,
  num_attention_heads: count,
  num_key_value_heads: count.optional(),
  head_dim: count.nullish(),
  vocab_size: count,
  max_position_embeddings: count,
  eos_token_id: tokenIds,
  bos_token_id: tokenIds,
  tie_word_embeddings: z.boolean().optional(),
});

const HfGenerationConfig = z.object({ eos_token_id: tokenIds, bos_token_id: tokenIds }).partial();

/** What the engine needs to know about a decoder model. */
export interface ModelConfig {
  modelType: string;
  hiddenSize: number;
  numHiddenLayers: number;
  numAttentionHeads: number;
  numKeyValueHeads: number;
  headDim: number;
  vocabSize: number;
  maxPositionEmbeddings: number;
  /** Every id that ends generation: config.json's and generation_config.json's, config.json's first. */
  eosTokenIds: number[];
  bosTokenId: number | null;
  tieWordEmbeddings: boolean;
  /** config.json as parsed, for anything not lifted out above. */
  raw: Record<string, unknown>;
}

const idList = (v: number | number[] | null | undefined): number[] => v == null ? [] : Array.isArray(v) ? v : [v];

/**
 * Reads config.json (and generation_config.json, when there is one) into a ModelConfig.
 * `where` names the source in error messages.
 */
export function parseModelConfig(config: unknown, generationConfig: unknown, where: string): ModelConfig {
  // Multimodal checkpoints keep the language model's fields under text_config.
  const raw = (config ?? {}) as Record<string, unknown>;
  const text = typeof raw.text_config === "object" && raw.text_config !== null
    ? { model_type: raw.model_type, ...raw.text_config as Record<string, unknown> }
    : raw;
  const parsed = HfConfig.safeParse(text);
  if (!parsed.success) {
    const problems = parsed.error.issues.map((i) => `${i.path.join(".") || "(root)"}: ${i.message}`).join("; ");
    throw new ModelLoadError(where, `${where} is not a usable decoder config (${problems})`);
  }
  const c = parsed.data;
  const generation = HfGenerationConfig.safeParse(generationConfig ?? {});
  const g = generation.success ? generation.data : {};
  const headDim = c.head_dim ?? c.hidden_size / c.num_attention_heads;
  if (!Number.isInteger(headDim)) {
    throw new ModelLoadError(
      where,
      `${where} has no head_dim and hidden_size is not a multiple of num_attention_heads`,
    );
  }
  return {
    modelType: c.model_type,
    hiddenSize: c.hidden_size,
    numHiddenLayers: c.num_hidden_layers,
    numAttentionHeads: c.num_attention_heads,
    numKeyValueHeads: c.num_key_value_heads ?? c.num_attention_heads,
    headDim,
    vocabSize: c.vocab_size,
    maxPositionEmbeddings: c.max_position_embeddings,
    eosTokenIds: [...new Set([...idList(c.eos_token_id), ...idList(g.eos_token_id)])],
    bosTokenId: idList(c.bos_token_id ?? g.bos_token_id)[0] ?? null,
    tieWordEmbeddings: c.tie_word_embeddings ?? false,
    raw,
  };
}
