/**
 * Prompt log-probabilities, as vLLM's prompt_logprobs reports them: at each prompt position the model's raw
 * log-softmax (no temperature or other processing: nothing was sampled there), the prompt token's rank among the
 * whole vocabulary, and the most likely alternatives.
 */
import { copyLogits, floorLogprob, logSumExp, selectTop } from "../../kernels/sampling.ts";
import { MAX_TOP_LOGPROBS } from "./sampling-params.ts";
import type { PromptLogprob } from "./sequence.ts";

export class PromptScorer {
  readonly #row: Float32Array;
  readonly #topIds = new Int32Array(MAX_TOP_LOGPROBS);
  readonly #topVals = new Float32Array(MAX_TOP_LOGPROBS);

  constructor(readonly vocabSize: number) {
    this.#row = new Float32Array(vocabSize);
  }

  /** The entry of `tokenId` under `logits` (one row of the vocabulary), with `top` alternatives. */
  score(logits: Float32Array, tokenId: number, top: number): PromptLogprob {
    const row = this.#row;
    const n = this.vocabSize;
    const best = copyLogits(logits.subarray(0, n), row);
    const max = row[best];
    const logZ = max + logSumExp(row, n, max);
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
}
