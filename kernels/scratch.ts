/**
 * What every pass of the CPU sampler shares: its limits, the per-row scratch buffers (so a decode step allocates
 * nothing) and a fast exp for the weights.
 */
import { EXP_FLOOR, EXP_STEPS, EXP_TABLE, SamplingKernels } from "./sampling-simd.ts";

/** Log-probabilities are never reported below this (vLLM's floor; masked tokens are -inf), and never NaN. */
export const LOGPROB_FLOOR = -9999;
/** Top-k at or below this selects with a heap; above it, with the histogram. */
export const HEAP_LIMIT = 1024;
/** Bins of the histogram path (kernels/histogram.ts). */
export const BINS = 1 << 16;
/** Boundary-bin tokens sort as one float64 each: (inverted low 16 bits) * ID_SPACE + id. */
export const ID_SPACE = 1 << 21;

/** Reusable buffers and the state of the row being sampled, so a decode step allocates nothing. */
export class SamplingScratch {
  readonly logits: Float32Array;
  /** The SIMD passes, over `logits` and `weights` (which live in their memory); null where WebAssembly SIMD is missing. */
  readonly kernels: SamplingKernels | null;
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

  /** `simd: false` keeps to the JavaScript passes (their twin's tests compare the two). */
  constructor(readonly capacity: number, options: { simd?: boolean } = {}) {
    if (capacity > ID_SPACE) throw new RangeError(`vocabulary of ${capacity} tokens is over ${ID_SPACE}`);
    this.kernels = options.simd === false ? null : SamplingKernels.create(capacity);
    this.logits = this.kernels?.logits ?? new Float32Array(capacity);
    this.bits = new Int32Array(this.logits.buffer, this.logits.byteOffset, capacity);
    this.weights = this.kernels?.weights ?? new Float64Array(capacity);
    this.counts = new Uint32Array(capacity);
    this.binKeys = new Float64Array(capacity);
  }
}

// exp(x) for x <= 0 from a table of exp(-j/64) and a degree-4 correction (relative error < 1e-11), 3-4x faster
// than Math.exp on V8. Below -104 (a weight under 1e-45 of the top token's) it is 0: such a token is never drawn,
// though its log-probability is still reported exactly.
/** exp(x) for x <= 0; 0 below -104, for -inf and for NaN. */
export function expNonPositive(x: number): number {
  const q = x * -EXP_STEPS;
  if (!(q < EXP_FLOOR)) return 0;
  const j = q | 0;
  const d = (j - q) * (1 / EXP_STEPS);
  // Multiplications only (no division): the SIMD twin (sampling-simd.ts) does the same operations in this order.
  return EXP_TABLE[j] * (1 + d * (1 + d * (0.5 + d * (1 / 6 + d * (1 / 24)))));
}
