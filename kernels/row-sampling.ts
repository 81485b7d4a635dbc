/**
 * How one row of logits is sampled, the same for the CPU sampler (src/engine/sampler.ts) and the GPU one
 * (gpu-sampler.ts): the logits processors folded into one edit per token, the cuts, the uniform number already
 * drawn; and what sampling answers.
 */

/** One token's edit by the logits processors; bias, mask, repetition, subtract apply in that order. */
export interface LogitEdit {
  tokenId: number;
  /** Added first (logit_bias). */
  bias: number;
  /** Then set to -inf (min_tokens masks EOS and stop ids). */
  mask: boolean;
  /** Then divided (positive logit) or multiplied (negative) by this, when not 1 (repetition penalty). */
  repetition: number;
  /** Then subtracted (frequency x count + presence). */
  subtract: number;
}

/** The logits processors of one row, as vLLM applies them. */
export interface LogitProcessors {
  logitBias?: ReadonlyArray<readonly [number, number]>;
  /** Ids set to -inf (EOS and stop ids until min_tokens). */
  maskedIds?: readonly number[];
  repetitionPenalty?: number;
  /** Tokens of the prompt (repetition penalty only). */
  promptIds?: readonly number[];
  /** Tokens generated so far (repetition, frequency and presence penalties). */
  outputIds?: readonly number[];
  frequencyPenalty?: number;
  presencePenalty?: number;
}

/** The edits that apply `processors` to a row of `vocabSize` logits: one per token touched. */
export function logitEdits(processors: LogitProcessors, vocabSize: number): LogitEdit[] {
  const edits = new Map<number, LogitEdit>();
  const edit = (id: number): LogitEdit | undefined => {
    if (!(id >= 0 && id < vocabSize)) return undefined;
    let e = edits.get(id);
    if (!e) edits.set(id, e = { tokenId: id, bias: 0, mask: false, repetition: 1, subtract: 0 });
    return e;
  };
  for (const [id, bias] of processors.logitBias ?? []) {
    const e = edit(id);
    if (e) e.bias += bias;
  }
  for (const id of processors.maskedIds ?? []) {
    const e = edit(id);
    if (e) e.mask = true;
  }
  const penalty = processors.repetitionPenalty ?? 1;
  if (penalty !== 1) {
    for (const ids of [processors.promptIds ?? [], processors.outputIds ?? []]) {
      for (const id of ids) {
        const e = edit(id);
        if (e) e.repetition = penalty;
      }
    }
  }
  const frequency = processors.frequencyPenalty ?? 0;
  const presence = processors.presencePenalty ?? 0;
  if (frequency !== 0 || presence !== 0) {
    const counts = new Map<number, number>();
    for (const id of processors.outputIds ?? []) counts.set(id, (counts.get(id) ?? 0) + 1);
    for (const [id, count] of counts) {
      const e = edit(id);
      if (e) e.subtract = frequency * count + presence;
    }
  }
  return [...edits.values()];
}

/**
 * How one row's next token is drawn, resolved for that token: the same on the CPU (Sampler.sampleRow) and where
 * the logits are (a runner's stepAndSample, GpuSampler).
 */
export interface RowSampling {
  /** 0 is greedy: the argmax, log-probabilities of the processed logits at temperature 1, untruncated. */
  temperature: number;
  /** 0: off. */
  topK: number;
  /** 1: off. */
  topP: number;
  /** 0: off. */
  minP: number;
  /** The row's uniform number in (0, 1), drawn from its sequence's stream. */
  uniform: number;
  /** How many top log-probabilities to report (0..20); null: none. */
  topLogprobs: number | null;
  /** processed: of the distribution sampled from; raw: the model's log-softmax. */
  logprobsMode: "processed" | "raw";
  /** The logits processors' edits (logitEdits), applied before the cuts. */
  edits?: readonly LogitEdit[];
  /**
   * Which tokens may be sampled (a grammar's next-token bitmask): token t is allowed when bit t & 31 of word
   * t >>> 5 is set; ceil(vocabSize / 32) words, bits past the vocabulary ignored, words missing from a short mask
   * allowing nothing. Forbidden tokens are -inf before anything else (bias, penalties, temperature, cuts); null or
   * absent: every token is allowed.
   */
  allowed?: Uint32Array | null;
  /** Also answer the kept set (SampledToken.kept). */
  keepSet?: boolean;
}

/** One token and its log-probability. */
export interface TokenLogprob {
  tokenId: number;
  logprob: number;
}

/** The sampled token, its log-probability and the top ones (when asked for). */
export interface SampledToken extends TokenLogprob {
  topLogprobs?: TokenLogprob[];
  /**
   * With RowSampling.keepSet: the ids the token was drawn from, ascending (vLLM's and SGLang's sampling mask): those
   * the allowed mask, the processors, min-p, top-k and top-p left with a finite logit. Greedy draws from the argmax
   * alone (SGLang's greedy is top_k 1), and so does a row with every token masked.
   */
  kept?: Int32Array;
}
