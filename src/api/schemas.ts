/**
 * Request and response bodies of the HTTP API, field names exactly as vLLM's OpenAI server uses them.
 * Requests accept and ignore unknown fields; `model` is optional everywhere (one model is served).
 */
import { z } from "zod";
import { roleField, TokenIds } from "../chat/messages.ts";
import { ChatPromptFields } from "../chat/prompt.ts";
import { describeIssue } from "./issues.ts";
import { StructuredOutputFields } from "./structured-outputs.ts";

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

/**
 * A union's error as one sentence: zod's own says only "Invalid input", and its branches say what each form wanted,
 * which for most unions is clearer said at once ("stop must be a string or an array of strings").
 */
function unionError(field: string, forms: string) {
  return (issue: { input?: unknown }) => {
    if (issue.input === undefined) return `${field} is required: ${forms}`;
    if (Array.isArray(issue.input) && issue.input.length === 0) return `${field} must not be empty: ${forms}`;
    return `${field} must be ${forms}`;
  };
}

const stopField = z.union([z.string(), z.array(z.string())], { error: unionError("stop", "a string or an array of strings") });

const nullableNumber = z.number().nullish();
const nullableInt = z.int().nullish();
const nullableBool = z.boolean().nullish();

/**
 * The sampling fields every generating route reads (range checks happen in the engine's SamplingParams, whose
 * errors name the same fields).
 */
export const SamplingRequestFields = z.object({
  n: nullableInt,
  temperature: nullableNumber,
  top_p: nullableNumber,
  top_k: nullableInt,
  min_p: nullableNumber,
  seed: nullableInt,
  min_tokens: nullableInt,
  stop_token_ids: z.array(z.int().nonnegative()).nullish(),
  ignore_eos: nullableBool,
  presence_penalty: nullableNumber,
  frequency_penalty: nullableNumber,
  repetition_penalty: nullableNumber,
  logit_bias: z.record(z.string(), z.number()).nullish(),
  logprobs_mode: z.enum(["processed", "raw", "processed_logprobs", "raw_logprobs"]).nullish(),
  // How the request is scheduled, as vLLM's: priority (lower first; not 0 needs --scheduling-policy priority) and a
  // salt that keeps the request's prefix-cache blocks apart from those of other salts.
  priority: nullableInt,
  cache_salt: z.string().min(1).nullish(),
});
export type SamplingRequestFields = z.infer<typeof SamplingRequestFields>;

/** Fields of chat and completions beyond sampling: stop strings, text options, streaming, RL token fields. */
const GenerationFields = {
  ...ModelField,
  ...SamplingRequestFields.shape,
  max_tokens: z.int().min(1).nullish(),
  stop: stopField.nullish(),
  include_stop_str_in_output: nullableBool,
  skip_special_tokens: nullableBool,
  stream: nullableBool,
  stream_options: z.object({ include_usage: nullableBool, continuous_usage_stats: nullableBool }).nullish(),
  prompt_logprobs: nullableInt,
  return_tokens_as_token_ids: nullableBool,
  return_token_ids: nullableBool,
  // Each choice's sampling_mask (vLLM's field; the request switch is SGLang's name, vLLM's is server-wide).
  return_sampling_mask: nullableBool,
  response_format: z.looseObject({ type: z.string() }).nullish(),
  ...StructuredOutputFields,
};

/** POST /v1/chat/completions. */
export const ChatCompletionRequest = z.object({
  ...GenerationFields,
  ...ChatPromptFields,
  max_completion_tokens: z.int().min(1).nullish(),
  logprobs: nullableBool,
  top_logprobs: z.int().min(0).max(20).nullish(),
  tool_choice: z.union([
    z.enum(["none", "auto", "required"]),
    z.object({ type: z.literal("function").optional(), function: z.object({ name: z.string() }) }),
  ], {
    error: unionError("tool_choice", '"none", "auto", "required" or {"type": "function", "function": {"name": "..."}}'),
  }).nullish(),
  parallel_tool_calls: nullableBool,
  response_format: z.looseObject({ type: z.string() }).nullish(),
});
export type ChatCompletionRequest = z.infer<typeof ChatCompletionRequest>;

/**
 * POST /v1/completions: a prompt is text or token ids, and a request may carry a batch of either. max_tokens 0 is
 * accepted for echo alone (scoring a prompt without generating); the route refuses it otherwise.
 */
export const CompletionRequest = z.object({
  ...GenerationFields,
  max_tokens: z.int().min(0).nullish(),
  prompt: z.union([
    z.string(),
    z.array(z.string()).min(1),
    TokenIds.min(1),
    z.array(TokenIds.min(1)).min(1),
  ], {
    error: unionError(
      "prompt",
      "a string, an array of strings, an array of token ids or an array of arrays of token ids (token ids are " +
        "integers from 0)",
    ),
  }),
  echo: nullableBool,
  logprobs: z.int().min(0).max(20).nullish(),
  suffix: z.string().nullish(),
  add_special_tokens: z.boolean().default(true),
});
export type CompletionRequest = z.infer<typeof CompletionRequest>;

/** The RL token fields an input item may carry back (an output item of an earlier response). */
const ItemTokenFields = {
  prompt_token_ids: TokenIds.nullish(),
  generation_token_ids: TokenIds.nullish(),
  generation_log_probs: z.array(z.number()).nullish(),
};
const TextPart = z.looseObject({ type: z.string(), text: z.string().optional() });
const ItemText = z.union([z.string(), z.array(TextPart)]);

/** One item of a Responses `input`; an item with a role and no type is a message. */
export const ResponseInputItem = z.preprocess(
  (item) => typeof item === "object" && item !== null && !("type" in item) && "role" in item ? { ...item, type: "message" } : item,
  z.discriminatedUnion("type", [
    z.looseObject({
      type: z.literal("message"),
      role: roleField(["user", "assistant", "system", "developer"]),
      content: ItemText,
      ...ItemTokenFields,
    }),
    z.looseObject({
      type: z.literal("function_call"),
      call_id: z.string(),
      name: z.string(),
      arguments: z.string(),
      ...ItemTokenFields,
    }),
    z.looseObject({ type: z.literal("function_call_output"), call_id: z.string(), output: ItemText }),
    z.looseObject({
      type: z.literal("reasoning"),
      summary: z.array(TextPart).default([]),
      content: z.array(TextPart).nullish(),
      ...ItemTokenFields,
    }),
  ]),
);
export type ResponseInputItem = z.infer<typeof ResponseInputItem>;

// A string or a list of items. Checked in two steps, so that a bad item's error names the item, not just `input`.
const ResponseInput = z.union([z.string(), z.array(z.unknown()).min(1)], {
  error: unionError("input", "a string or an array of input items"),
}).transform((input, ctx) => {
  if (typeof input === "string") return input;
  const items = z.array(ResponseInputItem).safeParse(input);
  if (items.success) return items.data;
  for (const issue of items.error.issues) {
    ctx.addIssue({ code: "custom", message: describeIssue(issue, ["input"]), path: issue.path });
  }
  return z.NEVER;
});

/** A Responses function tool (the flat shape: name and parameters at the top). */
export const ResponseTool = z.looseObject({
  type: z.literal("function"),
  name: z.string(),
  description: z.string().nullish(),
  parameters: z.record(z.string(), z.unknown()).nullish(),
  strict: z.boolean().nullish(),
});
export type ResponseTool = z.infer<typeof ResponseTool>;

/** POST /v1/responses. */
export const ResponsesRequest = z.object({
  ...ModelField,
  ...SamplingRequestFields.omit({ n: true }).shape,
  input: ResponseInput,
  instructions: z.string().nullish(),
  tools: z.array(ResponseTool).nullish(),
  tool_choice: z.union([
    z.enum(["none", "auto", "required"]),
    z.object({ type: z.literal("function"), name: z.string() }),
  ], { error: unionError("tool_choice", '"none", "auto", "required" or {"type": "function", "name": "..."}') }).nullish(),
  parallel_tool_calls: nullableBool,
  max_output_tokens: z.int().min(1).nullish(),
  top_logprobs: z.int().min(0).max(20).nullish(),
  include: z.array(z.string()).nullish(),
  stream: nullableBool,
  previous_response_id: z.string().nullish(),
  metadata: z.record(z.string(), z.string()).nullish(),
  text: z.looseObject({ format: z.looseObject({ type: z.string() }).nullish() }).nullish(),
  stop: stopField.nullish(),
  include_stop_str_in_output: nullableBool,
  skip_special_tokens: nullableBool,
  return_tokens_as_token_ids: nullableBool,
  chat_template_kwargs: z.record(z.string(), z.unknown()).nullish(),
  required_prefix_token_ids: TokenIds.nullish(),
});
export type ResponsesRequest = z.infer<typeof ResponsesRequest>;
