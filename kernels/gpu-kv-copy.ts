/**
 * Copying token ranges of the KV cache between rows, on the GPU (kv-copy.wgsl) and its CPU twin: forking a
 * prompt's cached prefix to the rows of its n samples, or moving a sequence to another row, without the cache
 * leaving the device. Per layer, K and V each live in one buffer of rows laid out [rows, kvHeads, headDim,
 * capacity] ("dim-slot", the engine graph's K) or [rows, kvHeads, capacity, headDim] ("slot-dim", its V), with
 * 32-bit elements. The two agree exactly: both only move words.
 */
import { COPY_DST, kernelPipeline, STORAGE, UNIFORM } from "./webgpu.ts";

/** The order of a row's last two axes: tokens then dims ("slot-dim") or dims then tokens ("dim-slot"). */
export type KvAxisOrder = "slot-dim" | "dim-slot";

/** How one layer's K and V rows are laid out. */
export interface KvRowsLayout {
  rows: number;
  numKvHeads: number;
  headDim: number;
  /** Token slots per row. */
  capacity: number;
  key: KvAxisOrder;
  value: KvAxisOrder;
}

/** Tokens [fromStart, fromStart + length) of row fromRow to [toStart, toStart + length) of row toRow. */
export interface KvRangeCopy {
  fromRow: number;
  fromStart: number;
  toRow: number;
  toStart: number;
  length: number;
}

/** The copies that give each of `toRows` the first `length` tokens of `fromRow` (n samples of one prompt). */
export function forkPrefix(fromRow: number, toRows: readonly number[], length: number): KvRangeCopy[] {
  return toRows.map((toRow) => ({ fromRow, fromStart: 0, toRow, toStart: 0, length }));
}

/**
 * Throws unless every copy is inside the layout and no destination overlaps any copy's source or destination
 * (then the copies' order does not matter, on the GPU or here).
 */
export function checkKvCopies(layout: KvRowsLayout, copies: readonly KvRangeCopy[]): void {
  for (const c of copies) {
    const whole = [c.fromRow, c.fromStart, c.toRow, c.toStart, c.length].every((x) => Number.isInteger(x) && x >= 0);
    if (!whole || c.fromRow >= layout.rows || c.toRow >= layout.rows) {
      throw new RangeError(`KV copy ${JSON.stringify(c)} is outside ${layout.rows} rows`);
    }
    if (c.fromStart + c.length > layout.capacity || c.toStart + c.length > layout.capacity) {
      throw new RangeError(`KV copy ${JSON.stringify(c)} runs past ${layout.capacity} slots`);
    }
  }
  const overlaps = (rowA: number, startA: number, rowB: number, startB: number, length: number, lengthB: number) =>
    rowA === rowB && startA < startB + lengthB && startB < startA + length;
  copies.forEach((a, i) => {
    if (a.length === 0) return;
    copies.forEach((b, j) => {
      if (b.length === 0) return;
      const onSource = overlaps(a.toRow, a.toStart, b.fromRow, b.fromStart, a.length, b.length);
      const onDestination = i !== j && overlaps(a.toRow, a.toStart, b.toRow, b.toStart, a.length, b.length);
      if (onSource || onDestination) {
        throw new RangeError(`KV copy ${JSON.stringify(a)} overwrites tokens that ${JSON.stringify(b)} also touches`);
      }
    });
  });
}

/** The CPU twin: applies the copies to one layer's K and V (any 32-bit typed arrays) in place. */
export function copyKvRanges(
  layout: KvRowsLayout,
  key: Float32Array | Uint32Array,
  value: Float32Array | Uint32Array,
  copies: readonly KvRangeCopy[],
): void {
  checkKvCopies(layout, copies);
  for (const c of copies) {
    copyRange(layout, layout.key, key, c);
    copyRange(layout, layout.value, value, c);
  }
}

function copyRange(layout: KvRowsLayout, order: KvAxisOrder, data: Float32Array | Uint32Array, c: KvRangeCopy): void {
  const { numKvHeads: heads, headDim: d, capacity: cap } = layout;
  for (let h = 0; h < heads; h++) {
    const [from, to] = [c.fromRow * heads + h, c.toRow * heads + h];
    if (order === "slot-dim") {
      const src = (from * cap + c.fromStart) * d;
      data.copyWithin((to * cap + c.toStart) * d, src, src + c.length * d);
      continue;
    }
    for (let i = 0; i < d; i++) {
      const src = (from * d + i) * cap + c.fromStart;
      data.copyWithin((to * d + i) * cap + c.toStart, src, src + c.length);
    }
  }
}

/** One layer's K and V buffers (STORAGE usage), each holding every row. */
export interface KvLayerBuffers {
  key: GPUBuffer;
  value: GPUBuffer;
}

/**
 * Writes `words` at the start of `buffer` (a STORAGE | COPY_DST buffer), first swapping it for one twice their size
 * when they do not fit; returns the buffer that holds them.
 */
export function uploadWords(device: GPUDevice, buffer: GPUBuffer, words: Uint32Array, label: string): GPUBuffer {
  if (buffer.size < words.byteLength) {
    buffer.destroy();
    buffer = device.createBuffer({ size: 2 * words.byteLength, usage: STORAGE | COPY_DST, label });
  }
  device.queue.writeBuffer(buffer, 0, words);
  return buffer;
}

const COPY_WORDS = 5;
const WORKGROUP = 256;
const MAX_GROUPS = 65_535;

/** Copies KV token ranges between rows of GPU buffers. */
export class GpuKvCopier {
  readonly #device: GPUDevice;
  readonly #pipeline: GPUComputePipeline;
  readonly #layout: GPUBuffer;
  #copies: GPUBuffer;

  private constructor(device: GPUDevice, pipeline: GPUComputePipeline) {
    this.#device = device;
    this.#pipeline = pipeline;
    this.#layout = device.createBuffer({ size: 32, usage: UNIFORM | COPY_DST, label: "kv copy layout" });
    this.#copies = device.createBuffer({ size: 64 * COPY_WORDS * 4, usage: STORAGE | COPY_DST, label: "kv copies" });
  }

  /** Compiles the kernel for `device`. */
  static async create(device: GPUDevice): Promise<GpuKvCopier> {
    return new GpuKvCopier(device, await kernelPipeline(device, "kv-copy.wgsl", "kv copy"));
  }

  /**
   * Records the copies for every layer into `encoder` (one dispatch per layer); the caller submits. Copies
   * uploaded by an earlier encode that is not yet submitted are overwritten: submit in between.
   */
  encode(encoder: GPUCommandEncoder, layout: KvRowsLayout, layers: readonly KvLayerBuffers[], copies: readonly KvRangeCopy[]): void {
    checkKvCopies(layout, copies);
    const active = copies.filter((c) => c.length > 0);
    if (active.length === 0 || layers.length === 0) return;
    if (active.length > MAX_GROUPS) throw new RangeError(`${active.length} KV copies in one call (at most ${MAX_GROUPS})`);
    const device = this.#device;
    const words = new Uint32Array(active.length * COPY_WORDS);
    active.forEach((c, i) => words.set([c.fromRow, c.fromStart, c.toRow, c.toStart, c.length], i * COPY_WORDS));
    this.#copies = uploadWords(device, this.#copies, words, "kv copies");
    device.queue.writeBuffer(
      this.#layout,
      0,
      Uint32Array.of(
        layout.numKvHeads,
        layout.headDim,
        layout.capacity,
        active.length,
        layout.key === "dim-slot" ? 1 : 0,
        layout.value === "dim-slot" ? 1 : 0,
        0,
        0,
      ),
    );
    const longest = Math.max(...active.map((c) => c.length));
    const groups = Math.min(MAX_GROUPS, Math.ceil((layout.numKvHeads * layout.headDim * longest) / WORKGROUP));
    const bytes = layout.rows * layout.numKvHeads * layout.headDim * layout.capacity * 4;
    const pass = encoder.beginComputePass({ label: "kv copy" });
    pass.setPipeline(this.#pipeline);
    for (const { key, value } of layers) {
      if (key.size < bytes || value.size < bytes) throw new RangeError(`a KV layer buffer is smaller than ${bytes} bytes`);
      pass.setBindGroup(
        0,
        device.createBindGroup({
          layout: this.#pipeline.getBindGroupLayout(0),
          entries: [
            { binding: 0, resource: { buffer: this.#layout } },
            { binding: 1, resource: { buffer: this.#copies, size: words.byteLength } },
            { binding: 2, resource: { buffer: key, size: bytes } },
            { binding: 3, resource: { buffer: value, size: bytes } },
          ],
        }),
      );
      pass.dispatchWorkgroups(groups, active.length);
    }
    pass.end();
  }

  /** Copies and waits until the GPU is done. */
  async copy(layout: KvRowsLayout, layers: readonly KvLayerBuffers[], copies: readonly KvRangeCopy[]): Promise<void> {
    const device = this.#device;
    const encoder = device.createCommandEncoder({ label: "kv copy" });
    this.encode(encoder, layout, layers, copies);
    device.pushErrorScope("validation");
    device.queue.submit([encoder.finish()]);
    const error = await device.popErrorScope();
    if (error) throw new Error(`KV copy failed: ${error.message}`);
    await device.queue.onSubmittedWorkDone();
  }

  /** Releases the copier's buffers. */
  destroy(): void {
    this.#layout.destroy();
    this.#copies.destroy();
  }
}
