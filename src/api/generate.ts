/**
 * What the generating routes share: a request's fields -> the engine's SamplingParams (context room, pinned
 * sampling), the fan-out of n samples, and each sample's tokens -> text (incremental detokenization, stop strings,
 * which abort the engine request once matched). The routes only shape what comes out.
 */
import { IncrementalDetokenizer } from "../chat/detokenize.ts";
import { StopStringMatcher } from "../chat/stop.ts";
import type { ChatTokenizer } from "../chat/template.ts";
import type { SubmittedRequest } from "../engine/engine.ts";
import type { TokenConstraint } from "../engine/constraint.ts";
import { SamplingParams, type SamplingParamsInput } from "../engine/sampling-params.ts";
import type { TokenEvent } from "../engine/sequence.ts";
import type { AppDeps, GenerationEngine } from "./deps.ts";
import { InvalidRequestError, NotReadyError } from "./errors.ts";
import { noteClampedMaxTokens, requestInContext } from "./operations.ts";
import { nameRequest } from "./request-names.ts";
import type { FinishReason, StopReason } from "./protocol.ts";
import type { SamplingRequestFields } from "./schemas.ts";

/** The engine of a ready server. */
export function engineOf(deps: AppDeps): GenerationEngine {
  if (!deps.engine || !deps.isReady()) throw new NotReadyError();
  return deps.engine;
}

/** How a route turns a request into SamplingParams. */
export interface SamplingOptions {
  promptLength: number;
  /** The request's max_tokens (or max_completion_tokens / max_output_tokens). */
  maxTokens: number | null | undefined;
  /** Without maxTokens: all the room left (chat, responses) or a number (completions: 16, as OpenAI). */
  defaultMaxTokens: "room" | number;
  /** How many top log-probabilities each token reports; null: none. */
  topLogprobs: number | null;
  /** How many top alternatives each prompt token's log-probability reports; null: no prompt log-probabilities. */
  promptLogprobs?: number | null;
  /** The field that holds the prompt, for errors ("messages", "prompt", "input"). */
  promptParam: string;
  /** Teacher scoring: the ids to score, one row per prompt position from `start` (vLLM's prompt_logprob_token_ids). */
  promptScores?: { ids: number[][]; start: number } | null;
}

const PINNED = [
  ["temperature", "requireTemperature"],
  ["top_p", "requireTopP"],
  ["top_k", "requireTopK"],
] as const;

// top_k -1 and 0 both mean "off".
function samePinned(field: string, a: number, b: number): boolean {
  return field === "top_k" ? (a <= 0 && b <= 0) || a === b : Math.abs(a - b) < 1e-9;
}

/** The engine's SamplingParams for a request whose prompt has `promptLength` tokens. */
export function samplingParams(deps: AppDeps, fields: SamplingRequestFields, options: SamplingOptions): SamplingParams {
  const { promptLength } = options;
  const room = deps.maxModelLen - promptLength;
  if (room <= 0) {
    throw new InvalidRequestError(
      `This model's maximum context length is ${deps.maxModelLen} tokens. However, your request has ${promptLength} ` +
        `input tokens, which leaves no room to generate. Please reduce the length of the input.`,
      options.promptParam,
    );
  }
  let maxTokens = options.maxTokens ?? (options.defaultMaxTokens === "room" ? room : options.defaultMaxTokens);
  if (maxTokens > room) {
    if (deps.strictMaxTokens && options.maxTokens != null) {
      throw new InvalidRequestError(
        `'max_tokens' is too large: ${maxTokens}. This model's maximum context length is ${deps.maxModelLen} tokens ` +
          `and your request has ${promptLength} input tokens (${maxTokens} > ${deps.maxModelLen} - ${promptLength}).`,
        "max_tokens",
      );
    }
    if (options.maxTokens != null) noteClampedMaxTokens(maxTokens, room);
    maxTokens = room;
  }
  const defaults = deps.samplingDefaults ?? {};
  // As vLLM: the model's max_new_tokens caps every request's max_tokens, given or not.
  if (defaults.max_tokens != null) maxTokens = Math.min(maxTokens, defaults.max_tokens);
  const input: SamplingParamsInput = {
    ...fields,
    temperature: fields.temperature ?? defaults.temperature,
    top_p: fields.top_p ?? defaults.top_p,
    top_k: fields.top_k ?? defaults.top_k,
    min_p: fields.min_p ?? defaults.min_p,
    repetition_penalty: fields.repetition_penalty ?? defaults.repetition_penalty,
    // Seed -1 is "no seed", as in vLLM.
    seed: (fields.seed == null || fields.seed === -1) && deps.nextSeed ? deps.nextSeed() : fields.seed,
    max_tokens: maxTokens,
    logprobs: options.topLogprobs,
    prompt_logprobs: options.promptLogprobs ?? null,
    prompt_logprob_token_ids: options.promptScores?.ids ?? null,
    prompt_logprob_start: options.promptScores?.start ?? 0,
    logprobs_mode: fields.logprobs_mode ?? deps.logprobsMode ?? null,
  };
  for (const [field, flag] of PINNED) {
    const pinned = deps[flag];
    if (pinned == null) continue;
    const asked = fields[field];
    if (asked != null && !samePinned(field, asked, pinned)) {
      throw new InvalidRequestError(
        `this server pins ${field} to ${pinned} (the policy's sampling); the request asks for ${field}=${asked}`,
        field,
      );
    }
    input[field] = pinned;
  }
  return SamplingParams.parse(input);
}

/** How a sample's tokens become text. */
export interface TextOptions {
  skipSpecialTokens: boolean;
  stop: readonly string[];
  includeStopString: boolean;
}

/** The request fields that decide how a sample's tokens become text. */
export interface TextFields {
  skip_special_tokens?: boolean | null;
  stop?: string | readonly string[] | null;
  include_stop_str_in_output?: boolean | null;
}

/** A request's text options, with OpenAI's and vLLM's defaults. */
export function textOptions(request: TextFields): TextOptions {
  const stop = request.stop == null ? [] : typeof request.stop === "string" ? [request.stop] : [...request.stop];
  return {
    skipSpecialTokens: request.skip_special_tokens ?? true,
    stop,
    includeStopString: request.include_stop_str_in_output ?? false,
  };
}

/** A step of one sample: a token and the text it released, or the end. */
export type SampleEvent =
  | { kind: "token"; index: number; token: TokenEvent; text: string }
  | { kind: "finish"; index: number; text: string; finishReason: FinishReason; stopReason: StopReason };

/** A finished sample: every token it generated (EOS or the stop token included), its text and why it ended. */
export interface SampleResult {
  index: number;
  tokens: TokenEvent[];
  text: string;
  finishReason: FinishReason;
  stopReason: StopReason;
}

/** Everything a generation needs besides the prompt. */
export interface GenerationSetup {
  engine: GenerationEngine;
  tokenizer: ChatTokenizer;
  params: SamplingParams;
  text: TextOptions;
  /** When it aborts (the client went away), the engine requests are aborted. */
  signal?: AbortSignal;
  /** Makes each sample's own grammar matcher (structured outputs, forced tool calls). */
  constraint?: () => TokenConstraint;
}

/** The n samples of one prompt, running in the engine. */
export class Generation {
  readonly requests: SubmittedRequest[] = [];
  readonly #setup: GenerationSetup;
  readonly #firstIndex: number;
  #aborted = false;

  /** Submits n samples of `promptIds`; their choice indices start at `firstIndex`. */
  constructor(setup: GenerationSetup, promptIds: readonly number[], firstIndex = 0) {
    this.#setup = setup;
    this.#firstIndex = firstIndex;
    try {
      for (let i = 0; i < setup.params.n; i++) {
        const constraint = setup.constraint?.() ?? null;
        try {
          this.requests.push(setup.engine.submit(promptIds, setup.params, i, constraint));
        } catch (err) {
          constraint?.dispose();
          throw err;
        }
      }
    } catch (err) {
      this.abort();
      throw err;
    }
    setup.signal?.addEventListener("abort", () => this.abort(), { once: true });
    if (setup.signal?.aborted) this.abort();
    // POST /abort_requests finds it by the HTTP request's id (the client's x-request-id, or the one it was given).
    const record = requestInContext();
    if (record) nameRequest(record.id, this);
  }

  /** Whether every sample has ended. */
  get done(): boolean {
    return this.requests.every((request) => request.finishReason !== null);
  }

  /** The engine it runs in. */
  get engine(): GenerationEngine {
    return this.#setup.engine;
  }

  /** The prompt the engine runs on. */
  get promptIds(): readonly number[] {
    return this.requests[0].promptIds;
  }

  /** Stops every sample now. */
  abort(): void {
    if (this.#aborted) return;
    this.#aborted = true;
    for (const request of this.requests) this.#setup.engine.abort(request.id);
  }

  /** Every sample's steps, interleaved as the engine produces them. */
  events(): AsyncGenerator<SampleEvent> {
    return mergeAsync(this.requests.map((request, i) => this.#sample(request, this.#firstIndex + i)));
  }

  /** Waits for every sample to finish. */
  async collect(): Promise<SampleResult[]> {
    const results = this.requests.map((_, i): SampleResult => ({
      index: this.#firstIndex + i,
      tokens: [],
      text: "",
      finishReason: "abort",
      stopReason: null,
    }));
    for await (const event of this.events()) {
      const result = results[event.index - this.#firstIndex];
      result.text += event.text;
      if (event.kind === "token") result.tokens.push(event.token);
      else Object.assign(result, { finishReason: event.finishReason, stopReason: event.stopReason });
    }
    return results;
  }

  async *#sample(request: SubmittedRequest, index: number): AsyncGenerator<SampleEvent> {
    const { engine, tokenizer, params, text } = this.#setup;
    const detokenizer = new IncrementalDetokenizer(tokenizer, { skipSpecialTokens: text.skipSpecialTokens });
    const stops = new StopStringMatcher(text.stop, { includeStopString: text.includeStopString });
    let last: TokenEvent | null = null;
    let done = false;
    try {
      for await (const token of request.events) {
        last = token;
        let piece = detokenizer.push(token.tokenId);
        // The engine ends a sample with "stop" only on an eos or stop_token_ids token; as in vLLM, that token's
        // text is left out unless asked for.
        if (token.finishReason === "stop" && !text.includeStopString) piece = "";
        // No stop string can end a sample before min_tokens (as eos and stop_token_ids cannot).
        const check = token.index + 1 >= params.min_tokens ? stops.push(piece) : { text: piece, stop: null };
        yield { kind: "token", index, token, text: check.text };
        if (check.stop !== null) {
          done = true;
          engine.abort(request.id, "stop");
          yield { kind: "finish", index, text: "", finishReason: "stop", stopReason: check.stop };
          return;
        }
        if (token.finishReason) break;
      }
      const tail = stops.push(detokenizer.flush());
      done = true;
      if (tail.stop !== null) {
        yield { kind: "finish", index, text: tail.text, finishReason: "stop", stopReason: tail.stop };
        return;
      }
      const finishReason = last?.finishReason ?? "abort";
      let stopReason: StopReason = null;
      if (finishReason === "stop" && last && last.tokenId !== tokenizer.eosTokenId && params.stop_token_ids.includes(last.tokenId)) {
        stopReason = last.tokenId;
      }
      yield { kind: "finish", index, text: tail.text + stops.flush(), finishReason, stopReason };
    } finally {
      // A consumer that stops listening (a cancelled stream) must not leave the engine generating.
      if (!done) engine.abort(request.id);
    }
  }
}

/** Interleaves async iterables, yielding each value as soon as its source has it. */
export async function* mergeAsync<T>(sources: AsyncIterable<T>[]): AsyncGenerator<T> {
  const iterators = sources.map((source) => source[Symbol.asyncIterator]());
  const pending = new Map<number, Promise<{ i: number; result: IteratorResult<T> }>>();
  const pull = (i: number) => pending.set(i, iterators[i].next().then((result) => ({ i, result })));
  iterators.forEach((_, i) => pull(i));
  try {
    while (pending.size > 0) {
      const { i, result } = await Promise.race(pending.values());
      if (result.done) pending.delete(i);
      else {
        pull(i);
        yield result.value;
      }
    }
  } finally {
    for (const i of pending.keys()) void iterators[i].return?.(undefined)?.catch(() => {});
  }
}

/**
 * The RL version fields of a response whose newest tokens came from policy version `policyVersion`: that version and
 * the trainer's name of its weights (weight_version, null when it gave none).
 */
export function versionFields(engine: GenerationEngine, policyVersion: number): { policy_version: number; weight_version: string | null } {
  return { policy_version: policyVersion, weight_version: engine.weightVersionOf?.(policyVersion) ?? null };
}

/** The policy version of a response: the newest weights that produced any of its tokens (else the current). */
export function policyVersionOf(current: number, tokens: Iterable<TokenEvent>): number {
  let version = -1;
  for (const token of tokens) version = Math.max(version, token.policyVersion);
  return version >= 0 ? version : current;
}
