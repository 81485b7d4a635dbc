/** Qwen3: Llama's decoder with RMSNorm over each head of q and k before rotary. */
import type { Architecture } from "./architecture.ts";

export const qwen3: Architecture = {
  modelType: "qwen3",
  modelClass: "Qwen3ForCausalLM",
  qkNorm: true,
  ropeScaling: ["default"],
  tiedByDefault: true,
  configExtras: {},
};
