/**
 * What an architecture the builder writes is: the config.json model_type it answers to, the features its decoder has
 * (layers.ts reads them through DecoderArch), and what of a config.json the builder cannot reproduce. One file per
 * architecture beside this one, listed in registry.ts.
 */

/** One decoder architecture of the Llama family, as the builder writes it. */
export interface Architecture {
  /** config.json model_type. */
  modelType: string;
  /** The class config.json's `architectures` names (what transformers instantiates). */
  modelClass: string;
  /** RMSNorm over each head of q and k before rotary. */
  qkNorm: boolean;
  /** rope_scaling kinds the builder's rotary reproduces ("default" is plain RoPE). */
  ropeScaling: readonly string[];
  /** Whether lm_head shares the token embedding when config.json has no tie_word_embeddings. */
  tiedByDefault: boolean;
  /** Keys a built config.json carries beside the common ones, as transformers writes this type's. */
  configExtras: Readonly<Record<string, unknown>>;
  /** What else of a config.json this architecture's decoder lacks, beyond what none of them has (decoderLacks). */
  refuses?(config: Record<string, unknown>): string[];
}

/**
 * What no architecture's decoder has (layers.ts writes no biases, SwiGLU with SiLU only, attention over the whole
 * context): the reasons a config.json asks for one of them.
 */
export function decoderLacks(config: Record<string, unknown>): string[] {
  const reasons: string[] = [];
  if (config.attention_bias === true || config.mlp_bias === true) reasons.push("attention or MLP biases");
  if (config.hidden_act !== undefined && config.hidden_act !== "silu") reasons.push(`hidden_act ${config.hidden_act}`);
  const window = config.sliding_window as number | null | undefined;
  if (typeof window === "number" && window < Number(config.max_position_embeddings ?? Infinity)) {
    reasons.push(`sliding_window ${window}`);
  }
  return reasons;
}
