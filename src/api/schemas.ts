/**
 * Request and response bodies of the HTTP API, field names exactly as vLLM's OpenAI server uses them.
 * Requests accept and ignore unknown fields; `model` is optional everywhere (one model is served).
 */
import { z } from "zod";
import { TokenIds } from "../chat/messages.ts";
import { ChatPromptFields } from "../chat/prompt.ts";

/** The optional `model` field every request may carry. */
export const ModelField = { model: z.string().nullish() };

/** POST /tokenize with a text prompt. */
export const TokenizePromptRequest = z.object({
  ...ModelField,
  prompt: z.string(),
  add_special_tokens: z.boolean().default(true),
  return_token_strs: z.boolean().nullish(),
});
export type TokenizePromptRequest = z.infer<typeof TokenizePromptRequest>;

/** POST /tokenize with chat messages: the same prompt fields as chat completions. */
export const TokenizeChatRequest = z.object({
  ...ModelField,
  ...ChatPromptFields,
  return_token_strs: z.boolean().nullish(),
});
export type TokenizeChatRequest = z.infer<typeof TokenizeChatRequest>;

/** The answer of POST /tokenize. */
export const TokenizeResponse = z.object({
  count: z.int(),
  max_model_len: z.int(),
  tokens: TokenIds,
  token_strs: z.array(z.string()).nullable(),
});
export type TokenizeResponse = z.infer<typeof TokenizeResponse>;

/** POST /detokenize. */
export const DetokenizeRequest = z.object({ ...ModelField, tokens: TokenIds });
export type DetokenizeRequest = z.infer<typeof DetokenizeRequest>;

/** The answer of POST /detokenize. */
export const DetokenizeResponse = z.object({ prompt: z.string() });
export type DetokenizeResponse = z.infer<typeof DetokenizeResponse>;

/** One entry of GET /v1/models. */
export const ModelCard = z.object({
  id: z.string(),
  object: z.literal("model"),
  created: z.int(),
  owned_by: z.string(),
  root: z.string(),
  parent: z.string().nullable(),
  max_model_len: z.int(),
  permission: z.array(z.unknown()),
});
export type ModelCard = z.infer<typeof ModelCard>;

/** The answer of GET /v1/models. */
export const ModelList = z.object({ object: z.literal("list"), data: z.array(ModelCard) });
export type ModelList = z.infer<typeof ModelList>;

/** The answer of GET /health once the model is loaded. */
export const HealthResponse = z.object({ status: z.literal("ok") });
export type HealthResponse = z.infer<typeof HealthResponse>;
