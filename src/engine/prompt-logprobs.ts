/**
 * Prompt log-probabilities, as vLLM's prompt_logprobs reports them: at each prompt position the model's raw
 * log-softmax (no temperature or other processing: nothing was sampled there), the prompt token's rank among the
 * whole vocabulary, and the most likely alternatives. And teacher scoring, vLLM's prompt_logprob_token_ids: the same
 * raw log-softmax at given token ids, position by position.
 */
import { copyRow, floorLogprob, rowLogSumExp, SamplingScratch, selectTop } from "../../kernels/sampling.ts";
import { MAX_TOP_LOGPROBS } from "./sampling-params.ts";
import type { PromptLogprob, Sequence } from "./sequence.ts";

export class PromptScorer {
  // The row is copied into a sampler scratch so that its argmax and log-sum-exp run on the SIMD passes.
  readonly #scratch: SamplingScratch;
  readonly #topIds = new Int32Array(MAX_TOP_LOGPROBS);
  readonly #topVals = new Float32Array(MAX_TOP_LOGPROBS);

  constructor(readonly vocabSize: number) {
    this.#scratch = new SamplingScratch(vocabSize);
  }

  /** The entry of `tokenId` under `logits` (one row of the vocabulary), with `top` alternatives. */
  score(logits: Float32Array, tokenId: number, top: number): PromptLogprob {
    const row = this.#scratch.logits;
    const n = this.vocabSize;
    const best = copyRow(logits.subarray(0, n), this.#scratch);
    const max = row[best];
    const logZ = max + rowLogSumExp(this.#scratch, n, max);
    const value = row[tokenId];
    let rank = 1;
    for (let i = 0; i < n; i++) if (row[i] > value) rank++;
    const count = top > 0 ? selectTop(row, n, top, this.#topIds, this.#topVals, best) : 0;
    const topLogprobs = Array.from({ length: count }, (_, k) => ({
      tokenId: this.#topIds[k],
      logprob: floorLogprob(this.#topVals[k] - logZ),
    }));
    return { tokenId, logprob: floorLogprob(value - logZ), rank, topLogprobs };
  }

  /**
   * Scores what `seq` asked of the positions [start, start + count) of its prompt, whose logits `logits` holds one
   * vocabulary row after another: the prompt log-probabilities of the tokens after them, and the teacher scores.
   */
  scoreChunk(seq: Sequence, start: number, count: number, logits: Float32Array): void {
    const n = this.vocabSize;
    const scores = seq.promptTokenScores;
    for (let i = 0; i < count && start + i + 1 < seq.promptLength; i++) {
      const at = start + i;
      const row = logits.subarray(i * n, (i + 1) * n);
      if (seq.promptLogprobs) seq.promptLogprobs[at + 1] = this.score(row, seq.tokens[at + 1], seq.promptTopLogprobs!);
      if (scores && at >= scores.start) this.#scoreIds(row, scores.ids, scores.values, (at - scores.start) * scores.columns, scores.columns);
    }
  }

  /** Writes the raw log-softmax of `row` at `ids[from, from + count)` to `out` (-Infinity for a -1 pad). */
  #scoreIds(row: Float32Array, ids: Int32Array, out: Float32Array, from: number, count: number): void {
    const copy = this.#scratch.logits;
    const best = copyRow(row.subarray(0, this.vocabSize), this.#scratch);
    const max = copy[best];
    const logZ = max + rowLogSumExp(this.#scratch, this.vocabSize, max);
    for (let j = from; j < from + count; j++) out[j] = ids[j] < 0 ? -Infinity : copy[ids[j]] - logZ;
  }
}
