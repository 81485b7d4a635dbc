/**
 * The engine's sampler: one row of logits -> the next token, its log-probability and the top alternatives.
 * Order as vLLM's: logit_bias, min_tokens, penalties (repetition, frequency, presence), then temperature, min-p,
 * top-k, top-p, then one draw from the sequence's own stream. The math lives in kernels/sampling.ts.
 */
import {
  argmax,
  copyLogits,
  floorLogprob,
  keptLogprob,
  logSumExp,
  pickKept,
  SamplingScratch,
  selectTop,
  truncate,
  untruncated,
} from "../../kernels/sampling.ts";
import { logitEdits } from "../../kernels/gpu-sampler.ts";
import type { DeviceSampling } from "./model-runner.ts";
import { type Rng, sequenceRng } from "./rng.ts";
import { isGreedy, MAX_TOP_LOGPROBS, type SamplingParams } from "./sampling-params.ts";

/** One token and its log-probability. */
export interface TokenLogprob {
  tokenId: number;
  logprob: number;
}

/** What the sampler chose, with its log-probability (and the top ones when the request asked for them). */
export interface SampledToken extends TokenLogprob {
  topLogprobs?: TokenLogprob[];
}

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

  /** Picks the next token of a sequence from its row of logits (left untouched). */
  sample(logits: Float32Array, state: SamplerState): SampledToken {
    const n = logits.length;
    if (n === 0) throw new RangeError("cannot sample from an empty row of logits");
    const s = this.#scratchFor(n);
    const { params } = state;
    // Drawn first and always, greedy included, so that the k-th token always uses the k-th number of the stream.
    const u = state.rng.nextUniform();
    s.argmax = copyLogits(logits, s.logits);
    if (processLogits(s, n, state)) s.argmax = argmax(s.logits, n);
    s.max = s.logits[s.argmax];
    let tokenId: number;
    let logZ: number;
    if (s.max === -Infinity) {
      // Everything is masked: nothing is likelier than anything else; answer the lowest id, at the floor.
      untruncated(s, n, 1);
      tokenId = s.argmax;
      logZ = Infinity;
    } else if (isGreedy(params)) {
      // vLLM's greedy log-probs: the processed logits at temperature 1, nothing truncated.
      untruncated(s, n, 1);
      tokenId = s.argmax;
      logZ = logSumExp(s.logits, n, s.max);
    } else {
      const z = truncate(s, n, params.temperature, params.top_k, params.top_p, params.min_p);
      tokenId = pickKept(s, n, u * z);
      logZ = Math.log(z);
    }
    if (params.logprobs_mode === "raw") return this.#rawLogprobs(logits, tokenId, params.logprobs);
    const result: SampledToken = { tokenId, logprob: keptLogprob(s, tokenId, logZ) };
    if (params.logprobs !== null) {
      const count = params.logprobs > 0 ? selectTop(s.logits, n, params.logprobs, this.#topIds, this.#topVals) : 0;
      result.topLogprobs = [];
      for (let j = 0; j < count; j++) {
        const id = this.#topIds[j];
        result.topLogprobs.push({ tokenId: id, logprob: keptLogprob(s, id, logZ) });
      }
    }
    return result;
  }

  // The model's own log-softmax, before bias, penalties, temperature or truncation.
  #rawLogprobs(logits: Float32Array, tokenId: number, top: number | null): SampledToken {
    const n = logits.length;
    const raw = this.#scratchFor(n).logits;
    const max = raw[copyLogits(logits, raw)];
    const logZ = logSumExp(raw, n, max);
    const result: SampledToken = { tokenId, logprob: floorLogprob(raw[tokenId] - max - logZ) };
    if (top !== null) {
      const count = top > 0 ? selectTop(raw, n, top, this.#topIds, this.#topVals) : 0;
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

// The logits processors that can change the argmax, in vLLM's order; each touches only the ids it names.
// Returns whether any ran.
function processLogits(s: SamplingScratch, n: number, state: SamplerState): boolean {
  const { params, outputIds } = state;
  const { logits } = s;
  let changed = false;
  if (params.logit_bias.length > 0) {
    for (const [id, bias] of params.logit_bias) if (id < n) logits[id] += bias;
    changed = true;
  }
  if (outputIds.length < params.min_tokens) {
    for (const id of state.eosTokenIds ?? []) if (id < n) logits[id] = -Infinity;
    for (const id of params.stop_token_ids) if (id < n) logits[id] = -Infinity;
    changed = true;
  }
  if (params.repetition_penalty !== 1) {
    repetitionPenalty(s, n, state.promptIds, outputIds, params.repetition_penalty);
    changed = true;
  }
  if (params.frequency_penalty !== 0 || params.presence_penalty !== 0) {
    occurrencePenalties(s, n, outputIds, params.frequency_penalty, params.presence_penalty);
    changed = true;
  }
  return changed;
}

// HF/vLLM: every token seen in prompt or output, once: a positive logit is divided, a negative one multiplied.
function repetitionPenalty(s: SamplingScratch, n: number, prompt: readonly number[], output: readonly number[], penalty: number): void {
  penalizeUnseen(s, n, prompt, penalty);
  penalizeUnseen(s, n, output, penalty);
  clearCounts(s.counts, n, prompt);
  clearCounts(s.counts, n, output);
}

// One loop per function (see kernels/sampling.ts): prompts are long enough for V8 to compile these mid-loop.
function penalizeUnseen(s: SamplingScratch, n: number, ids: readonly number[], penalty: number): void {
  const { logits, counts } = s;
  for (const id of ids) {
    if (id >= n || counts[id] !== 0) continue;
    counts[id] = 1;
    logits[id] = logits[id] > 0 ? logits[id] / penalty : logits[id] * penalty;
  }
}

function clearCounts(counts: Uint32Array, n: number, ids: readonly number[]): void {
  for (const id of ids) if (id < n) counts[id] = 0;
}

function countIds(counts: Uint32Array, n: number, ids: readonly number[]): void {
  for (const id of ids) if (id < n) counts[id]++;
}

// OpenAI: minus frequency x (times generated) minus presence, for every token generated at least once.
function occurrencePenalties(s: SamplingScratch, n: number, output: readonly number[], frequency: number, presence: number): void {
  countIds(s.counts, n, output);
  penalizeCounted(s, n, output, frequency, presence);
}

function penalizeCounted(s: SamplingScratch, n: number, output: readonly number[], frequency: number, presence: number): void {
  const { logits, counts } = s;
  for (const id of output) {
    if (id >= n || counts[id] === 0) continue;
    logits[id] -= frequency * counts[id] + presence;
    counts[id] = 0;
  }
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

  /**
   * The settings that draw the sequence's next token where its logits are (GpuSampler): the same processors,
   * cuts and uniform number as `sample` uses (one number drawn from the stream here, as there).
   */
  deviceSampling(outputIds: readonly number[], vocabSize: number): DeviceSampling {
    const { params, promptIds } = this;
    const uniform = this.rng.nextUniform();
    const masked = outputIds.length < params.min_tokens;
    const edits = logitEdits({
      logitBias: params.logit_bias,
      maskedIds: masked ? [...this.#eosTokenIds, ...params.stop_token_ids] : [],
      repetitionPenalty: params.repetition_penalty,
      promptIds,
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
    };
  }
}
