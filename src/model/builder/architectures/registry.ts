/** The architectures the builder writes: adding one is its file beside this one and a line in ARCHITECTURES. */
import { type Architecture, decoderLacks } from "./architecture.ts";
import { llama } from "./llama.ts";
import { mistral } from "./mistral.ts";
import { qwen3 } from "./qwen3.ts";

/** Every architecture the builder writes, in the order messages list them. */
export const ARCHITECTURES: readonly Architecture[] = [llama, qwen3, mistral];

/** The architecture of a config.json model_type, or undefined when the builder does not write it. */
export function architectureFor(modelType: unknown): Architecture | undefined {
  return ARCHITECTURES.find((a) => a.modelType === modelType);
}

/** The reasons the builder's decoder cannot reproduce a config.json's model, or none. */
export function unsupportedFeatures(config: Record<string, unknown>): string[] {
  const reasons: string[] = [];
  const type = String(config.model_type);
  const architecture = architectureFor(type);
  if (!architecture) {
    reasons.push(`model_type ${type} (the engine layout covers ${ARCHITECTURES.map((a) => a.modelType).join(", ")})`);
  }
  const scaling = config.rope_scaling as { rope_type?: string; type?: string } | null | undefined;
  const scalingType = scaling?.rope_type ?? scaling?.type;
  if (scaling && !(architecture?.ropeScaling ?? ["default"]).includes(String(scalingType))) {
    reasons.push(`rope_scaling ${scalingType}`);
  }
  reasons.push(...decoderLacks(config), ...(architecture?.refuses?.(config) ?? []));
  return reasons;
}
