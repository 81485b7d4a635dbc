/**
 * The sampler's distribution written from its definition, for tests to hold the samplers to: which tokens a row
 * keeps (its sampling mask) and their log-probabilities.
 */
import type { RowSampling } from "../../kernels/row-sampling.ts";

/** Whether a bitmask allows token t. */
export const isAllowed = (mask: Uint32Array, t: number) => ((mask[t >>> 5] >>> (t & 31)) & 1) === 1;

/**
 * The processed log-probabilities by definition: forbidden tokens out, the rest ranked by logit (ties to the lower
 * id), probabilities softmax(l / T) over them; min-p keeps p >= min_p * p_max, top-k the first k, top-p the
 * shortest prefix whose renormalised mass reaches top_p; each kept token's log-probability under the kept ones.
 */
export function referenceLogprobs(
  logits: Float32Array,
  mask: Uint32Array | null,
  row: RowSampling,
): Map<number, number> {
  const ids = [...logits.keys()].filter((t) => logits[t] !== -Infinity && (mask === null || isAllowed(mask, t)));
  ids.sort((a, b) => logits[b] - logits[a] || a - b);
  const scaled = ids.map((t) => logits[t] / row.temperature);
  const top = scaled[0];
  const weights = scaled.map((x) => Math.exp(x - top));
  let kept = ids.length;
  if (row.minP > 0) kept = weights.findIndex((w) => w < row.minP) < 0 ? kept : weights.findIndex((w) => w < row.minP);
  if (row.topK > 0) kept = Math.min(kept, row.topK);
  if (row.topP < 1) {
    const total = weights.slice(0, kept).reduce((a, b) => a + b, 0);
    let acc = 0;
    for (let j = 0; j < kept; j++) {
      if ((acc += weights[j]) >= row.topP * total) {
        kept = j + 1;
        break;
      }
    }
  }
  const logZ = Math.log(weights.slice(0, kept).reduce((a, b) => a + b, 0));
  return new Map(ids.slice(0, kept).map((t, j) => [t, scaled[j] - top - logZ]));
}
