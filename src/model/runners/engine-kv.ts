/**
 * The KV cache rows of the engine graph, kept in the layout it reads: per layer one K buffer
 * [rows, kvHeads, headDim, capacity] (transposed) and one V buffer [rows, kvHeads, capacity, headDim], so a
 * contiguous range of rows is a single subarray of each (other sets of rows, or rows cut to fewer slots, are copied
 * out). Outside this file KV moves in the canonical layout [layers][K, V][kvHeads][token][headDim] (what the prefix
 * cache stores).
 */
import { freeBuffer } from "../../runtime/gc.ts";

/** The cache dimensions of a model. */
export interface KvShape {
  numLayers: number;
  numKvHeads: number;
  headDim: number;
}

/**
 * Slots a row is given for `length` tokens: 64 at least, then four sizes per doubling (80, 96, 112, 128, 160, ...;
 * steps of at most 1024). A step's attention reads every slot of the rows it runs, held or not, so unused slots cost
 * as much as tokens: these sizes leave at most a fifth of them unused where powers of two left up to half, for four
 * re-layouts per doubling of the longest row instead of one.
 */
export function engineRowCapacity(length: number, maxLength: number): number {
  if (length > maxLength) throw new Error(`a row of ${length} tokens exceeds the maximum length ${maxLength}`);
  if (length <= 64) return Math.min(64, maxLength);
  const step = Math.min(1024, 2 ** (Math.ceil(Math.log2(length)) - 3));
  return Math.min(Math.ceil(length / step) * step, maxLength);
}

/**
 * Per-layer K/V row buffers in the engine graph's layout. Rows [0, rows) are held: the row count and the slots per
 * row both change by re-laying out the buffers, so that memory follows the rows in use rather than the most there
 * may ever be.
 */
export class EngineKv {
  /** Floats one token takes across layers, K and V. */
  readonly floatsPerToken: number;
  #keys: Float32Array[] = [];
  #values: Float32Array[] = [];
  #capacity = 0;
  #rows = 0;

  /** `rows`: rows the first resize lays out, unless it says otherwise. */
  constructor(readonly shape: KvShape, rows = 0) {
    this.floatsPerToken = shape.numLayers * 2 * shape.numKvHeads * shape.headDim;
    this.#rows = rows;
  }

  /** Token slots per row. */
  get capacity(): number {
    return this.#capacity;
  }

  /** Rows held (rows at or above this hold nothing). */
  get rows(): number {
    return this.#rows;
  }

  /** Bytes held. */
  get bytes(): number {
    return this.#rows * this.#capacity * this.floatsPerToken * 4;
  }

  /**
   * Re-lays out the buffers for `rows` rows of `capacity` slots, keeping the first min(old, new) tokens of each of
   * the first min(old, new) rows.
   */
  resize(capacity: number, rows = this.#rows): void {
    if (capacity === this.#capacity && rows === this.#rows) return;
    const { numLayers, numKvHeads: kvh, headDim: d } = this.shape;
    const old = this.#capacity;
    const keep = Math.min(old, capacity);
    const kept = Math.min(this.#rows, rows);
    const size = rows * kvh * d * capacity;
    // Layer by layer, each old buffer is freed as its successor is filled: the peak is one layer over the larger
    // layout, not both layouts whole (where the runtime can free a buffer at once: freeBuffer; elsewhere the old
    // buffers wait for the garbage collector).
    const [keys, values] = [this.#keys, this.#values];
    for (let l = 0; l < numLayers; l++) {
      const k = new Float32Array(size);
      const v = new Float32Array(size);
      if (keep > 0 && kept > 0) {
        const [oldK, oldV] = [keys[l], values[l]];
        if (old === capacity) {
          // Same slots per row: the kept rows are one prefix of each buffer.
          k.set(oldK.subarray(0, kept * kvh * d * old));
          v.set(oldV.subarray(0, kept * kvh * d * old));
        } else {
          for (let run = 0; run < kept * kvh * d; run++) {
            k.set(oldK.subarray(run * old, run * old + keep), run * capacity);
          }
          for (let run = 0; run < kept * kvh; run++) {
            v.set(oldV.subarray(run * old * d, (run * old + keep) * d), run * capacity * d);
          }
        }
      }
      if (l < keys.length) {
        freeBuffer(keys[l].buffer);
        freeBuffer(values[l].buffer);
      }
      keys[l] = k;
      values[l] = v;
    }
    [this.#capacity, this.#rows] = [capacity, rows];
  }

  /** Frees the buffers. */
  clear(): void {
    for (const buffer of [...this.#keys, ...this.#values]) freeBuffer(buffer.buffer);
    [this.#keys, this.#values, this.#capacity, this.#rows] = [[], [], 0, 0];
  }

  /** Layer `layer`'s K and V of rows [first, first + count), as views (no copy). */
  rowRange(layer: number, first: number, count: number): { key: Float32Array; value: Float32Array } {
    const stride = this.shape.numKvHeads * this.shape.headDim * this.#capacity;
    const [from, to] = [first * stride, (first + count) * stride];
    return { key: this.#keys[layer].subarray(from, to), value: this.#values[layer].subarray(from, to) };
  }

  /**
   * Layer `layer`'s K and V of the given rows, in that order, cut to each row's first `slots` slots: written into
   * `key` as [rows, kvHeads, headDim, slots] and into `value` as [rows, kvHeads, slots, headDim] (for a run that
   * copies the cache anyway, so that it copies only the slots its rows use).
   */
  copyRows(layer: number, rows: readonly number[], slots: number, key: Float32Array, value: Float32Array): void {
    const { numKvHeads: kvh, headDim: d } = this.shape;
    const cap = this.#capacity;
    if (slots > cap) throw new Error(`${slots} slots asked of rows of ${cap}`);
    const [keys, values] = [this.#keys[layer], this.#values[layer]];
    rows.forEach((row, b) => {
      for (let h = 0; h < kvh; h++) {
        const [from, to] = [row * kvh + h, b * kvh + h];
        value.set(values.subarray(from * cap * d, (from * cap + slots) * d), to * slots * d);
        if (slots === cap) {
          key.set(keys.subarray(from * d * cap, (from + 1) * d * cap), to * d * cap);
          continue;
        }
        for (let i = 0; i < d; i++) {
          const src = (from * d + i) * cap;
          key.set(keys.subarray(src, src + slots), (to * d + i) * slots);
        }
      }
    });
  }

  /**
   * Stores new tokens' K and V ([batch, kvHeads, seq, headDim], as the graph outputs them): the first lengths[b]
   * tokens of batch entry b go into row rows[b] at slots [starts[b], starts[b] + lengths[b]).
   */
  storeNew(
    layer: number,
    rows: readonly number[],
    starts: readonly number[],
    lengths: readonly number[],
    seq: number,
    key: Float32Array,
    value: Float32Array,
  ) {
    const { numKvHeads: kvh, headDim: d } = this.shape;
    const cap = this.#capacity;
    const [keys, values] = [this.#keys[layer], this.#values[layer]];
    rows.forEach((row, b) => {
      const [start, length] = [starts[b], lengths[b]];
      for (let h = 0; h < kvh; h++) {
        const src = (b * kvh + h) * seq * d;
        const run = row * kvh + h;
        values.set(value.subarray(src, src + length * d), (run * cap + start) * d);
        for (let i = 0; i < d; i++) {
          const dst = (run * d + i) * cap + start;
          for (let s = 0; s < length; s++) keys[dst + s] = key[src + s * d + i];
        }
      }
    });
  }

  /** Copies slots [0, length) of row `from` into row `to`. */
  copyRow(from: number, to: number, length: number): void {
    const { numKvHeads: kvh, headDim: d } = this.shape;
    const cap = this.#capacity;
    for (let l = 0; l < this.shape.numLayers; l++) {
      const [keys, values] = [this.#keys[l], this.#values[l]];
      for (let h = 0; h < kvh; h++) {
        for (let i = 0; i < d; i++) {
          const src = ((from * kvh + h) * d + i) * cap;
          keys.copyWithin(((to * kvh + h) * d + i) * cap, src, src + length);
        }
        const src = (from * kvh + h) * cap * d;
        values.copyWithin((to * kvh + h) * cap * d, src, src + length * d);
      }
    }
  }

  /** Copies slots [start, start + length) of `row` into `out`, in the canonical layout. */
  read(row: number, start: number, length: number, out: Float32Array): void {
    this.#transfer(row, start, length, out, false);
  }

  /** Writes `data` (canonical layout) into slots [start, start + length) of `row`. */
  write(row: number, start: number, length: number, data: Float32Array): void {
    this.#transfer(row, start, length, data, true);
  }

  #transfer(row: number, start: number, length: number, canonical: Float32Array, intoRow: boolean): void {
    const { numLayers, numKvHeads: kvh, headDim: d } = this.shape;
    const cap = this.#capacity;
    const block = kvh * length * d;
    for (let l = 0; l < numLayers; l++) {
      const [keys, values] = [this.#keys[l], this.#values[l]];
      for (let h = 0; h < kvh; h++) {
        const kBase = (2 * l * kvh + h) * length * d; // canonical [l][K][h][token][d]
        const vBase = kBase + block; // canonical [l][V][h][token][d]
        const kRow = (row * kvh + h) * d * cap + start; // the row's K: [h][d][slot]
        const vRow = ((row * kvh + h) * cap + start) * d; // the row's V: [h][slot][d]
        if (intoRow) {
          values.set(canonical.subarray(vBase, vBase + length * d), vRow);
          transpose(canonical, kBase, d, keys, kRow, cap, length, d);
        } else {
          canonical.set(values.subarray(vRow, vRow + length * d), vBase);
          transpose(keys, kRow, cap, canonical, kBase, d, d, length);
        }
      }
    }
  }
}

/**
 * Writes the transpose of the `rows` x `cols` matrix at `src[from]` (row stride `srcStride`) to `dst[to]` (row stride
 * `dstStride`): dst[to + c * dstStride + r] = src[from + r * srcStride + c]. Rows of the destination are filled four
 * elements at a time: element by element, a 16-token block of bench-135m took 0.82 ms to read on Node 20 and 0.83 on
 * Deno against 0.23 and 0.22 (Bun: 0.15 against 0.12).
 */
function transpose(
  src: Float32Array,
  from: number,
  srcStride: number,
  dst: Float32Array,
  to: number,
  dstStride: number,
  rows: number,
  cols: number,
): void {
  const whole = rows - (rows % 4);
  for (let c = 0; c < cols; c++) {
    let s = from + c;
    let o = to + c * dstStride;
    let r = 0;
    for (; r < whole; r += 4, s += 4 * srcStride, o += 4) {
      dst[o] = src[s];
      dst[o + 1] = src[s + srcStride];
      dst[o + 2] = src[s + 2 * srcStride];
      dst[o + 3] = src[s + 3 * srcStride];
    }
    for (; r < rows; r++, s += srcStride) dst[o++] = src[s];
  }
}
