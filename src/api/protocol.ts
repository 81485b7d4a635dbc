/**
 * What the generating routes answer: chat completions (and their stream chunks), completions and their chunks,
 * with field names and nesting exactly as vLLM's OpenAI server writes them, plus the RL fields (token ids,
 * NeMo RL's message fields, policy_version); and how a generated token becomes a logprobs entry.
 */
import { z } from "zod";
import type { TokenTexts } from "../chat/detokenize.ts";
import { TokenIds } from "../chat/messages.ts";
import type { PromptLogprob, TokenEvent } from "../engine/sequence.ts";
import { floorLogprob } from "../../kernels/sampling.ts";

// Log-probabilities as reported (floored at vLLM's -9999, never NaN or -Infinity): the sampler's own floor.
export { floorLogprob };

const nullableInts = TokenIds.nullable();

/** A token and its log-probability (chat `logprobs.content[j].top_logprobs[k]`). */
export const ChatLogprob = z.object({ token: z.string(), logprob: z.number(), bytes: z.array(z.int()).nullable() });
export type ChatLogprob = z.infer<typeof ChatLogprob>;

/** One generated token's entry in chat `logprobs.content`. */
export const ChatLogprobContent = ChatLogprob.extend({ top_logprobs: z.array(ChatLogprob) });
export type ChatLogprobContent = z.infer<typeof ChatLogprobContent>;

export const ChatLogprobs = z.object({ content: z.array(ChatLogprobContent).nullable() });
export type ChatLogprobs = z.infer<typeof ChatLogprobs>;

/** A tool call the model made. */
export const ToolCallOut = z.object({
  id: z.string(),
  type: z.literal("function"),
  function: z.object({ name: z.string(), arguments: z.string() }),
});
export type ToolCallOut = z.infer<typeof ToolCallOut>;

/** The RL fields of NeMo RL, on a message (or a streamed delta) whenever logprobs are asked for. */
export const TrainingFields = {
  prompt_token_ids: TokenIds.optional(),
  generation_token_ids: TokenIds.optional(),
  generation_log_probs: z.array(z.number()).optional(),
};

export const AssistantMessage = z.object({
  role: z.literal("assistant"),
  content: z.string().nullable(),
  refusal: z.null(),
  annotations: z.null(),
  audio: z.null(),
  function_call: z.null(),
  tool_calls: z.array(ToolCallOut).optional(),
  reasoning_content: z.string().nullable(),
  reasoning: z.string().nullable(),
  ...TrainingFields,
});
export type AssistantMessage = z.infer<typeof AssistantMessage>;

export const FinishReason = z.enum(["stop", "length", "tool_calls", "abort"]);
export type FinishReason = z.infer<typeof FinishReason>;
/** vLLM's stop_reason: the stop string or stop token id that ended generation; null for EOS or length. */
export const StopReason = z.union([z.string(), z.int()]).nullable();
export type StopReason = z.infer<typeof StopReason>;

export const Usage = z.object({
  prompt_tokens: z.int(),
  total_tokens: z.int(),
  completion_tokens: z.int(),
  prompt_tokens_details: z.null(),
});
export type Usage = z.infer<typeof Usage>;

/** The RL fields every response and chunk carries. */
const PolicyVersion = { policy_version: z.int(), weight_version: z.string().nullable() };

/** vLLM's sampling_mask: per generated token, the ids it was drawn from (return_sampling_mask). */
export const SamplingMasks = z.array(z.array(z.int()));

export const ChatChoice = z.object({
  index: z.int(),
  message: AssistantMessage,
  logprobs: ChatLogprobs.nullable(),
  finish_reason: FinishReason,
  stop_reason: StopReason,
  token_ids: nullableInts,
  sampling_mask: SamplingMasks.optional(),
});
export type ChatChoice = z.infer<typeof ChatChoice>;

/** One prompt position of vLLM's prompt_logprobs: the prompt token and the top alternatives, by token id. */
export const PromptLogprobsEntry = z.record(
  z.string(),
  z.object({ logprob: z.number(), rank: z.int().nullable(), decoded_token: z.string() }),
).nullable();
export const PromptLogprobs = z.array(PromptLogprobsEntry).nullable();
export type PromptLogprobs = z.infer<typeof PromptLogprobs>;

export const ChatCompletion = z.object({
  id: z.string(),
  object: z.literal("chat.completion"),
  created: z.int(),
  model: z.string(),
  choices: z.array(ChatChoice),
  service_tier: z.null(),
  system_fingerprint: z.null(),
  usage: Usage,
  prompt_logprobs: PromptLogprobs,
  prompt_token_ids: nullableInts,
  kv_transfer_params: z.null(),
  ...PolicyVersion,
});
export type ChatCompletion = z.infer<typeof ChatCompletion>;

/** A tool call as it streams: the first delta of a call carries its id, type and name. */
export const ToolCallDeltaOut = z.object({
  index: z.int(),
  id: z.string().optional(),
  type: z.literal("function").optional(),
  function: z.object({ name: z.string().optional(), arguments: z.string().optional() }),
});
export type ToolCallDeltaOut = z.infer<typeof ToolCallDeltaOut>;

export const ChatDelta = z.object({
  role: z.literal("assistant").optional(),
  content: z.string().optional(),
  reasoning_content: z.string().optional(),
  reasoning: z.string().optional(),
  tool_calls: z.array(ToolCallDeltaOut).optional(),
  ...TrainingFields,
});
export type ChatDelta = z.infer<typeof ChatDelta>;

export const ChatChunkChoice = z.object({
  index: z.int(),
  delta: ChatDelta,
  logprobs: ChatLogprobs.nullable(),
  finish_reason: FinishReason.nullable(),
  stop_reason: StopReason,
  token_ids: nullableInts.optional(),
  sampling_mask: SamplingMasks.optional(),
});
export type ChatChunkChoice = z.infer<typeof ChatChunkChoice>;

export const ChatCompletionChunk = z.object({
  id: z.string(),
  object: z.literal("chat.completion.chunk"),
  created: z.int(),
  model: z.string(),
  choices: z.array(ChatChunkChoice),
  usage: Usage.nullable().optional(),
  prompt_token_ids: nullableInts.optional(),
  ...PolicyVersion,
});
export type ChatCompletionChunk = z.infer<typeof ChatCompletionChunk>;

/** The legacy logprobs of completions. */
export const CompletionLogprobs = z.object({
  text_offset: z.array(z.int()),
  token_logprobs: z.array(z.number().nullable()),
  tokens: z.array(z.string()),
  top_logprobs: z.array(z.record(z.string(), z.number()).nullable()),
});
export type CompletionLogprobs = z.infer<typeof CompletionLogprobs>;

export const CompletionChoice = z.object({
  index: z.int(),
  text: z.string(),
  logprobs: CompletionLogprobs.nullable(),
  finish_reason: FinishReason.nullable(),
  stop_reason: StopReason,
  prompt_logprobs: PromptLogprobs.optional(),
  prompt_token_ids: nullableInts.optional(),
  token_ids: nullableInts.optional(),
  sampling_mask: SamplingMasks.optional(),
});
export type CompletionChoice = z.infer<typeof CompletionChoice>;

export const Completion = z.object({
  id: z.string(),
  object: z.literal("text_completion"),
  created: z.int(),
  model: z.string(),
  choices: z.array(CompletionChoice),
  service_tier: z.null().optional(),
  system_fingerprint: z.null(),
  usage: Usage.nullable(),
  prompt_token_ids: nullableInts.optional(),
  kv_transfer_params: z.null().optional(),
  ...PolicyVersion,
});
export type Completion = z.infer<typeof Completion>;

/** A random id with a prefix, as vLLM makes them ("chatcmpl-" + 32 hex digits). */
export function randomId(prefix: string): string {
  return `${prefix}${crypto.randomUUID().replaceAll("-", "")}`;
}

/** Seconds since the epoch. */
export function nowSeconds(): number {
  return Math.floor(Date.now() / 1000);
}

/** Usage of a request: its prompt tokens (counted once per prompt) and all generated tokens. */
export function usageOf(promptTokens: number, completionTokens: number): Usage {
  return {
    prompt_tokens: promptTokens,
    total_tokens: promptTokens + completionTokens,
    completion_tokens: completionTokens,
    prompt_tokens_details: null,
  };
}

/** How tokens are named in logprobs: their text, or "token_id:<id>" (return_tokens_as_token_ids). */
export class TokenNames {
  constructor(readonly texts: TokenTexts, readonly asIds: boolean) {}

  name(tokenId: number): string {
    return this.asIds ? `token_id:${tokenId}` : this.texts.text(tokenId);
  }

  /** A chat logprob entry of one token. */
  entry(tokenId: number, logprob: number): ChatLogprob {
    return { token: this.name(tokenId), logprob: floorLogprob(logprob), bytes: this.texts.bytes(tokenId) };
  }

  /** The chat `logprobs.content` entry of a generated token, with at most `top` alternatives. */
  content(token: TokenEvent, top: number): ChatLogprobContent {
    const alternatives = (token.topLogprobs ?? []).slice(0, top).map((t) => this.entry(t.tokenId, t.logprob));
    return { ...this.entry(token.tokenId, token.logprob), top_logprobs: alternatives };
  }
}

/** vLLM's prompt_logprobs of the engine's entries (null before the first token). */
export function promptLogprobsOf(texts: TokenTexts, entries: readonly (PromptLogprob | null)[] | undefined): PromptLogprobs {
  if (!entries) return null;
  return entries.map((entry) => {
    if (!entry) return null;
    const out: NonNullable<z.infer<typeof PromptLogprobsEntry>> = {};
    entry.topLogprobs.forEach((t, k) => {
      out[t.tokenId] = { logprob: floorLogprob(t.logprob), rank: k + 1, decoded_token: texts.text(t.tokenId) };
    });
    out[entry.tokenId] = { logprob: floorLogprob(entry.logprob), rank: entry.rank, decoded_token: texts.text(entry.tokenId) };
    return out;
  });
}

/** Completions' legacy logprobs of an echoed prompt (its first token has none), with `top` alternatives each. */
export function legacyPromptLogprobs(
  names: TokenNames,
  promptIds: readonly number[],
  entries: readonly (PromptLogprob | null)[],
  top: number,
): CompletionLogprobs {
  const out: CompletionLogprobs = { text_offset: [], token_logprobs: [], tokens: [], top_logprobs: [] };
  let offset = 0;
  promptIds.forEach((id, i) => {
    const entry = entries[i];
    const name = names.name(id);
    out.text_offset.push(offset);
    out.tokens.push(name);
    out.token_logprobs.push(entry ? floorLogprob(entry.logprob) : null);
    if (!entry) out.top_logprobs.push(null);
    else {
      const step: Record<string, number> = {};
      for (const t of entry.topLogprobs.slice(0, top)) step[names.name(t.tokenId)] = floorLogprob(t.logprob);
      step[name] = floorLogprob(entry.logprob);
      out.top_logprobs.push(step);
    }
    offset += names.texts.text(id).length;
  });
  return out;
}

/** Completions' legacy logprobs of generated tokens whose text starts at `offset` characters into the choice's text. */
export function legacyLogprobs(
  names: TokenNames,
  tokens: readonly TokenEvent[],
  top: number,
  offset: number,
): CompletionLogprobs {
  const out: CompletionLogprobs = { text_offset: [], token_logprobs: [], tokens: [], top_logprobs: [] };
  for (const token of tokens) {
    const name = names.name(token.tokenId);
    out.text_offset.push(offset);
    out.tokens.push(name);
    out.token_logprobs.push(floorLogprob(token.logprob));
    // As vLLM: the sampled token is listed among its step's top log-probabilities.
    const step: Record<string, number> = {};
    for (const t of (token.topLogprobs ?? []).slice(0, top)) step[names.name(t.tokenId)] = floorLogprob(t.logprob);
    step[name] = floorLogprob(token.logprob);
    out.top_logprobs.push(step);
    offset += names.texts.text(token.tokenId).length;
  }
  return out;
}

/** Each token's sampling mask as vLLM writes it: the ids the token was drawn from, ascending. */
export function samplingMasksOf(tokens: readonly TokenEvent[]): number[][] {
  return tokens.map((t) => (t.samplingMask ? Array.from(t.samplingMask) : []));
}
