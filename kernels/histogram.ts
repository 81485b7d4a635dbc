/**
 * The histogram path of the CPU sampler (kernels/sampling.ts): top-k past the heap's limit, top-p and min-p cut the
 * rank order with one histogram of the logits' float bits (65,536 bins) and a sort of the boundary bin only, so
 * the cost is a few passes over the row whatever its shape. Each pass is its own function (see sampling.ts).
 */
import { BINS, expNonPositive, ID_SPACE, type SamplingScratch } from "./scratch.ts";
import { worse } from "./top-k.ts";

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

export function cutFromHistogram(s: SamplingScratch, n: number, k: number, topP: number): number {
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
