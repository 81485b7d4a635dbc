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

/** Log-probabilities are never reported below this (masked tokens are -inf), and never NaN. */
export const LOGPROB_FLOOR = -9999;
/** Top-k at or below this selects with a heap; above it, with the histogram. */
export const HEAP_LIMIT = 1024;
const BINS = 1 << 16;
// Boundary-bin tokens sort as one float64 each: (inverted low 16 bits) * ID_SPACE + id.
const ID_SPACE = 1 << 21;
const FLOAT32_MAX = 3.4028234663852886e38;

/** Reusable buffers and the state of the row being sampled, so a decode step allocates nothing. */
export class SamplingScratch {
  readonly logits: Float32Array;
  /** The float bits of `logits`, for the histogram. */
  readonly bits: Int32Array;
  readonly weights: Float64Array;
  /** Per-token counters for penalties, left all zero after use. */
  readonly counts: Uint32Array;
  readonly binKeys: Float64Array;
  readonly binCount = new Float64Array(BINS);
  readonly binMass = new Float64Array(BINS);
  readonly heapIds = new Int32Array(HEAP_LIMIT);
  readonly heapVals = new Float32Array(HEAP_LIMIT);
  // The row's distribution: its max, 1/T, the min-p threshold on (l - max) / T, and the cut.
  max = 0;
  argmax = 0;
  invT = 1;
  lnMinP = -Infinity;
  cutValue = -Infinity;
  cutId = 0;
  /** How pickKept finds the kept tokens: every weight valid, the histogram's cut, or the heap's candidates. */
  kept: "all" | "histogram" | "candidates" = "all";
  /** The heap's kept candidates as id * HEAP_LIMIT + rank, sorted: in id order. */
  readonly candidates = new Float64Array(HEAP_LIMIT);
  candidateCount = 0;

  constructor(readonly capacity: number) {
    if (capacity > ID_SPACE) throw new RangeError(`vocabulary of ${capacity} tokens is over ${ID_SPACE}`);
    this.logits = new Float32Array(capacity);
    this.bits = new Int32Array(this.logits.buffer);
    this.weights = new Float64Array(capacity);
    this.counts = new Uint32Array(capacity);
    this.binKeys = new Float64Array(capacity);
  }
}

// exp(x) for x <= 0 from a table of exp(-j/64) and a degree-4 correction (relative error < 1e-11), 3-4x faster
// than Math.exp on V8. Below -104 (a weight under 1e-45 of the top token's) it is 0: such a token is never drawn,
// though its log-probability is still reported exactly.
const EXP_STEPS = 64;
const EXP_FLOOR = 104 * EXP_STEPS;
const EXP_TABLE = new Float64Array(EXP_FLOOR + 1).map((_, j) => Math.exp(-j / EXP_STEPS));

/** exp(x) for x <= 0; 0 below -104, for -inf and for NaN. */
export function expNonPositive(x: number): number {
  const q = x * -EXP_STEPS;
  if (!(q < EXP_FLOOR)) return 0;
  const j = q | 0;
  const d = (j - q) / EXP_STEPS;
  return EXP_TABLE[j] * (1 + d * (1 + d * (0.5 + d * (1 / 6 + d / 24))));
}

/** Clamps a log-probability to the floor; NaN becomes the floor too. */
export function floorLogprob(x: number): number {
  return x > LOGPROB_FLOOR ? x : LOGPROB_FLOOR;
}

/**
 * Copies a row so that ranking is a total order (NaN -> -inf, +inf -> the largest float32, -0 -> +0); returns the
 * argmax of the copy (the lowest index among equals).
 */
export function copyLogits(src: Float32Array, dst: Float32Array): number {
  dst.set(src);
  // Non-finite values are rare: one read-only pass finds them, a second fixes them only if there are any.
  return finiteCount(dst, src.length) === src.length ? argmax(dst, src.length) : argmax(dst, sanitize(dst, src.length));
}

// How many values are finite or -inf (x - x is NaN only for NaN and +-inf).
function finiteCount(values: Float32Array, n: number): number {
  let count = 0;
  for (let i = 0; i < n; i++) if (values[i] - values[i] === 0 || values[i] === -Infinity) count++;
  return count;
}

function sanitize(values: Float32Array, n: number): number {
  for (let i = 0; i < n; i++) {
    const v = values[i];
    values[i] = v !== v ? -Infinity : v === Infinity ? FLOAT32_MAX : v + 0;
  }
  return n;
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

/** log(sum exp(v_i - max)) over a row. */
export function logSumExp(values: Float32Array, n: number, max: number): number {
  let z = 0;
  for (let i = 0; i < n; i++) z += expNonPositive(values[i] - max);
  return Math.log(z);
}

function worse(va: number, ia: number, vb: number, ib: number): boolean {
  return va < vb || (va === vb && ia > ib);
}

function siftUp(ids: Int32Array, vals: Float32Array, pos: number, v: number, id: number): void {
  while (pos > 0) {
    const parent = (pos - 1) >> 1;
    if (!worse(v, id, vals[parent], ids[parent])) break;
    ids[pos] = ids[parent];
    vals[pos] = vals[parent];
    pos = parent;
  }
  ids[pos] = id;
  vals[pos] = v;
}

// Puts (v, id) at the root of a heap of `size` (worst on top) and restores the order.
function siftDown(ids: Int32Array, vals: Float32Array, size: number, v: number, id: number): void {
  let pos = 0;
  for (let child = 1; child < size; child = 2 * pos + 1) {
    if (child + 1 < size && worse(vals[child + 1], ids[child + 1], vals[child], ids[child])) child++;
    if (!worse(vals[child], ids[child], v, id)) break;
    ids[pos] = ids[child];
    vals[pos] = vals[child];
    pos = child;
  }
  ids[pos] = id;
  vals[pos] = v;
}

function collectTop(values: Float32Array, n: number, k: number, ids: Int32Array, vals: Float32Array): number {
  let size = 0;
  for (let i = 0; i < n; i++) {
    if (size < k) siftUp(ids, vals, size++, values[i], i);
    // An equal value never displaces: the newcomer's id is higher, so it ranks after.
    else if (values[i] > vals[0]) siftDown(ids, vals, size, values[i], i);
  }
  return size;
}

function sortHeap(ids: Int32Array, vals: Float32Array, size: number): void {
  for (let end = size - 1; end > 0; end--) {
    const v = vals[end];
    const id = ids[end];
    ids[end] = ids[0];
    vals[end] = vals[0];
    siftDown(ids, vals, end, v, id);
  }
}

/** Writes the k first tokens in rank order into ids/vals, best first; returns how many (min(k, n)). */
export function selectTop(values: Float32Array, n: number, k: number, ids: Int32Array, vals: Float32Array): number {
  const size = collectTop(values, n, k, ids, vals);
  sortHeap(ids, vals, size);
  return size;
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
  if (s.kept === "all") return allWeights(s, n);
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

// The float bits as an int32 key in float order: the magnitude, negated for negative floats (so -0 and +0 share
// key 0). Branch-free: logit signs are random.
function orderKey(bits: number): number {
  const sign = bits >> 31;
  return ((bits & 0x7fffffff) ^ sign) - sign;
}

// The coarse histogram bin of a float's bits: the high 16 bits of its key, offset to 1..65535 (0 would be a NaN).
function binOf(bits: number): number {
  return (orderKey(bits) >> 16) + 0x8000;
}

// Weights (0 for the tokens min-p drops) and the weight per bin; returns the total weight.
function histogram(s: SamplingScratch, n: number): number {
  const { logits, bits, weights, binMass, max, invT, lnMinP } = s;
  let total = 0;
  for (let i = 0; i < n; i++) {
    const x = (logits[i] - max) * invT;
    if (x < lnMinP) {
      weights[i] = 0;
      continue;
    }
    const w = expNonPositive(x);
    weights[i] = w;
    binMass[binOf(bits[i])] += w;
    total += w;
  }
  return total;
}

// Tokens per bin, for top-k: a pass of its own, as top-k past the heap's limit is rare.
function countBins(s: SamplingScratch, n: number): void {
  const { logits, bits, binCount, max, invT, lnMinP } = s;
  for (let i = 0; i < n; i++) if ((logits[i] - max) * invT >= lnMinP) binCount[binOf(bits[i])]++;
}

// The bin, from the top, where the running sum of `perBin` reaches goal; -1 if it never does.
function binReaching(perBin: Float64Array, goal: number): number {
  let acc = 0;
  for (let b = BINS - 1; b > 0; b--) if (perBin[b] !== 0 && (acc += perBin[b]) >= goal) return b;
  return -1;
}

// Sum of perBin over the bins above `bin`, from the top (the order binReaching adds in).
function sumAbove(perBin: Float64Array, bin: number): number {
  let acc = 0;
  for (let b = BINS - 1; b > bin; b--) acc += perBin[b];
  return acc;
}

// The tokens of one bin that min-p keeps, as sortable keys, in id order; returns how many.
function gatherBin(s: SamplingScratch, n: number, bin: number): number {
  const { logits, bits, binKeys, max, invT, lnMinP } = s;
  let m = 0;
  for (let i = 0; i < n; i++) {
    if (binOf(bits[i]) !== bin || (logits[i] - max) * invT < lnMinP) continue;
    binKeys[m++] = (0xffff - (orderKey(bits[i]) & 0xffff)) * ID_SPACE + i;
  }
  return m;
}

// Position in the sorted bin where the running count (or weight) reaches goal; the last one if it never does.
function walkBin(s: SamplingScratch, m: number, byMass: boolean, goal: number): number {
  let acc = 0;
  for (let j = 0; j < m; j++) if ((acc += byMass ? s.weights[s.binKeys[j] % ID_SPACE] : 1) >= goal) return j;
  return m - 1;
}

function binPrefixWeight(s: SamplingScratch, last: number): number {
  let acc = 0;
  for (let j = 0; j <= last; j++) acc += s.weights[s.binKeys[j] % ID_SPACE];
  return acc;
}

// Puts the cut where the running count (perBin = binCount) or weight (binMass) first reaches goal in rank order;
// returns the weight kept.
function cutAt(s: SamplingScratch, n: number, perBin: Float64Array, goal: number, total: number): number {
  const bin = binReaching(perBin, goal);
  if (bin < 0) {
    s.cutValue = -Infinity;
    s.cutId = n;
    return total;
  }
  const m = gatherBin(s, n, bin);
  s.binKeys.subarray(0, m).sort();
  const last = walkBin(s, m, perBin === s.binMass, goal - sumAbove(perBin, bin));
  const id = s.binKeys[last] % ID_SPACE;
  s.cutValue = s.logits[id];
  s.cutId = id;
  return sumAbove(s.binMass, bin) + binPrefixWeight(s, last);
}

function cutFromHistogram(s: SamplingScratch, n: number, k: number, topP: number): number {
  const total = histogram(s, n);
  if (k > 0) countBins(s, n);
  let mass = k > 0 ? cutAt(s, n, s.binCount, k, total) : total;
  if (topP < 1) {
    const kValue = s.cutValue;
    const kId = s.cutId;
    const pMass = cutAt(s, n, s.binMass, topP * mass, total);
    // Rounding can put the top-p cut past the top-k one: the tighter cut wins.
    if (worse(s.cutValue, s.cutId, kValue, kId)) {
      s.cutValue = kValue;
      s.cutId = kId;
    } else {
      mass = pMass;
    }
  }
  if (k > 0) s.binCount.fill(0);
  s.binMass.fill(0);
  return mass;
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
  return s.kept === "all" ? pickWeighted(s.weights, n, target, s.argmax) : pickBelowCut(s, n, target);
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

/** Log-probability of token i under the row's kept distribution, given ln Z. */
export function keptLogprob(s: SamplingScratch, i: number, logZ: number): number {
  return isKept(s, i) ? floorLogprob((s.logits[i] - s.max) * s.invT - logZ) : LOGPROB_FLOOR;
}
