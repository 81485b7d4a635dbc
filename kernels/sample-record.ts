/**
 * Reading sample-rows.wgsl's records: the OUT_WORDS words a row leaves on the GPU (its chosen token and logit, the
 * row's max, the kept weight Z, the top-N) -> the token and log-probabilities, computed in float64 on the host as
 * the CPU sampler computes them.
 */
import type { RowSampling, SampledToken } from "./row-sampling.ts";
import { floorLogprob, LOGPROB_FLOOR } from "./sampling.ts";

/** Words of a row's record (sample-rows.wgsl's OUT_WORDS). */
export const OUT_WORDS = 52;
const TWO_POW_32 = 4294967296;
/** Fixed-point unit of the kernel's weights. */
const TWO_POW_40 = 1099511627776;

const bitsView = new Uint32Array(1);
const floatView = new Float32Array(bitsView.buffer);

function floatOf(bits: number): number {
  bitsView[0] = bits;
  return floatView[0];
}

// ln of a 64-bit fixed-point weight with 40 fractional bits.
function logFixed(lo: number, hi: number): number {
  return Math.log((hi * TWO_POW_32 + lo) / TWO_POW_40);
}

/** A row's answer from its records: the sampling pass's at `r`, the raw pass's `count` records further. */
export function readRecord(row: RowSampling, words: Uint32Array, r: number, count: number): SampledToken {
  const o = r * OUT_WORDS;
  const tokenId = words[o];
  if (row.logprobsMode === "raw") {
    const raw = (r + count) * OUT_WORDS;
    const max = floatOf(words[raw + 3]);
    const logZ = max === -Infinity ? Infinity : logFixed(words[raw + 4], words[raw + 5]);
    const logprob = (l: number) => floorLogprob(l - max - logZ);
    const result: SampledToken = { tokenId, logprob: logprob(floatOf(words[o + 6])) };
    if (row.topLogprobs !== null) {
      result.topLogprobs = [];
      for (let j = 0; j < words[raw + 7]; j++) {
        const at = raw + 12 + 2 * j;
        result.topLogprobs.push({ tokenId: words[at] & 0x7fffffff, logprob: logprob(floatOf(words[at + 1])) });
      }
    }
    return result;
  }
  const allMasked = (words[o + 2] & 1) !== 0;
  const max = floatOf(words[o + 3]);
  const invT = row.temperature === 0 ? 1 : 1 / row.temperature;
  const logZ = logFixed(words[o + 4], words[o + 5]);
  const logprob = (l: number, kept: boolean) => (kept && !allMasked ? floorLogprob((l - max) * invT - logZ) : LOGPROB_FLOOR);
  const result: SampledToken = { tokenId, logprob: logprob(floatOf(words[o + 1]), true) };
  if (row.topLogprobs !== null) {
    result.topLogprobs = [];
    for (let j = 0; j < words[o + 7]; j++) {
      const at = o + 12 + 2 * j;
      const id = words[at];
      result.topLogprobs.push({ tokenId: id & 0x7fffffff, logprob: logprob(floatOf(words[at + 1]), (id & 0x80000000) !== 0) });
    }
  }
  return result;
}
