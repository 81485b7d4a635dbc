/**
 * CPU twin of the sampling kernels, on one row of float32 logits. The WGSL kernels must give the same answers,
 * so the semantics are fixed here:
 * - rank order: logit descending, then token id ascending (ties go to the lowest id);
 * - min-p, top-k and top-p each keep a prefix of the rank order, so the kept set is described by its last token,
 *   the cut (value, id): token i is kept iff l_i > value, or l_i == value and i <= id (and it passes min-p);
 * - weights w_i = exp((l_i - max) / T) in float64 (0 below e^-104), Z = their sum over the kept tokens;
 * - a kept token's log-probability is (l_i - max) / T - ln Z, any other's -inf (reported as -9999);
 * - with one uniform u in (0, 1), the chosen token is the first kept token, in id order, at which the running sum
 *   of weights exceeds u * Z (inverse CDF in id order: the vocabulary is never sorted).
 * Top-k up to HEAP_LIMIT selects with a heap; larger k, top-p and min-p use a histogram of the float bits (65,536
 * bins), then sort only the boundary bin, so the cost is a few passes over the row whatever its shape.
 * Each pass is its own function, one loop and nothing after it: a pass is what a GPU kernel would be, and V8
 * (Node 20) keeps re-entering stale on-stack-replaced code when a hot loop is followed by code it has not run.
 */

import { cutFromHistogram } from "./histogram.ts";
import { expNonPositive, HEAP_LIMIT, LOGPROB_FLOOR, SamplingScratch } from "./scratch.ts";
import { selectTop } from "./top-k.ts";

export { expNonPositive, HEAP_LIMIT, LOGPROB_FLOOR, SamplingScratch, selectTop };

const FLOAT32_MAX = 3.4028234663852886e38;

/** Clamps a log-probability to the floor; NaN becomes the floor too. */
export function floorLogprob(x: number): number {
  return x > LOGPROB_FLOOR ? x : LOGPROB_FLOOR;
}

/**
 * Copies a row into the scratch's logits so that ranking is a total order (NaN -> -inf, +inf -> the largest float32,
 * -0 -> +0); returns the argmax of the copy (the lowest index among equals).
 */
export function copyRow(src: Float32Array, s: SamplingScratch): number {
  s.logits.set(src);
  // Non-finite values are rare: one read-only pass finds the argmax and any of them, a second fixes them only then.
  const best = orderedArgmax(s, src.length);
  return best >= 0 ? best : argmax(s.logits, sanitize(s.logits, src.length));
}

// argmaxIfOrdered over the scratch's logits, on its SIMD kernels when it has them.
function orderedArgmax(s: SamplingScratch, n: number): number {
  return s.kernels === null ? argmaxIfOrdered(s.logits, n) : s.kernels.argmaxIfOrdered(n);
}

// The argmax (lowest index among equals), or -1 when a NaN or +inf breaks the total order.
function argmaxIfOrdered(values: Float32Array, n: number): number {
  let best = 0;
  let bestValue = values[0];
  for (let i = 0; i < n; i++) {
    const v = values[i];
    if (v !== v || v === Infinity) return -1;
    if (v > bestValue) {
      bestValue = v;
      best = i;
    }
  }
  return best;
}

function sanitize(values: Float32Array, n: number): number {
  for (let i = 0; i < n; i++) {
    const v = values[i];
    values[i] = v !== v ? -Infinity : v === Infinity ? FLOAT32_MAX : v + 0;
  }
  return n;
}

/**
 * Sets the tokens that `allowed` (a bitmask of ceil(n / 32) words; missing words allow nothing) forbids to -inf;
 * words of all ones cost one comparison, others one step per forbidden token (lowest clear bit first).
 */
export function maskForbidden(logits: Float32Array, n: number, allowed: Uint32Array): void {
  const words = Math.ceil(n / 32);
  for (let w = 0; w < words; w++) {
    const word = w < allowed.length ? allowed[w] : 0;
    if (word === 0xffffffff) continue;
    let forbidden = ~word;
    while (forbidden !== 0) {
      const low = forbidden & -forbidden;
      const i = w * 32 + 31 - Math.clz32(low);
      if (i < n) logits[i] = -Infinity;
      forbidden ^= low;
    }
  }
}

/** Index of the largest value (the lowest index among equals). */
export function argmax(values: Float32Array, n: number): number {
  let best = 0;
  let bestValue = values[0];
  for (let i = 1; i < n; i++) {
    if (values[i] > bestValue) {
      bestValue = values[i];
      best = i;
    }
  }
  return best;
}

/** argmax over the scratch's logits (already copied in, then masked or edited). */
export function rowArgmax(s: SamplingScratch, n: number): number {
  // An edit can push a float32 to +inf (the largest logit plus a bias), which only the plain argmax ranks.
  const best = orderedArgmax(s, n);
  return best >= 0 ? best : argmax(s.logits, n);
}

/** logSumExp over the scratch's logits, on its SIMD kernels when it has them. */
export function rowLogSumExp(s: SamplingScratch, n: number, max: number): number {
  return s.kernels === null ? logSumExp(s.logits, n, max) : Math.log(s.kernels.sumExp(n, max));
}

/** log(sum exp(v_i - max)) over a row. */
export function logSumExp(values: Float32Array, n: number, max: number): number {
  let z = 0;
  for (let i = 0; i < n; i++) z += expNonPositive(values[i] - max);
  return Math.log(z);
}

/** Sets the row's distribution to softmax(l / temperature) over every token, computing nothing yet. */
export function untruncated(s: SamplingScratch, n: number, temperature: number): void {
  s.invT = 1 / temperature;
  s.lnMinP = -Infinity;
  s.cutValue = -Infinity;
  s.cutId = n;
}

/**
 * Sets the row's distribution (temperature, min-p, and the cut of top-k and top-p) and returns Z, the weight of
 * the kept tokens. `s.max` must hold the row's max.
 */
export function truncate(s: SamplingScratch, n: number, temperature: number, topK: number, topP: number, minP: number): number {
  untruncated(s, n, temperature);
  s.lnMinP = minP > 0 ? Math.log(minP) : -Infinity;
  const k = topK > 0 && topK < n ? topK : 0;
  s.kept = k > 0 && k <= HEAP_LIMIT ? "candidates" : k === 0 && topP >= 1 ? "all" : "histogram";
  if (s.kept === "candidates") return cutFromHeap(s, n, k, topP);
  if (s.kept === "all") return s.kernels ? s.kernels.weigh(n, s.max, s.invT, s.lnMinP) : allWeights(s, n);
  return cutFromHistogram(s, n, k, topP);
}

function allWeights(s: SamplingScratch, n: number): number {
  const { logits, weights, max, invT, lnMinP } = s;
  let z = 0;
  for (let i = 0; i < n; i++) {
    const x = (logits[i] - max) * invT;
    z += weights[i] = x < lnMinP ? 0 : expNonPositive(x);
  }
  return z;
}

// The candidates that pass min-p (their weights, in rank order, go to the head of `weights`).
function minPPrefix(s: SamplingScratch, count: number): number {
  for (let j = 0; j < count; j++) {
    const x = (s.heapVals[j] - s.max) * s.invT;
    if (x < s.lnMinP) return j;
    s.weights[j] = expNonPositive(x);
  }
  return count;
}

// How many of the first `kept` weights it takes for their sum to reach target (all of them if rounding says never).
function massPrefix(weights: Float64Array, kept: number, target: number): number {
  let acc = 0;
  for (let j = 0; j < kept; j++) if ((acc += weights[j]) >= target) return j + 1;
  return kept;
}

function prefixSum(weights: Float64Array, count: number): number {
  let acc = 0;
  for (let j = 0; j < count; j++) acc += weights[j];
  return acc;
}

function idOrder(s: SamplingScratch, kept: number): void {
  for (let j = 0; j < kept; j++) s.candidates[j] = s.heapIds[j] * HEAP_LIMIT + j;
}

function cutFromHeap(s: SamplingScratch, n: number, k: number, topP: number): number {
  let kept = minPPrefix(s, selectTop(s.logits, n, k, s.heapIds, s.heapVals));
  if (topP < 1) kept = massPrefix(s.weights, kept, topP * prefixSum(s.weights, kept));
  s.cutValue = s.heapVals[kept - 1];
  s.cutId = s.heapIds[kept - 1];
  idOrder(s, kept);
  s.candidates.subarray(0, kept).sort();
  s.candidateCount = kept;
  return prefixSum(s.weights, kept);
}

/** Whether token i is in the row's kept set. */
export function isKept(s: SamplingScratch, i: number): boolean {
  const l = s.logits[i];
  if (l < s.cutValue || (l === s.cutValue && i > s.cutId)) return false;
  return (l - s.max) * s.invT >= s.lnMinP;
}

/**
 * The first kept token, in id order, at which the running weight exceeds target = u * Z (the last one with weight
 * when rounding leaves the sum short).
 */
export function pickKept(s: SamplingScratch, n: number, target: number): number {
  if (s.kept === "candidates") return pickCandidate(s, target);
  if (s.kept === "all") return s.kernels ? s.kernels.pick(n, target, s.argmax) : pickWeighted(s.weights, n, target, s.argmax);
  return pickBelowCut(s, n, target);
}

// Every weight is valid, 0 for the tokens min-p dropped.
function pickWeighted(weights: Float64Array, n: number, target: number, last: number): number {
  let acc = 0;
  for (let i = 0; i < n; i++) {
    if (weights[i] === 0) continue;
    last = i;
    if ((acc += weights[i]) > target) return i;
  }
  return last;
}

// Every weight is valid (0 for the tokens min-p dropped); the cut bounds the kept ones.
function pickBelowCut(s: SamplingScratch, n: number, target: number): number {
  const { logits, weights, cutValue, cutId } = s;
  let acc = 0;
  let last = s.argmax;
  for (let i = 0; i < n; i++) {
    const l = logits[i];
    if (l < cutValue || (l === cutValue && i > cutId) || weights[i] === 0) continue;
    last = i;
    if ((acc += weights[i]) > target) return i;
  }
  return last;
}

function pickCandidate(s: SamplingScratch, target: number): number {
  let acc = 0;
  let last = s.argmax;
  for (let j = 0; j < s.candidateCount; j++) {
    const rank = s.candidates[j] % HEAP_LIMIT;
    if (s.weights[rank] === 0) continue;
    last = (s.candidates[j] - rank) / HEAP_LIMIT;
    if ((acc += s.weights[rank]) > target) return last;
  }
  return last;
}

/**
 * Writes the row's kept set (the tokens with a finite logit that the cuts and min-p keep), ascending, into `out`;
 * returns how many.
 */
export function keptIds(s: SamplingScratch, n: number, out: Int32Array): number {
  if (s.kept === "candidates") return keptCandidates(s, out);
  let count = 0;
  for (let i = 0; i < n; i++) if (s.logits[i] !== -Infinity && isKept(s, i)) out[count++] = i;
  return count;
}

// The heap's kept candidates, in id order already, less those at -inf (when fewer than k tokens are finite).
function keptCandidates(s: SamplingScratch, out: Int32Array): number {
  let count = 0;
  for (let j = 0; j < s.candidateCount; j++) {
    const id = (s.candidates[j] - (s.candidates[j] % HEAP_LIMIT)) / HEAP_LIMIT;
    if (s.logits[id] !== -Infinity) out[count++] = id;
  }
  return count;
}

/** Log-probability of token i under the row's kept distribution, given ln Z. */
export function keptLogprob(s: SamplingScratch, i: number, logZ: number): number {
  return isKept(s, i) ? floorLogprob((s.logits[i] - s.max) * s.invT - logZ) : LOGPROB_FLOOR;
}
