/**
 * A request's life in the engine: its tokens, its sampling parameters and stop rule, where its KV lives, and the
 * events it has produced.
 */
import type { SequenceConstraint } from "./constraint.ts";
import { EventQueue } from "./event-queue.ts";
import { SamplingParams } from "./sampling-params.ts";
import { SequenceSampler } from "./sampler.ts";

export type FinishReason = "stop" | "length" | "abort";

/** A prompt token's log-probability under the model (raw log-softmax), its rank, and the top alternatives. */
export interface PromptLogprob {
  tokenId: number;
  logprob: number;
  /** 1 for the most likely token. */
  rank: number;
  topLogprobs: { tokenId: number; logprob: number }[];
}

/**
 * Teacher scoring (vLLM's prompt_token_id_logprobs): a rows x columns matrix, row-major, whose row i holds the
 * log-probabilities of the row's given token ids at prompt position `start + i + 1` (-Infinity for a -1 pad).
 */
export interface PromptTokenScores {
  start: number;
  rows: number;
  columns: number;
  /** The ids scored, row by row (each row padded with -1 to `columns`). */
  ids: Int32Array;
  values: Float32Array;
}

/** One generated token, as the engine reports it. */
export interface TokenEvent {
  /** Index of this token in the generation (0-based). */
  index: number;
  tokenId: number;
  /** Log-probability of tokenId under the distribution chosen by logprobs_mode. */
  logprob: number;
  /** The most likely tokens of that distribution, when asked for. */
  topLogprobs?: { tokenId: number; logprob: number }[];
  /** With return_sampling_mask: the ids the token was drawn from, ascending (its sampling mask). */
  samplingMask?: Int32Array;
  /** Set on the last event of a sequence. */
  finishReason?: FinishReason;
  /** Version of the weights that produced this token. */
  policyVersion: number;
  /** On the first event of a request that asked for them: one per prompt token, null for the first. */
  promptLogprobs?: (PromptLogprob | null)[];
  /** On the first event of a request that asked for teacher scoring: the scores of its given ids. */
  promptTokenScores?: PromptTokenScores;
}

export type SequenceStatus = "waiting" | "running" | "finished";

/** How a sequence is set up beyond its prompt and sampling parameters. */
export interface SequenceOptions {
  /** Which of its request's n samples this is (a seeded request seeds sample i from seed and i). */
  sampleIndex?: number;
  /** The model's end-of-sequence ids: masked until min_tokens are generated, then one stops it unless ignore_eos. */
  eosTokenIds?: readonly number[];
  /** The model's context length: a sequence that fills it stops ("length"). */
  maxModelLen?: number;
}

let nextSequenceId = 0;
const API_DEFAULTS: SamplingParams = SamplingParams.parse({});

/**
 * A sequence: prompt + generated tokens, how its tokens are drawn and when it stops, scheduling state, and the
 * queue its events go to.
 */
export class Sequence {
  readonly id: number;
  readonly promptLength: number;
  /** Prompt then generated tokens. */
  readonly tokens: number[];
  status: SequenceStatus = "waiting";
  /** Row of the runner holding this sequence's KV, when running. */
  row: number | null = null;
  /** Tokens whose KV is in the row. */
  numComputed = 0;
  /** Prompt tokens whose KV came from the prefix cache at its first admission. */
  cachedPromptTokens = 0;
  /** Ids of prefix-cache blocks this sequence holds a reference on, in order. */
  blockIds: number[] = [];
  /** Times it was preempted (its KV dropped, to be recomputed). */
  preemptions = 0;
  /** Steps of it that failed (it was put back in the queue, up to a bound). */
  faults = 0;
  finishReason: FinishReason | null = null;
  readonly events = new EventQueue<TokenEvent>();
  readonly arrivedAt = performance.now();
  firstTokenAt: number | null = null;
  scheduledAt: number | null = null;
  /**
   * With prompt log-probabilities asked for (top `promptTopLogprobs` each), one entry per prompt position, filled as
   * the prompt is computed; such a sequence computes its whole prompt (no prefix-cache reuse).
   */
  readonly promptLogprobs: (PromptLogprob | null)[] | null;
  readonly promptTopLogprobs: number | null;
  /** With teacher scoring asked for (prompt_logprob_token_ids), its matrix, filled as the prompt is computed. */
  readonly promptTokenScores: PromptTokenScores | null;
  /** Draws its tokens: its parameters, its prompt and its own random stream. */
  readonly sampler: SequenceSampler;
  /** What a structured-output request's grammar allows next (null: anything); kept across preemptions. */
  constraint: SequenceConstraint | null = null;
  readonly #eosTokenIds: readonly number[];
  readonly #maxModelLen: number;

  constructor(
    promptIds: readonly number[],
    readonly params: SamplingParams = API_DEFAULTS,
    options: SequenceOptions = {},
  ) {
    this.id = nextSequenceId++;
    this.tokens = [...promptIds];
    this.promptLength = promptIds.length;
    this.promptTopLogprobs = params.prompt_logprobs;
    this.promptLogprobs = params.prompt_logprobs === null ? null : new Array(promptIds.length).fill(null);
    this.promptTokenScores = tokenScores(params, promptIds.length);
    this.#eosTokenIds = options.eosTokenIds ?? [];
    this.#maxModelLen = options.maxModelLen ?? Infinity;
    const index = options.sampleIndex ?? 0;
    this.sampler = new SequenceSampler(params, promptIds, { eosTokenIds: this.#eosTokenIds, index });
  }

  /** Why the sequence ends with `tokenId`, its newest token (null: it goes on). */
  stopReason(tokenId: number): FinishReason | null {
    const { params } = this;
    const generated = this.numGenerated;
    if (generated >= params.min_tokens) {
      if (!params.ignore_eos && this.#eosTokenIds.includes(tokenId)) return "stop";
      if (params.stop_token_ids.includes(tokenId)) return "stop";
    }
    if (params.max_tokens !== null && generated >= params.max_tokens) return "length";
    if (this.length >= this.#maxModelLen) return "length";
    return null;
  }

  /** A copy of the prompt. */
  get promptIds(): number[] {
    return this.tokens.slice(0, this.promptLength);
  }

  /** Whether the next prefill chunk needs the logits of each of its tokens. */
  get wantsAllLogits(): boolean {
    return (this.promptLogprobs !== null || this.promptTokenScores !== null) && this.numComputed < this.promptLength - 1;
  }

  /**
   * How many leading tokens may come from the prefix cache: cached positions have no logits, so none before the
   * first position whose logits the prompt's scoring needs, and never the last token (the step must sample).
   */
  get reusableTokens(): number {
    return Math.min(this.logitsFrom ?? Infinity, this.length - 1);
  }

  /** The first prompt position whose logits the prompt's scoring needs (null: none). */
  get logitsFrom(): number | null {
    if (this.promptLogprobs !== null) return 0;
    if (this.promptTokenScores !== null) return this.promptTokenScores.start;
    return null;
  }

  get length(): number {
    return this.tokens.length;
  }

  get numGenerated(): number {
    return this.tokens.length - this.promptLength;
  }

  get outputIds(): number[] {
    return this.tokens.slice(this.promptLength);
  }

  /** Tokens still to be fed before the next sample (the whole prompt on admission, 1 while decoding). */
  get numPending(): number {
    return this.tokens.length - this.numComputed;
  }

  get isPrefilling(): boolean {
    return this.numPending > 1;
  }
}

/** The empty matrix of a request's teacher scoring (null: not asked for); its rows must match the prompt. */
function tokenScores(params: SamplingParams, promptLength: number): PromptTokenScores | null {
  const given = params.prompt_logprob_token_ids;
  if (given === null) return null;
  const start = params.prompt_logprob_start;
  const rows = Math.max(promptLength - 1 - start, 0);
  if (given.length !== rows) {
    throw new RangeError(`prompt_logprob_token_ids has ${given.length} rows; the prompt has ${rows} positions from prompt_logprob_start`);
  }
  const columns = given.reduce((most, row) => Math.max(most, row.length), 0);
  const ids = new Int32Array(rows * columns).fill(-1);
  given.forEach((row, r) => ids.set(row, r * columns));
  return { start, rows, columns, ids, values: new Float32Array(rows * columns).fill(-Infinity) };
}
