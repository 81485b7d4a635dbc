/** What the HTTP app needs from the rest of the server. An interface, so later layers (the engine) can join it. */
import type { ChatTokenizer } from "../chat/template.ts";
import type { SubmittedRequest } from "../engine/engine.ts";
import type { TokenConstraint } from "../engine/constraint.ts";
import type { Grammars } from "../engine/grammar/grammars.ts";
import type { SamplingParams } from "../engine/sampling-params.ts";
import type { FinishReason } from "../engine/sequence.ts";
import type { SamplingDefaults } from "../model/generation-defaults.ts";

/** The engine as the API uses it. */
export interface GenerationEngine {
  /** `constraint`: this sample's own grammar matcher (structured outputs); the engine disposes of it. */
  submit(promptIds: readonly number[], params: SamplingParams, sampleIndex?: number, constraint?: TokenConstraint | null): SubmittedRequest;
  /** Ends a request; `reason` (default "abort") is what it finished for. */
  abort(id: number, reason?: FinishReason): void;
  readonly policyVersion: number;
  /** The trainer's name of the weights of a policy version (weight_version), or null when it gave none. */
  weightVersionOf?(policyVersion: number): string | null;
}

/** The served model, its tokenizer, readiness and the server's request limits. */
export interface AppDeps {
  /** The model name responses carry: the first served name. */
  servedModelName: string;
  /** Every name /v1/models lists and requests may send, servedModelName first (default: servedModelName alone). */
  servedModelNames?: readonly string[];
  /**
   * Where the model came from (a hub id or a directory): `root` in /v1/models, and a name requests may send too;
   * defaults to servedModelName.
   */
  modelRoot?: string;
  /** The context length: prompt plus generated tokens. */
  maxModelLen: number;
  tokenizer: ChatTokenizer;
  /** The engine that generates; routes that generate answer 503 without one. */
  engine?: GenerationEngine;
  /** Whether the model is loaded and requests can be served. */
  isReady(): boolean;
  /** When set, every route but /health requires `Authorization: Bearer <apiKey>`. */
  apiKey?: string | null;
  /** The largest request body accepted, in bytes (default 32 MiB). */
  maxBodyBytes?: number;
  /** How tool calls are parsed from generated text (`hermes`, `llama3_json`); default hermes, null: never. */
  toolCallParser?: string | null;
  /** The model's grammars for structured outputs and forced tool calls (absent: such requests are a 400). */
  grammars?: Grammars | null;
  /** How reasoning is split from generated text (`qwen3`, `deepseek_r1`); default none. */
  reasoningParser?: string | null;
  /** Which distribution log-probabilities come from when a request does not say (default processed). */
  logprobsMode?: "processed" | "raw" | null;
  /** Report logprob tokens as "token_id:<id>" for every request. */
  returnTokensAsTokenIds?: boolean;
  /** Every /inference/v1/generate choice carries sampling_mask (--enable-return-sampling-mask). */
  returnSamplingMask?: boolean;
  /** Pinned sampling: requests asking for another value are rejected, requests that omit it get this one. */
  requireTemperature?: number | null;
  requireTopP?: number | null;
  requireTopK?: number | null;
  /** Reject (400) a max_tokens that does not fit the context instead of clamping it. */
  strictMaxTokens?: boolean;
  /** Sampling for the fields a request leaves unset (the model's generation_config.json); max_tokens caps. */
  samplingDefaults?: SamplingDefaults | null;
  /** The seed of a request that gives none (--seed); absent: fresh randomness. */
  nextSeed?: (() => number) | null;
}
