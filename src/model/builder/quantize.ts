/**
 * Number formats for weights: float16 conversion and 8- and 4-bit block quantization in the layout of
 * com.microsoft MatMulNBits. Only exact arithmetic is used, so every runtime writes the same bytes.
 */

const scratchF32 = new Float32Array(1);
const scratchU32 = new Uint32Array(scratchF32.buffer);

/** IEEE half-precision bits of `x` (rounded to float32 first), rounded to nearest even. */
export function toFloat16Bits(x: number): number {
  scratchF32[0] = x;
  return halfFromFloatBits(scratchU32[0]);
}

function halfFromFloatBits(bits: number): number {
  const sign = (bits >>> 16) & 0x8000;
  const exp = (bits >>> 23) & 0xff;
  const mant = bits & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0); // inf / nan
  const e = exp - 127 + 15;
  if (e >= 0x1f) return sign | 0x7c00; // overflow to inf
  if (e <= 0) {
    if (e < -10) return sign; // underflows to zero
    const m = mant | 0x800000;
    const shift = 14 - e;
    let half = m >>> shift;
    const rest = m & ((1 << shift) - 1);
    const mid = 1 << (shift - 1);
    if (rest > mid || (rest === mid && (half & 1))) half++;
    return sign | half;
  }
  let half = (e << 10) | (mant >>> 13);
  const rest = mant & 0x1fff;
  // Carry from rounding may roll into the exponent, which is the correct result (up to inf).
  if (rest > 0x1000 || (rest === 0x1000 && (half & 1))) half++;
  return sign | half;
}

/** Encodes numbers as little-endian float16 bytes. */
export function float16Bytes(values: ArrayLike<number>): Uint8Array {
  const f32 = values instanceof Float32Array ? values : Float32Array.from(values);
  const bits = new Uint32Array(f32.buffer, f32.byteOffset, f32.length);
  const out = new Uint8Array(f32.length * 2);
  for (let i = 0; i < bits.length; i++) {
    const h = halfFromFloatBits(bits[i]);
    out[i * 2] = h & 0xff;
    out[i * 2 + 1] = h >>> 8;
  }
  return out;
}

/** Decodes IEEE half-precision bits to a number. */
export function fromFloat16Bits(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >>> 10) & 0x1f;
  const mant = h & 0x3ff;
  if (exp === 0) return sign * mant * 2 ** -24;
  if (exp === 0x1f) return mant ? NaN : sign * Infinity;
  return sign * (1 + mant / 1024) * 2 ** (exp - 15);
}

/** Bits per weight of the block formats MatMulNBits reads. */
export type QuantBits = 4 | 8;

/**
 * A weight quantized for MatMulNBits: B [N, K/block, block * bits / 8] uint8 (codes packed low nibble first for 4
 * bits), scales [N * K/block]. Codes are symmetric around MatMulNBits' default zero point 2^(bits-1), so no zero
 * points are stored.
 */
export interface QuantizedWeight {
  packed: Uint8Array;
  scales: Float32Array;
  blocks: number;
}

/** How a float weight is laid out: [K, N] (a MatMul's B, the builder's linear weights) or [N, K] (an embedding table). */
export type WeightLayout = "kn" | "nk";

/**
 * Quantizes a weight to symmetric `bits`-bit blocks of `block` values along K: per block, scale = max|x| / (2^(bits-1)
 * - 1) rounded to float32 and code = round(x / scale) + 2^(bits-1), clamped to the code range. `w` is [k, n]
 * row-major, or [n, k] with layout "nk".
 */
export function quantizeBlocks(
  w: Float32Array,
  k: number,
  n: number,
  bits: QuantBits,
  block: number,
  layout: WeightLayout = "kn",
): QuantizedWeight {
  if (k % block !== 0) throw new Error(`q${bits}: K=${k} is not a multiple of the block size ${block}`);
  const blocks = k / block;
  const blob = (block * bits) / 8;
  const zero = 1 << (bits - 1);
  const maxCode = (1 << bits) - 1;
  const packed = new Uint8Array(n * blocks * blob);
  const scales = new Float32Array(n * blocks);
  // Element j of column col: one stride along K and one along N, whichever way the matrix is stored.
  const [kStride, nStride] = layout === "kn" ? [n, 1] : [1, k];
  const values = new Float64Array(block);
  for (let col = 0; col < n; col++) {
    for (let b = 0; b < blocks; b++) {
      let amax = 0;
      for (let j = 0; j < block; j++) {
        values[j] = w[(b * block + j) * kStride + col * nStride];
        amax = Math.max(amax, Math.abs(values[j]));
      }
      const scale = Math.fround(amax / (zero - 1));
      scales[col * blocks + b] = scale;
      const base = (col * blocks + b) * blob;
      for (let j = 0; j < block; j++) {
        const q = scale === 0 ? zero : Math.min(maxCode, Math.max(0, Math.round(values[j] / scale) + zero));
        if (bits === 8) packed[base + j] = q;
        else packed[base + (j >> 1)] |= j & 1 ? q << 4 : q;
      }
    }
  }
  return { packed, scales, blocks };
}

/** The float weight, [k, n] row-major (or [n, k] with layout "nk"), that a QuantizedWeight stands for. */
export function dequantizeBlocks(
  q: Pick<QuantizedWeight, "packed" | "scales">,
  k: number,
  n: number,
  bits: QuantBits,
  block: number,
  layout: WeightLayout = "kn",
): Float32Array {
  const blocks = k / block;
  const blob = (block * bits) / 8;
  const zero = 1 << (bits - 1);
  const [kStride, nStride] = layout === "kn" ? [n, 1] : [1, k];
  const w = new Float32Array(k * n);
  for (let col = 0; col < n; col++) {
    for (let b = 0; b < blocks; b++) {
      const scale = q.scales[col * blocks + b];
      const base = (col * blocks + b) * blob;
      for (let j = 0; j < block; j++) {
        const code = bits === 8 ? q.packed[base + j] : (q.packed[base + (j >> 1)] >> (j & 1 ? 4 : 0)) & 15;
        w[(b * block + j) * kStride + col * nStride] = (code - zero) * scale;
      }
    }
  }
  return w;
}

/** Quantizes `w` ([k rows, n columns], row-major) to symmetric 4-bit blocks along K (zero point 8). */
export function quantizeQ4(w: Float32Array, k: number, n: number, block = 32): QuantizedWeight {
  return quantizeBlocks(w, k, n, 4, block);
}

/** The [K, N] float weight a 4-bit QuantizedWeight stands for (what MatMulNBits multiplies by). */
export function dequantizeQ4(q: Pick<QuantizedWeight, "packed" | "scales">, k: number, n: number, block = 32): Float32Array {
  return dequantizeBlocks(q, k, n, 4, block);
}

/** Quantizes `w` ([k rows, n columns], row-major) to symmetric 8-bit blocks along K (zero point 128). */
export function quantizeQ8(w: Float32Array, k: number, n: number, block = 32): QuantizedWeight {
  return quantizeBlocks(w, k, n, 8, block);
}

/** The [K, N] float weight an 8-bit QuantizedWeight stands for. */
export function dequantizeQ8(q: Pick<QuantizedWeight, "packed" | "scales">, k: number, n: number, block = 32): Float32Array {
  return dequantizeBlocks(q, k, n, 8, block);
}

let halfTable: Float32Array | undefined;

/** Decodes float16 bits to float32 values (through a 65,536-entry table: big tensors decode fast). */
export function float16ToFloat32(bits: Uint16Array): Float32Array {
  if (!halfTable) {
    halfTable = new Float32Array(65536);
    for (let h = 0; h < 65536; h++) halfTable[h] = fromFloat16Bits(h);
  }
  const out = new Float32Array(bits.length);
  for (let i = 0; i < bits.length; i++) out[i] = halfTable[bits[i]];
  return out;
}
