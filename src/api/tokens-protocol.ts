/**
 * vLLM's tokens-in / tokens-out bodies, field for field: GenerateRequest (POST /inference/v1/generate, and what
 * POST /v1/chat/completions/render answers), GenerateResponse and its stream chunks, and DerenderChatRequest
 * (POST /v1/chat/completions/derender). Unknown fields are accepted and ignored, as everywhere in this API.
 */
import { z } from "zod";
import { TokenIds } from "../chat/messages.ts";
import { ChatLogprobs, PromptLogprobs, SamplingMasks, Usage } from "./protocol.ts";
import { ChatCompletionRequest, SamplingRequestFields } from "./schemas.ts";

const nullableInt = z.int().nullish();
const nullableBool = z.boolean().nullish();

/** vLLM's SamplingParams as JSON (vLLM's names); range checks happen in the engine's SamplingParams. */
export const VllmSamplingParams = z.object({
  // The fields every generating route reads; priority and cache_salt sit at the request's top level here, as in vLLM.
  ...SamplingRequestFields.omit({ priority: true, cache_salt: true }).shape,
  max_tokens: z.int().min(1).nullish(),
  stop: z.union([z.string(), z.array(z.string())], { error: "stop must be a string or an array of strings" }).nullish(),
  logprobs: nullableInt,
  prompt_logprobs: nullableInt,
  include_stop_str_in_output: nullableBool,
  skip_special_tokens: nullableBool,
  // gym-edge's own: this request's choices carry sampling_mask (also the request's top-level return_sampling_mask,
  // SGLang's name, and every request under --enable-return-sampling-mask, vLLM's switch).
  return_sampling_mask: nullableBool,
  // Teacher scoring: one list of ids shared by every scored position (vLLM's first form) or one list per position.
  prompt_logprob_token_ids: z.union([z.array(z.int().min(-1)), z.array(z.array(z.int().min(-1)))], {
    error: "prompt_logprob_token_ids must be an array of token ids, or an array of arrays of token ids (one per " +
      "scored position, -1 for padding)",
  }).nullish(),
  prompt_logprob_start: z.int().min(0).nullish(),
  // Read only to refuse them when they ask for something (see REFUSED_SAMPLING in tokens.ts).
  best_of: z.unknown().optional(),
  allowed_token_ids: z.unknown().optional(),
  bad_words: z.unknown().optional(),
  // Honoured: vLLM's StructuredOutputsParams (guided_decoding, its older name), checked in tokens.ts.
  structured_outputs: z.unknown().optional(),
  guided_decoding: z.unknown().optional(),
  logits_processors: z.unknown().optional(),
  logprob_token_ids: z.unknown().optional(),
  thinking_token_budget: z.unknown().optional(),
  repetition_detection: z.unknown().optional(),
  trace_decode_token_ids: z.unknown().optional(),
  truncate_prompt_tokens: z.unknown().optional(),
});
export type VllmSamplingParams = z.infer<typeof VllmSamplingParams>;

/** vLLM's StreamOptions. */
export const StreamOptions = z.object({ include_usage: nullableBool, continuous_usage_stats: nullableBool });

/** POST /inference/v1/generate: vLLM's GenerateRequest. */
export const GenerateRequest = z.object({
  request_id: z.string().nullish(),
  token_ids: TokenIds.min(1),
  sampling_params: VllmSamplingParams,
  model: z.string().nullish(),
  stream: nullableBool,
  stream_options: StreamOptions.nullish(),
  cache_salt: z.string().nullish(),
  priority: z.int().nullish(),
  return_sampling_mask: nullableBool,
  features: z.unknown().optional(),
  kv_transfer_params: z.record(z.string(), z.unknown()).nullish(),
  ec_transfer_params: z.record(z.string(), z.unknown()).nullish(),
  // What a render answer carries besides the prompt: accepted back and ignored.
  assistant_tokens_mask: z.array(z.int()).nullish(),
  token_offsets: z.unknown().optional(),
});
export type GenerateRequest = z.infer<typeof GenerateRequest>;

/** One choice of vLLM's GenerateResponse. */
export const GenerateResponseChoice = z.object({
  index: z.int(),
  logprobs: ChatLogprobs.nullable(),
  finish_reason: z.string().nullable(),
  token_ids: TokenIds.nullable(),
  routed_experts: z.string().nullable(),
  /** Per generated token, the ids it was drawn from; null unless asked for (return_sampling_mask). */
  sampling_mask: SamplingMasks.nullable(),
});
export type GenerateResponseChoice = z.infer<typeof GenerateResponseChoice>;

/** The answer of POST /inference/v1/generate (not streamed). */
export const GenerateResponse = z.object({
  request_id: z.string(),
  model: z.string().nullable(),
  created: z.int().nullable(),
  choices: z.array(GenerateResponseChoice),
  usage: Usage.nullable(),
  prompt_logprobs: PromptLogprobs,
  /** Teacher scoring's [rows, K] float32 matrix as a base64 .npy file; null unless prompt_logprob_token_ids was sent. */
  prompt_token_id_logprobs: z.string().nullable(),
  kv_transfer_params: z.record(z.string(), z.unknown()).nullable(),
  policy_version: z.int(),
  weight_version: z.string().nullable(),
});
export type GenerateResponse = z.infer<typeof GenerateResponse>;

/** One chunk of a streamed POST /inference/v1/generate. */
export const GenerateStreamResponse = z.object({
  request_id: z.string(),
  choices: z.array(GenerateResponseChoice),
  usage: Usage.nullable(),
  policy_version: z.int(),
  weight_version: z.string().nullable(),
});
export type GenerateStreamResponse = z.infer<typeof GenerateStreamResponse>;

/** A GenerateResponse as a derender request carries it back: only the choices' ids are needed. */
const GenerateResponseIn = z.object({
  request_id: z.string().nullish(),
  model: z.string().nullish(),
  created: z.int().nullish(),
  choices: z.array(z.object({
    index: z.int().min(0),
    logprobs: ChatLogprobs.nullish(),
    finish_reason: z.string().nullish(),
    token_ids: TokenIds.nullish(),
  })),
  prompt_logprobs: z.unknown().optional(),
});

/** POST /v1/chat/completions/derender: vLLM's DerenderChatRequest (the non-streaming form). */
export const DerenderChatRequest = z.object({
  stream: nullableBool,
  model: z.string().nullish(),
  generate_response: GenerateResponseIn,
  prompt_tokens: z.int().min(0).nullish(),
  chat_request: ChatCompletionRequest.nullish(),
});
export type DerenderChatRequest = z.infer<typeof DerenderChatRequest>;
