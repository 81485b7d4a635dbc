/**
 * The CPU sampler's hottest passes in WebAssembly SIMD: the row's argmax (with the check for NaN and +inf), the
 * weights exp((l - max) / T) and their sum, and the inverse-CDF walk. They give the very bits the JavaScript passes
 * in sampling.ts give: the same float64 operations in the same order (no fused multiply-add, the same exp table,
 * the weights summed one at a time in id order); only the exp's arithmetic runs two lanes at a time. A row at
 * temperature 1 costs under half the JavaScript passes' time on V8 and JavaScriptCore. Where WebAssembly SIMD is missing,
 * SamplingScratch has no kernels and the JavaScript passes run.
 */
import { assembleModule, type WasmFunction } from "./wasm-assembler.ts";

// The weights' exp: exp(-j / EXP_STEPS) from a table, times a degree-4 polynomial in the remainder (scratch.ts).
/** Table entries a nat. */
export const EXP_STEPS = 64;
/** exp(x) is 0 where x * -EXP_STEPS is not below this (x < -104). */
export const EXP_FLOOR = 104 * EXP_STEPS;

/** exp(-j / EXP_STEPS), shared by the JavaScript exp and the kernels (at the start of their memory). */
export const EXP_TABLE = new Float64Array(EXP_FLOOR + 1).map((_, j) => Math.exp(-j / EXP_STEPS));

// argmax of f32 logits at $l ([0, n), n >= 1), or -1 when one is NaN or +inf. Pads the row to whole lanes with -inf
// first (the memory has room), so the lane loop needs no tail. The running max is f32x4.pmax (b > a ? b : a), one
// instruction on x64, where f32x4.max's rules for NaN and signed zeros take several in the loop's dependency chain
// (a row's scan took 5x as long): NaN is caught by $bad, and the lanes equal to the max are looked for with f32x4.eq,
// which holds -0 and +0 equal.
const scan: WasmFunction = {
  name: "scan",
  params: [["l", "i32"], ["n", "i32"]],
  result: "i32",
  locals: [["p", "i32"], ["end", "i32"], ["v", "v128"], ["top", "v128"], ["bad", "v128"], ["inf", "v128"], ["m", "f32"]],
  body: `
    local.get $l local.get $n i32.const 2 i32.shl i32.add local.set $p
    local.get $n i32.const 3 i32.add i32.const -4 i32.and i32.const 2 i32.shl local.get $l i32.add local.set $end
    block $padded loop $pad
      local.get $p local.get $end i32.ge_u br_if $padded
      local.get $p f32.const -inf f32.store
      local.get $p i32.const 4 i32.add local.set $p
      br $pad
    end end
    f32.const inf f32x4.splat local.set $inf
    f32.const -inf f32x4.splat local.set $top
    local.get $l local.set $p
    loop $lanes
      local.get $p v128.load local.set $v
      local.get $bad local.get $v local.get $v f32x4.ne local.get $v local.get $inf f32x4.eq v128.or v128.or local.set $bad
      local.get $top local.get $v f32x4.pmax local.set $top
      local.get $p i32.const 16 i32.add local.tee $p local.get $end i32.lt_u br_if $lanes
    end
    local.get $bad v128.any_true if i32.const -1 return end
    local.get $top f32x4.extract_lane 0 local.get $top f32x4.extract_lane 1 f32.max
    local.get $top f32x4.extract_lane 2 local.get $top f32x4.extract_lane 3 f32.max f32.max local.set $m
    ;; The first lane group holding the max, then the first lane in it: the lowest index among equals.
    local.get $m f32x4.splat local.set $top
    local.get $l local.set $p
    block $found loop $groups
      local.get $p v128.load local.get $top f32x4.eq v128.any_true br_if $found
      local.get $p i32.const 16 i32.add local.set $p
      br $groups
    end end
    loop $lane
      local.get $p f32.load local.get $m f32.eq if local.get $p local.get $l i32.sub i32.const 2 i32.shr_u return end
      local.get $p i32.const 4 i32.add local.set $p
      br $lane
    end
    i32.const -1`,
};

// One or two weights from the logits at $p: x = (l - max) * invT; 0 when x < lnMinP or q = x * -EXP_STEPS is not
// below EXP_FLOOR, else table[j] * (1 + d (1 + d (1/2 + d (1/6 + d (1/24))))) with j = trunc(q),
// d = (j - q) (1/EXP_STEPS): scratch.ts's expNonPositive, operation for operation. j is floor(q) kept in float64
// (q >= 0, so it is trunc(q) wherever the weight is kept) and capped at EXP_FLOOR, NaN included, so that the table
// read stays in bounds; its index comes out of the float's low bits after adding 2^52. Cheaper than converting
// to integers and back (i32x4.trunc_sat_f64x2_s_zero is several instructions on x64).
const weightPair = `
  local.get $p v128.load64_zero f64x2.promote_low_f32x4 local.get $max f64x2.sub local.get $invT f64x2.mul local.set $x
  local.get $x local.get $negSteps f64x2.mul local.set $q
  local.get $q local.get $floor f64x2.lt local.get $x local.get $lnMinP f64x2.lt v128.andnot local.set $keep
  local.get $floor local.get $q f64x2.floor f64x2.pmin local.tee $jf local.get $magic f64x2.add local.set $j
  local.get $j i32x4.extract_lane 0 i32.const 3 i32.shl f64.load f64x2.splat
  local.get $j i32x4.extract_lane 2 i32.const 3 i32.shl f64.load f64x2.replace_lane 1 local.set $t
  local.get $jf local.get $q f64x2.sub local.get $perStep f64x2.mul local.set $d
  local.get $d local.get $d local.get $d local.get $d local.get $twentyFourth f64x2.mul local.get $sixth f64x2.add
  f64x2.mul local.get $half f64x2.add f64x2.mul local.get $one f64x2.add f64x2.mul local.get $one f64x2.add
  local.get $t f64x2.mul local.get $keep v128.and local.set $w`;

const f64x2Constants: [string, number][] = [
  ["negSteps", -EXP_STEPS], ["floor", EXP_FLOOR], ["magic", 2 ** 52], ["perStep", 1 / EXP_STEPS], ["twentyFourth", 1 / 24], ["sixth", 1 / 6], ["half", 0.5], ["one", 1],
];

// Weights of the n logits at $l (written to $w when $store is 1) and their sum, added in id order.
const weights: WasmFunction = {
  name: "weights",
  params: [["l", "i32"], ["out", "i32"], ["n", "i32"], ["m", "f64"], ["inverseT", "f64"], ["minP", "f64"], ["store", "i32"]],
  result: "f64",
  locals: [
    ["p", "i32"], ["end", "i32"], ["z", "f64"], ["x", "v128"], ["q", "v128"], ["keep", "v128"], ["j", "v128"],
    ["t", "v128"], ["d", "v128"], ["w", "v128"], ["jf", "v128"], ["max", "v128"], ["invT", "v128"], ["lnMinP", "v128"],
    ...f64x2Constants.map(([name]): [string, "v128"] => [name, "v128"]),
  ],
  body: `
    local.get $m f64x2.splat local.set $max
    local.get $inverseT f64x2.splat local.set $invT
    local.get $minP f64x2.splat local.set $lnMinP
    ${f64x2Constants.map(([name, value]) => `f64.const ${value} f64x2.splat local.set $${name}`).join("\n")}
    local.get $l local.set $p
    local.get $l local.get $n i32.const 2 i32.shl i32.add local.set $end
    block $pairs loop $pair
      local.get $p i32.const 8 i32.add local.get $end i32.gt_u br_if $pairs
      ${weightPair}
      local.get $store if local.get $out local.get $w v128.store end
      local.get $z local.get $w f64x2.extract_lane 0 f64.add local.get $w f64x2.extract_lane 1 f64.add local.set $z
      local.get $p i32.const 8 i32.add local.set $p
      local.get $out i32.const 16 i32.add local.set $out
      br $pair
    end end
    ;; An odd row's last logit: the pair's second lane reads the padding and is dropped.
    local.get $p local.get $end i32.lt_u if
      ${weightPair}
      local.get $store if local.get $out local.get $w f64x2.extract_lane 0 f64.store end
      local.get $z local.get $w f64x2.extract_lane 0 f64.add local.set $z
    end
    local.get $z`,
};

// The first token with weight, in id order, at which the running sum of the n weights at $w exceeds target; the last
// one with weight when rounding leaves the sum short ($last when none has).
const pick: WasmFunction = {
  name: "pick",
  params: [["w", "i32"], ["n", "i32"], ["target", "f64"], ["last", "i32"]],
  result: "i32",
  locals: [["i", "i32"], ["v", "f64"], ["acc", "f64"]],
  body: `
    block $done loop $walk
      local.get $i local.get $n i32.ge_u br_if $done
      local.get $w f64.load local.tee $v f64.const 0 f64.ne if
        local.get $i local.set $last
        local.get $acc local.get $v f64.add local.tee $acc local.get $target f64.gt if local.get $i return end
      end
      local.get $w i32.const 8 i32.add local.set $w
      local.get $i i32.const 1 i32.add local.set $i
      br $walk
    end end
    local.get $last`,
};

interface Exports {
  scan(l: number, n: number): number;
  weights(l: number, out: number, n: number, max: number, invT: number, lnMinP: number, store: number): number;
  pick(w: number, n: number, target: number, last: number): number;
}

let compiled: WebAssembly.Module | null | undefined;

// Compiled once a process; null where WebAssembly or its SIMD is missing (or code from bytes is not allowed).
function kernelModule(): WebAssembly.Module | null {
  if (compiled === undefined) {
    try {
      compiled = new WebAssembly.Module(assembleModule([scan, weights, pick]));
    } catch {
      compiled = null;
    }
  }
  return compiled;
}

const align = (bytes: number) => Math.ceil(bytes / 64) * 64;

/** The kernels over one row buffer: `logits` (float32) and `weights` (float64) live in their memory. */
export class SamplingKernels {
  readonly logits: Float32Array;
  readonly weights: Float64Array;
  readonly #exports: Exports;
  readonly #logitsAt: number;
  readonly #weightsAt: number;

  private constructor(module: WebAssembly.Module, capacity: number) {
    this.#logitsAt = align(EXP_TABLE.byteLength);
    // Room for the padding to whole lanes of four.
    this.#weightsAt = this.#logitsAt + align((capacity + 4) * 4);
    const bytes = this.#weightsAt + align((capacity + 2) * 8);
    const memory = new WebAssembly.Memory({ initial: Math.ceil(bytes / 65536) });
    this.#exports = new WebAssembly.Instance(module, { env: { memory } }).exports as unknown as Exports;
    new Float64Array(memory.buffer, 0, EXP_TABLE.length).set(EXP_TABLE);
    this.logits = new Float32Array(memory.buffer, this.#logitsAt, capacity);
    this.weights = new Float64Array(memory.buffer, this.#weightsAt, capacity);
  }

  /** Kernels for rows of up to `capacity` logits, or null where WebAssembly SIMD is missing. */
  static create(capacity: number): SamplingKernels | null {
    const module = kernelModule();
    if (module === null) return null;
    try {
      return new SamplingKernels(module, capacity);
    } catch {
      // A runtime that compiles modules but refuses the memory or the instance: the JavaScript passes run.
      return null;
    }
  }

  /** The argmax of logits[0, n) (lowest index among equals), or -1 when one is NaN or +inf. */
  argmaxIfOrdered(n: number): number {
    return this.#exports.scan(this.#logitsAt, n);
  }

  /** Sets weights[0, n) as sampling.ts's allWeights does and returns their sum. */
  weigh(n: number, max: number, invT: number, lnMinP: number): number {
    return this.#exports.weights(this.#logitsAt, this.#weightsAt, n, max, invT, lnMinP, 1);
  }

  /** The sum of exp(l - max) over logits[0, n), as sampling.ts's logSumExp sums it (weights left untouched). */
  sumExp(n: number, max: number): number {
    return this.#exports.weights(this.#logitsAt, this.#weightsAt, n, max, 1, -Infinity, 0);
  }

  /** sampling.ts's pickWeighted over weights[0, n). */
  pick(n: number, target: number, last: number): number {
    return this.#exports.pick(this.#weightsAt, n, target, last);
  }
}
