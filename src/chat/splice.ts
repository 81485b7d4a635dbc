/**
 * On-policy token-id correction. A multi-turn client sends the conversation again, and re-rendering the earlier
 * assistant turns does not always give back the tokens the model produced. The splice keeps the model's own ids
 * (M) up to the last end-of-turn they share with the history's rendering (P), and takes the template rendering
 * (T) from there on, so each turn's prompt starts with exactly the previous turn's prompt + generation.
 */
import type { ChatMessage } from "./messages.ts";

/** What could not be matched: no eos in the tokenizer, none in P, or fewer in T than in P. */
export type SpliceFailure = "tokenizer_has_no_eos" | "history_has_no_eos" | "template_has_fewer_eos";

/** The model's tokens cannot be aligned with the template rendering (the API answers 400 with the message). */
export class SpliceError extends Error {
  constructor(readonly reason: SpliceFailure, message: string) {
    super(message);
    this.name = "SpliceError";
  }
}

/** The three token lists of step 3, and the tokenizer's eos id. */
export interface SpliceInput {
  /** M: the model's own prefix (a previous prompt + generation). */
  modelPrefix: readonly number[];
  /** T: the template rendering of the whole request. */
  templateIds: readonly number[];
  /** P: the rendering of the messages up to the last assistant one, without generation prompt. */
  historyIds: readonly number[];
  eosTokenId: number | null | undefined;
}

function countOf(ids: readonly number[], id: number): number {
  let count = 0;
  for (const x of ids) if (x === id) count++;
  return count;
}

/** Step 3: M[:cut_end] + T[cut:], where cut is T's eos matching P's last one. An empty M means no splice: T. */
export function splicePrefix({ modelPrefix, templateIds, historyIds, eosTokenId }: SpliceInput): number[] {
  if (modelPrefix.length === 0) return [...templateIds];
  if (eosTokenId == null) {
    throw new SpliceError("tokenizer_has_no_eos", "cannot splice the model's prefix token ids: the tokenizer has no eos token");
  }
  const need = countOf(historyIds, eosTokenId);
  if (need === 0) {
    throw new SpliceError(
      "history_has_no_eos",
      `cannot splice the model's prefix token ids: the rendered conversation up to the last assistant message holds ` +
        `no eos token (id ${eosTokenId}) to align them on`,
    );
  }
  let seen = 0;
  const cut = templateIds.findIndex((id) => id === eosTokenId && ++seen === need);
  if (cut < 0) {
    throw new SpliceError(
      "template_has_fewer_eos",
      `cannot splice the model's prefix token ids: the rendered conversation up to the last assistant message holds ` +
        `${need} eos tokens (id ${eosTokenId}) but the whole rendered prompt holds only ${seen}`,
    );
  }
  const cutEnd = modelPrefix[modelPrefix.length - 1] === eosTokenId ? modelPrefix.length - 1 : modelPrefix.length;
  return modelPrefix.slice(0, cutEnd).concat(templateIds.slice(cut));
}

/** The message fields the splice reads. */
export type TokenCarryingMessage = Pick<ChatMessage, "role" | "prompt_token_ids" | "generation_token_ids">;

/**
 * Step 1: M is `required_prefix_token_ids` when given; else the last message carrying `prompt_token_ids`
 * contributes its `prompt_token_ids` + `generation_token_ids`; else there is none (null).
 */
export function findModelPrefix(
  messages: readonly TokenCarryingMessage[],
  requiredPrefixTokenIds?: readonly number[] | null,
): number[] | null {
  if (requiredPrefixTokenIds != null) return [...requiredPrefixTokenIds];
  for (let i = messages.length - 1; i >= 0; i--) {
    const { prompt_token_ids: prompt, generation_token_ids: generation } = messages[i];
    if (prompt != null) return [...prompt, ...(generation ?? [])];
  }
  return null;
}

/** Index of the last assistant message, or -1 when there is none. */
export function lastAssistantIndex(messages: readonly TokenCarryingMessage[]): number {
  for (let i = messages.length - 1; i >= 0; i--) if (messages[i].role === "assistant") return i;
  return -1;
}

/** Renders messages to prompt token ids with the request's tools and template variables (chat/template.ts). */
export type RenderIds<M> = (messages: readonly M[], addGenerationPrompt: boolean) => number[];
/** The same, for a renderer that answers asynchronously. */
export type RenderIdsAsync<M> = (messages: readonly M[], addGenerationPrompt: boolean) => number[] | Promise<number[]>;

/** How a request asks for the splice. */
export interface SpliceOptions {
  requiredPrefixTokenIds?: readonly number[] | null;
  /** Whether T opens an assistant turn (the request's add_generation_prompt); default true. */
  addGenerationPrompt?: boolean;
  eosTokenId: number | null | undefined;
}

/** Steps 1-3: the prompt token ids of a chat request, with the model's own tokens where it produced them. */
export function splicedPrompt<M extends TokenCarryingMessage>(messages: readonly M[], options: SpliceOptions, render: RenderIds<M>): number[];
export function splicedPrompt<M extends TokenCarryingMessage>(
  messages: readonly M[],
  options: SpliceOptions,
  render: RenderIdsAsync<M>,
): number[] | Promise<number[]>;
export function splicedPrompt<M extends TokenCarryingMessage>(
  messages: readonly M[],
  options: SpliceOptions,
  render: RenderIdsAsync<M>,
): number[] | Promise<number[]> {
  const modelPrefix = findModelPrefix(messages, options.requiredPrefixTokenIds);
  const templateIds = render(messages, options.addGenerationPrompt ?? true);
  if (modelPrefix === null || modelPrefix.length === 0) return templateIds;
  const last = lastAssistantIndex(messages);
  const historyIds = render(last < 0 ? messages : messages.slice(0, last + 1), false);
  const splice = (t: number[], p: number[]) =>
    splicePrefix({ modelPrefix, templateIds: t, historyIds: p, eosTokenId: options.eosTokenId });
  // Synchronous when the renderer is, so callers that render synchronously need not become async.
  if (templateIds instanceof Promise || historyIds instanceof Promise) {
    return Promise.all([templateIds, historyIds]).then(([t, p]) => splice(t, p));
  }
  return splice(templateIds, historyIds);
}
