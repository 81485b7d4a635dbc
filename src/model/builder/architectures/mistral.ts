/** Mistral: Llama's decoder; its sliding window is refused unless it covers the whole context (decoderLacks). */
import type { Architecture } from "./architecture.ts";

export const mistral: Architecture = {
  modelType: "mistral",
  modelClass: "MistralForCausalLM",
  qkNorm: false,
  ropeScaling: ["default"],
  tiedByDefault: true,
  configExtras: {},
};
