// Long because it is one kernel: one workgroup runs every pass over its row (max, histogram cuts, draw, top-N) in shared memory.
// Samples one token per row of logits, one workgroup per row; the semantics are those of kernels/sampling.ts.
// Only a record of OUT_WORDS words per row leaves the GPU: the chosen token and its logit, the row's max and the
// kept weight Z, the top-N tokens; the host turns them into log-probabilities in float64.
//
// How it stays in agreement with the CPU twin:
// - logits are read as bits and sanitized (NaN -> -inf, +inf -> the largest float, -0 -> +0), ranked by an
//   integer key (float order) and then by id, so ranking and ties are exact;
// - weights exp((l - max) / T) are rounded to 64-bit fixed point (2^-40 units, two u32 words) and summed as
//   integers, so every sum is exact and independent of the order the GPU adds in: the walk that samples adds up
//   exactly the Z that the cuts computed;
// - top-k, top-p and the top-N logprobs are radix selections over the key (8-bit digits, top first), then over
//   the id among tokens with the cut's key (lowest id first): the cut is one (key, id), as on the CPU;
// - the sample is the first kept token, in id order, at which the running weight exceeds u * Z.
//
// The Edit struct is edit-record.wgsl's, put before this file by the loader; so is masked(), row-words.wgsl's (the
// rows' allowed masks) or row-words-off.wgsl's (no row of the call has one).

const WG: u32 = 256u;
const MAX_TOP: u32 = 20u;
const OUT_WORDS: u32 = 52u;
const NEG_INF_BITS: u32 = 0xff800000u;
// A cut that keeps everything: every sanitized key is above 0.
const ALL_KEY: u32 = 0u;
const ALL_ID: u32 = 0xffffffffu;
// exp(x) at or below this counts as 0, as on the CPU.
const WEIGHT_FLOOR: f32 = -104.0;

const MODE_SKIP: u32 = 0u;
const MODE_GREEDY: u32 = 1u;

struct Shape {
  vocab: u32,
  rows: u32,
  pad0: u32,
  pad1: u32,
}

struct Row {
  // Row of the logits buffer this row reads.
  logitsRow: u32,
  // 0: skip, 1: greedy (temperature 1, nothing truncated, the argmax), 2: sample.
  mode: u32,
  invT: f32,
  useMinP: u32,
  lnMinP: f32,
  // 0: off.
  topK: u32,
  // top_p as a fraction of 2^32; 0: off.
  topP: u32,
  // The row's random bits r: the uniform number is (r + 0.5) / 2^32.
  uniformBits: u32,
  // How many top tokens to report (0..MAX_TOP).
  topN: u32,
  // The row's logit edits (their original values give the chosen token's raw logit).
  editStart: u32,
  editEnd: u32,
  // 1 + the word offset of the row's allowed mask in row-words.wgsl's buffer; 0: every token allowed.
  mask: u32,
  // 1 + the word offset where row-words.wgsl's storeKept writes the row's kept set; 0: not asked for.
  kept: u32,
  pad1: u32,
  pad2: u32,
  pad3: u32,
}

@group(0) @binding(0) var<uniform> shape: Shape;
@group(0) @binding(1) var<storage, read> logits: array<u32>;
@group(0) @binding(2) var<storage, read> rows: array<Row>;
@group(0) @binding(3) var<storage, read> edits: array<Edit>;
@group(0) @binding(4) var<storage, read_write> outs: array<u32>;

// Histogram of one radix pass: count, weight (low, high words) and, on the last key digit, the highest id.
var<workgroup> hCount: array<atomic<u32>, 256>;
var<workgroup> hLo: array<atomic<u32>, 256>;
var<workgroup> hHi: array<atomic<u32>, 256>;
var<workgroup> hMaxId: array<atomic<u32>, 256>;
// Scan (and reduction) space.
var<workgroup> sCount: array<u32, 256>;
var<workgroup> sLo: array<u32, 256>;
var<workgroup> sHi: array<u32, 256>;
// State of the radix selection, written by the one thread whose bin holds the goal.
var<workgroup> wPrefix: u32;
var<workgroup> wGoal: vec2u;
var<workgroup> wBinCount: u32;
var<workgroup> wBinMaxId: u32;
var<workgroup> wFound: u32;
var<workgroup> wChosen: u32;
var<workgroup> wRawBits: u32;
var<workgroup> wZ: vec2u;
var<workgroup> topCount: atomic<u32>;
var<workgroup> topIds: array<u32, MAX_TOP>;
var<workgroup> topKeys: array<u32, MAX_TOP>;

// The row being worked on, the same in every invocation of the workgroup.
var<private> lid: u32;
var<private> base: u32;
var<private> n: u32;
var<private> maxF: f32;
var<private> invT: f32;
var<private> lnMinP: f32;
// The row's Row.mask, read by row-words.wgsl's masked().
var<private> maskAt: u32;
// The row's Row.kept, read by row-words.wgsl's storeKept().
var<private> keptAt: u32;

fn sanitize(b: u32) -> u32 {
  if ((b & 0x7fffffffu) > 0x7f800000u) { return NEG_INF_BITS; }
  if (b == 0x7f800000u) { return 0x7f7fffffu; }
  if (b == 0x80000000u) { return 0u; }
  return b;
}

// Sanitized float bits -> an integer in float order.
fn keyOf(b: u32) -> u32 {
  if ((b & 0x80000000u) != 0u) { return ~b; }
  return b | 0x80000000u;
}

fn bitsOf(k: u32) -> u32 {
  if ((k & 0x80000000u) != 0u) { return k & 0x7fffffffu; }
  return ~k;
}

// Token i's logit bits as this row samples them: sanitized, and -inf where its allowed mask forbids the token.
fn rowBits(i: u32) -> u32 {
  return masked(i, sanitize(logits[base + i]));
}

fn add64(a: vec2u, b: vec2u) -> vec2u {
  let lo = a.x + b.x;
  return vec2u(lo, a.y + b.y + select(0u, 1u, lo < a.x));
}

fn sub64(a: vec2u, b: vec2u) -> vec2u {
  return vec2u(a.x - b.x, a.y - b.y - select(0u, 1u, a.x < b.x));
}

fn less64(a: vec2u, b: vec2u) -> bool {
  return a.y < b.y || (a.y == b.y && a.x < b.x);
}

// The full 64-bit product of two u32.
fn mul32(a: u32, b: u32) -> vec2u {
  let a0 = a & 0xffffu;
  let a1 = a >> 16u;
  let b0 = b & 0xffffu;
  let b1 = b >> 16u;
  let p00 = a0 * b0;
  let p01 = a0 * b1;
  let p10 = a1 * b0;
  let mid = (p00 >> 16u) + (p01 & 0xffffu) + (p10 & 0xffffu);
  return vec2u((p00 & 0xffffu) | (mid << 16u), a1 * b1 + (p01 >> 16u) + (p10 >> 16u) + (mid >> 16u));
}

// floor(z * f / 2^32).
fn scale64(z: vec2u, f: u32) -> vec2u {
  return add64(mul32(z.y, f), vec2u(mul32(z.x, f).y, 0u));
}

// A weight in [0, 1] as 64-bit fixed point with 40 fractional bits (truncated).
fn fixedOf(w: f32) -> vec2u {
  let s = w * 256.0;
  let hi = floor(s);
  return vec2u(u32((s - hi) * 4294967296.0), u32(hi));
}

fn scaled(b: u32) -> f32 {
  return (bitcast<f32>(b) - maxF) * invT;
}

fn passesMinP(b: u32, useMinP: bool) -> bool {
  if (!useMinP) { return true; }
  if (b == NEG_INF_BITS) { return false; }
  return scaled(b) >= lnMinP;
}

fn weightOf(b: u32) -> vec2u {
  if (b == NEG_INF_BITS) { return vec2u(0u); }
  let x = scaled(b);
  if (!(x > WEIGHT_FLOOR)) { return vec2u(0u); }
  return fixedOf(exp(x));
}

// Whether (k, i) ranks at or before the cut (cutKey, cutId): higher key first, then lower id.
fn within(k: u32, i: u32, cutKey: u32, cutId: u32) -> bool {
  return k > cutKey || (k == cutKey && i <= cutId);
}

// Adds to a histogram bin; a wrapped low word carries into the high one.
fn binAdd(d: u32, count: u32, w: vec2u) {
  atomicAdd(&hCount[d], count);
  if (w.x != 0u) {
    let old = atomicAdd(&hLo[d], w.x);
    if (old + w.x < old) { atomicAdd(&hHi[d], 1u); }
  }
  if (w.y != 0u) { atomicAdd(&hHi[d], w.y); }
}

// Inclusive scan of (sCount, sLo:sHi) over the workgroup.
fn scan() {
  for (var off = 1u; off < WG; off = off << 1u) {
    workgroupBarrier();
    var c = sCount[lid];
    var m = vec2u(sLo[lid], sHi[lid]);
    if (lid >= off) {
      c = c + sCount[lid - off];
      m = add64(m, vec2u(sLo[lid - off], sHi[lid - off]));
    }
    workgroupBarrier();
    sCount[lid] = c;
    sLo[lid] = m.x;
    sHi[lid] = m.y;
  }
  workgroupBarrier();
}

// The cut over the eligible tokens (passing min-p when useMinP, ranked within (bKey, bId)): the token, in rank
// order, at which the running count (byMass false: goal tokens) or weight (byMass: goal / 2^32 of the eligible
// weight) first reaches the goal. Returns (key, id) of the cut, or the bound when the goal is never reached.
fn radixCut(byMass: bool, goal: u32, useMinP: bool, bKey: u32, bId: u32) -> vec2u {
  // Whoever still reads the previous selection's state does so before it is reset.
  workgroupBarrier();
  if (lid == 0u) {
    wPrefix = 0u;
    wFound = 1u;
  }
  var cutKey = 0u;
  // Levels 0-3 fix the key's bytes, top first; levels 4-6 the id's (ids below 2^24), among ties.
  for (var level = 0u; level < 7u; level++) {
    let idLevel = level >= 4u;
    let shift = select(24u - 8u * level, 16u - 8u * (level - 4u), idLevel);
    atomicStore(&hCount[lid], 0u);
    atomicStore(&hLo[lid], 0u);
    atomicStore(&hHi[lid], 0u);
    atomicStore(&hMaxId[lid], 0u);
    let prefix = workgroupUniformLoad(&wPrefix);
    // Tokens of the same bin are summed before touching the shared histogram: neighbours often share a bin.
    var runBin = 0xffffffffu;
    var runCount = 0u;
    var runMass = vec2u(0u);
    for (var i = lid; i < n; i += WG) {
      let b = rowBits(i);
      let k = keyOf(b);
      var hit: bool;
      var d: u32;
      if (idLevel) {
        hit = k == cutKey && (level == 4u || (i >> (shift + 8u)) == prefix);
        d = (i >> shift) & 0xffu;
      } else {
        hit = level == 0u || (k >> (shift + 8u)) == prefix;
        d = (k >> shift) & 0xffu;
      }
      if (!hit || !within(k, i, bKey, bId) || !passesMinP(b, useMinP)) { continue; }
      var w = vec2u(0u);
      if (byMass) { w = weightOf(b); }
      if (level == 3u) { atomicMax(&hMaxId[d], i); }
      if (d != runBin) {
        if (runCount != 0u) { binAdd(runBin, runCount, runMass); }
        runBin = d;
        runCount = 0u;
        runMass = vec2u(0u);
      }
      runCount += 1u;
      runMass = add64(runMass, w);
    }
    if (runCount != 0u) { binAdd(runBin, runCount, runMass); }
    workgroupBarrier();
    // Keys walk from the top bin down, ids from the bottom up.
    let bin = select(255u - lid, lid, idLevel);
    let own = vec2u(atomicLoad(&hLo[bin]), atomicLoad(&hHi[bin]));
    let ownCount = atomicLoad(&hCount[bin]);
    sCount[lid] = ownCount;
    sLo[lid] = own.x;
    sHi[lid] = own.y;
    scan();
    let inclMass = vec2u(sLo[lid], sHi[lid]);
    let incl = select(vec2u(sCount[lid], 0u), inclMass, byMass);
    let excl = select(vec2u(sCount[lid] - ownCount, 0u), sub64(inclMass, own), byMass);
    var want: vec2u;
    if (level == 0u) {
      let total = select(vec2u(sCount[WG - 1u], 0u), vec2u(sLo[WG - 1u], sHi[WG - 1u]), byMass);
      want = select(vec2u(goal, 0u), scale64(total, goal), byMass);
      // The goal is never reached: everything eligible is kept.
      if (lid == 0u && less64(total, want)) { wFound = 0u; }
    } else {
      want = wGoal;
    }
    workgroupBarrier();
    if (wFound == 1u && !less64(incl, want) && less64(excl, want)) {
      wPrefix = select((prefix << 8u) | bin, bin, level == 0u || level == 4u);
      wGoal = sub64(want, excl);
      wBinCount = ownCount;
      wBinMaxId = atomicLoad(&hMaxId[bin]);
    }
    if (workgroupUniformLoad(&wFound) == 0u) {
      return vec2u(bKey, bId);
    }
    if (level == 3u) {
      cutKey = workgroupUniformLoad(&wPrefix);
      // One token with that key, or every one of them taken: the cut is the last of them.
      let ties = workgroupUniformLoad(&wBinCount);
      let goalLeft = workgroupUniformLoad(&wGoal);
      if (ties == 1u || (!byMass && goalLeft.x == ties)) {
        return vec2u(cutKey, workgroupUniformLoad(&wBinMaxId));
      }
    }
  }
  return vec2u(cutKey, workgroupUniformLoad(&wPrefix));
}

// The kept weight Z over tokens passing min-p and ranked within the cut, and the token in id order at which the
// running weight first exceeds floor(Z * (r + 0.5) / 2^32); each invocation walks its own contiguous chunk of ids.
fn walk(useMinP: bool, cutKey: u32, cutId: u32, uniformBits: u32, pick: bool) {
  let chunk = (n + WG - 1u) / WG;
  let first = min(lid * chunk, n);
  let last = min(first + chunk, n);
  var mass = vec2u(0u);
  for (var i = first; i < last; i++) {
    let b = rowBits(i);
    if (within(keyOf(b), i, cutKey, cutId) && passesMinP(b, useMinP)) { mass = add64(mass, weightOf(b)); }
  }
  sCount[lid] = 0u;
  sLo[lid] = mass.x;
  sHi[lid] = mass.y;
  scan();
  let z = vec2u(sLo[WG - 1u], sHi[WG - 1u]);
  if (lid == 0u) { wZ = z; }
  if (!pick) { return; }
  // z * (r + 0.5) / 2^32, the half as z / 2^33.
  var goal = add64(scale64(z, uniformBits), vec2u(z.y >> 1u, 0u));
  if (!less64(goal, z)) { goal = sub64(z, vec2u(1u, 0u)); }
  var acc = sub64(vec2u(sLo[lid], sHi[lid]), mass);
  if (less64(goal, acc) || !less64(goal, add64(acc, mass))) { return; }
  for (var i = first; i < last; i++) {
    let b = rowBits(i);
    if (!within(keyOf(b), i, cutKey, cutId) || !passesMinP(b, useMinP)) { continue; }
    acc = add64(acc, weightOf(b));
    if (less64(goal, acc)) {
      wChosen = i;
      return;
    }
  }
}

// The highest key and, among its tokens, the lowest id.
fn rowMax() -> vec2u {
  var bestKey = 0u;
  var bestId = ALL_ID;
  for (var i = lid; i < n; i += WG) {
    let k = keyOf(rowBits(i));
    if (k > bestKey) {
      bestKey = k;
      bestId = i;
    }
  }
  sLo[lid] = bestKey;
  sCount[lid] = bestId;
  for (var half = WG / 2u; half > 0u; half = half >> 1u) {
    workgroupBarrier();
    if (lid < half) {
      let k = sLo[lid + half];
      let i = sCount[lid + half];
      if (k > sLo[lid] || (k == sLo[lid] && i < sCount[lid])) {
        sLo[lid] = k;
        sCount[lid] = i;
      }
    }
  }
  let best = vec2u(workgroupUniformLoad(&sLo[0]), workgroupUniformLoad(&sCount[0]));
  workgroupBarrier();
  return best;
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_index) li: u32) {
  let r = wid.x;
  let row = rows[r];
  if (row.mode == MODE_SKIP) { return; }
  lid = li;
  n = shape.vocab;
  base = row.logitsRow * shape.vocab;
  maskAt = row.mask;
  keptAt = row.kept;
  invT = 1.0;
  lnMinP = 0.0;
  let best = rowMax();
  let maxBits = bitsOf(best.x);
  maxF = bitcast<f32>(maxBits);
  let allMasked = maxBits == NEG_INF_BITS;
  let sampling = row.mode != MODE_GREEDY && !allMasked;
  let useMinP = sampling && row.useMinP != 0u;
  var cut = vec2u(ALL_KEY, ALL_ID);
  if (sampling) {
    invT = row.invT;
    lnMinP = row.lnMinP;
    if (row.topK != 0u) { cut = radixCut(false, row.topK, useMinP, cut.x, cut.y); }
    if (row.topP != 0u) { cut = radixCut(true, row.topP, useMinP, cut.x, cut.y); }
  }
  if (lid == 0u) {
    wChosen = best.y;
    wZ = vec2u(0u);
    atomicStore(&topCount, 0u);
  }
  if (!allMasked) { walk(useMinP, cut.x, cut.y, row.uniformBits, sampling); }
  if (sampling) { storeKept(cut.x, cut.y, useMinP); }
  workgroupBarrier();
  let chosen = workgroupUniformLoad(&wChosen);
  // The model's own logit, whatever the mask says (raw log-probabilities).
  if (lid == 0u) { wRawBits = sanitize(logits[base + chosen]); }
  workgroupBarrier();
  for (var e = row.editStart + lid; e < row.editEnd; e += WG) {
    if (edits[e].index == base + chosen) { wRawBits = edits[e].orig; }
  }
  if (row.topN != 0u) {
    let top = radixCut(false, row.topN, false, ALL_KEY, ALL_ID);
    for (var i = lid; i < n; i += WG) {
      let k = keyOf(rowBits(i));
      if (within(k, i, top.x, top.y)) {
        let slot = atomicAdd(&topCount, 1u);
        if (slot < MAX_TOP) {
          topIds[slot] = i;
          topKeys[slot] = k;
        }
      }
    }
  }
  workgroupBarrier();
  if (lid != 0u) { return; }
  let o = r * OUT_WORDS;
  let count = min(atomicLoad(&topCount), MAX_TOP);
  // Insertion sort of at most MAX_TOP tokens into rank order.
  for (var j = 1u; j < count; j++) {
    let id = topIds[j];
    let k = topKeys[j];
    var p = j;
    while (p > 0u && !within(topKeys[p - 1u], topIds[p - 1u], k, id)) {
      topIds[p] = topIds[p - 1u];
      topKeys[p] = topKeys[p - 1u];
      p--;
    }
    topIds[p] = id;
    topKeys[p] = k;
  }
  outs[o] = chosen;
  outs[o + 1u] = rowBits(chosen);
  outs[o + 2u] = select(0u, 1u, allMasked);
  outs[o + 3u] = maxBits;
  outs[o + 4u] = wZ.x;
  outs[o + 5u] = wZ.y;
  outs[o + 6u] = wRawBits;
  outs[o + 7u] = count;
  outs[o + 8u] = cut.x;
  outs[o + 9u] = cut.y;
  outs[o + 10u] = 0u;
  outs[o + 11u] = 0u;
  for (var j = 0u; j < count; j++) {
    let b = bitsOf(topKeys[j]);
    let kept = !allMasked && within(topKeys[j], topIds[j], cut.x, cut.y) && passesMinP(b, useMinP);
    outs[o + 12u + 2u * j] = topIds[j] | select(0u, 0x80000000u, kept);
    outs[o + 13u + 2u * j] = b;
  }
}
