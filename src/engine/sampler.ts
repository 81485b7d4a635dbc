/**
 * The engine's sampler: one row of logits -> the next token, its log-probability and the top alternatives.
 * Order as vLLM's: logit_bias, min_tokens, penalties (repetition, frequency, presence), then temperature, min-p,
 * top-k, top-p, then one draw from the sequence's own stream. The math lives in kernels/sampling.ts.
 */
import {
  copyRow,
  floorLogprob,
  keptIds,
  keptLogprob,
  maskForbidden,
  pickKept,
  rowArgmax,
  rowLogSumExp,
  SamplingScratch,
  selectTop,
  truncate,
  untruncated,
} from "../../kernels/sampling.ts";
import { type LogitEdit, logitEdits, type RowSampling, type SampledToken } from "../../kernels/row-sampling.ts";
import { type Rng, sequenceRng } from "./rng.ts";
import { isGreedy, MAX_TOP_LOGPROBS, type SamplingParams } from "./sampling-params.ts";

// What a row's sampling takes and gives, shared with the GPU sampler; the engine imports them from here.
export type { RowSampling, SampledToken, TokenLogprob } from "../../kernels/row-sampling.ts";

/** What the sampler needs to know about a sequence to sample its next token. */
export interface SamplerState {
  params: SamplingParams;
  /** Tokens generated so far (frequency/presence penalties, min_tokens, repetition penalty). */
  outputIds: readonly number[];
  /** Prompt tokens (repetition penalty). */
  promptIds: readonly number[];
  /** The sequence's own stream; the sampler draws exactly one number from it per token. */
  rng: Rng;
  /** The model's end-of-sequence ids, masked until min_tokens are generated. */
  eosTokenIds?: readonly number[];
}

/** Samples tokens from rows of logits, reusing one set of buffers across calls. */
export class Sampler {
  #scratch: SamplingScratch | null = null;
  readonly #topIds = new Int32Array(MAX_TOP_LOGPROBS);
  readonly #topVals = new Float32Array(MAX_TOP_LOGPROBS);
  #kept = new Int32Array(0);

  /** Picks the next token of a sequence from its row of logits (left untouched), drawing from its stream. */
  sample(logits: Float32Array, state: SamplerState): SampledToken {
    return this.sampleRow(logits, rowSampling(state, logits.length));
  }

  /**
   * Picks a token from a row of logits (left untouched) as `row` says: its processors' edits, cuts and the uniform
   * number already drawn from its sequence's stream (GpuSampler's twin, on the CPU).
   */
  sampleRow(logits: Float32Array, row: RowSampling): SampledToken {
    const n = logits.length;
    if (n === 0) throw new RangeError("cannot sample from an empty row of logits");
    const s = this.#scratchFor(n);
    s.argmax = copyRow(logits, s);
    const edited = row.edits !== undefined && row.edits.length > 0;
    // The allowed mask comes first: bias and penalties never bring a forbidden token back.
    if (row.allowed) maskForbidden(s.logits, n, row.allowed);
    if (edited) applyEdits(s.logits, row.edits!);
    if (row.allowed || edited) s.argmax = rowArgmax(s, n);
    s.max = s.logits[s.argmax];
    let tokenId: number;
    let logZ: number;
    if (s.max === -Infinity) {
      // Everything is masked: nothing is likelier than anything else; answer the lowest id, at the floor.
      untruncated(s, n, 1);
      tokenId = s.argmax;
      logZ = Infinity;
    } else if (row.temperature === 0) {
      // vLLM's greedy log-probs: the processed logits at temperature 1, nothing truncated.
      untruncated(s, n, 1);
      tokenId = s.argmax;
      logZ = rowLogSumExp(s, n, s.max);
    } else {
      const z = truncate(s, n, row.temperature, row.topK, row.topP, row.minP);
      tokenId = pickKept(s, n, row.uniform * z);
      logZ = Math.log(z);
    }
    // Read before the raw log-probabilities reuse the scratch row.
    const kept = row.keepSet ? this.#keptSet(s, n, tokenId, row.temperature === 0 || logZ === Infinity) : undefined;
    if (row.logprobsMode === "raw") return withKept(this.#rawLogprobs(logits, tokenId, row.topLogprobs), kept);
    const result: SampledToken = { tokenId, logprob: keptLogprob(s, tokenId, logZ) };
    if (row.topLogprobs !== null) {
      const count = row.topLogprobs > 0 ? selectTop(s.logits, n, row.topLogprobs, this.#topIds, this.#topVals, s.argmax) : 0;
      result.topLogprobs = [];
      for (let j = 0; j < count; j++) {
        const id = this.#topIds[j];
        result.topLogprobs.push({ tokenId: id, logprob: keptLogprob(s, id, logZ) });
      }
    }
    return withKept(result, kept);
  }

  // The ids the token was drawn from; greedy (or nothing left to draw from): the token alone.
  #keptSet(s: SamplingScratch, n: number, tokenId: number, alone: boolean): Int32Array {
    if (alone) return Int32Array.of(tokenId);
    if (this.#kept.length < n) this.#kept = new Int32Array(n);
    return this.#kept.slice(0, keptIds(s, n, this.#kept));
  }

  // The model's own log-softmax, before bias, penalties, temperature or truncation.
  #rawLogprobs(logits: Float32Array, tokenId: number, top: number | null): SampledToken {
    const n = logits.length;
    const s = this.#scratchFor(n);
    const raw = s.logits;
    const best = copyRow(logits, s);
    const max = raw[best];
    const logZ = rowLogSumExp(s, n, max);
    const result: SampledToken = { tokenId, logprob: floorLogprob(raw[tokenId] - max - logZ) };
    if (top !== null) {
      const count = top > 0 ? selectTop(raw, n, top, this.#topIds, this.#topVals, best) : 0;
      result.topLogprobs = [];
      for (let j = 0; j < count; j++) {
        result.topLogprobs.push({ tokenId: this.#topIds[j], logprob: floorLogprob(this.#topVals[j] - max - logZ) });
      }
    }
    return result;
  }

  #scratchFor(n: number): SamplingScratch {
    if (this.#scratch === null || this.#scratch.capacity < n) this.#scratch = new SamplingScratch(n);
    return this.#scratch;
  }
}

function withKept(token: SampledToken, kept: Int32Array | undefined): SampledToken {
  if (kept) token.kept = kept;
  return token;
}

// The logits processors' edits, in vLLM's order per token (bias, the min_tokens mask, repetition penalty, then
// frequency and presence), stored to float32 after each as the GPU twin does.
function applyEdits(logits: Float32Array, edits: readonly LogitEdit[]): void {
  for (const e of edits) {
    const id = e.tokenId;
    if (e.bias !== 0) logits[id] += e.bias;
    if (e.mask) logits[id] = -Infinity;
    if (e.repetition !== 1) logits[id] = logits[id] > 0 ? logits[id] / e.repetition : logits[id] * e.repetition;
    if (e.subtract !== 0) logits[id] -= e.subtract;
  }
}

/**
 * How a sequence's next token is drawn, resolved for that token: one number drawn from its stream now (greedy
 * included, so that the k-th token always uses the k-th number), its processors as edits, its cuts.
 */
export function rowSampling(state: SamplerState, vocabSize: number): RowSampling {
  const { params, outputIds } = state;
  const uniform = state.rng.nextUniform();
  const masked = outputIds.length < params.min_tokens;
  const edits = logitEdits({
    logitBias: params.logit_bias,
    maskedIds: masked ? [...state.eosTokenIds ?? [], ...params.stop_token_ids] : [],
    repetitionPenalty: params.repetition_penalty,
    promptIds: state.promptIds,
    outputIds,
    frequencyPenalty: params.frequency_penalty,
    presencePenalty: params.presence_penalty,
  }, vocabSize);
  const greedy = isGreedy(params);
  return {
    temperature: greedy ? 0 : params.temperature,
    topK: greedy ? 0 : params.top_k,
    topP: greedy ? 1 : params.top_p,
    minP: greedy ? 0 : params.min_p,
    uniform,
    topLogprobs: params.logprobs,
    logprobsMode: params.logprobs_mode,
    edits,
    keepSet: params.return_sampling_mask,
  };
}

const shared = new Sampler();

/** Samples one token with a sampler shared by the whole process (single-threaded, so its buffers are safe to share). */
export function sampleToken(logits: Float32Array, state: SamplerState): SampledToken {
  return shared.sample(logits, state);
}

/** How a sequence's sampler is set up beyond its request's parameters. */
export interface SequenceSamplerOptions {
  /** The model's end-of-sequence ids, masked until min_tokens are generated. */
  eosTokenIds?: readonly number[];
  /** Which of the request's n samples this sequence is (a seeded request seeds sample i with seed + i). */
  index?: number;
}

/** The sampler of one sequence: its request's parameters, its prompt and its own random stream. */
export class SequenceSampler {
  readonly rng: Rng;
  readonly #eosTokenIds: readonly number[];

  constructor(readonly params: SamplingParams, readonly promptIds: readonly number[], options: SequenceSamplerOptions = {}) {
    this.rng = sequenceRng(params.seed, options.index ?? 0);
    this.#eosTokenIds = options.eosTokenIds ?? [];
  }

  /** The sequence's next token, given its row of logits and the tokens it generated so far. */
  sample(logits: Float32Array, outputIds: readonly number[]): SampledToken {
    const { params, promptIds, rng } = this;
    return shared.sample(logits, { params, promptIds, outputIds, rng, eosTokenIds: this.#eosTokenIds });
  }

  /** How the sequence's next token is drawn (one number drawn from its stream now); see rowSampling. */
  next(outputIds: readonly number[], vocabSize: number): RowSampling {
    const { params, promptIds, rng } = this;
    return rowSampling({ params, promptIds, outputIds, rng, eosTokenIds: this.#eosTokenIds }, vocabSize);
  }
}
