/** Llama (and SmolLM, which is a Llama): pre-norm decoder, grouped-query attention, rotary, SwiGLU. */
import type { Architecture } from "./architecture.ts";

export const llama: Architecture = {
  modelType: "llama",
  modelClass: "LlamaForCausalLM",
  qkNorm: false,
  ropeScaling: ["default"],
  tiedByDefault: true,
  configExtras: { mlp_bias: false, pretraining_tp: 1 },
};
