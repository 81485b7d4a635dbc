/**
 * Moving tokens' K and V between a layer's cache rows and packed blocks on the GPU (kv-scatter.wgsl): the new
 * tokens a model run outputs ([batch, kvHeads, seq, headDim]) into their rows, and blocks of the canonical
 * layout ([layer][K, V][kvHeads][token][headDim], split here into a K and a V buffer) into or out of rows for the
 * prefix cache. Rows are the engine graph's: K [rows, kvHeads, headDim, capacity], V [rows, kvHeads, capacity,
 * headDim]. Its CPU twin is EngineKv (src/model/runners/engine-kv.ts: storeNew, read, write); both only move words.
 */
import { type KvLayerBuffers, type KvRowsLayout, uploadWords } from "./gpu-kv-copy.ts";
import { COPY_DST, kernelPipeline, STORAGE, UNIFORM } from "./webgpu.ts";

/** Tokens [start, start + length) of `row` and a packed block [kvHeads][stride][headDim] at word offsets. */
export interface KvBlockMove {
  row: number;
  start: number;
  length: number;
  /** Token slots per head in the packed block (at least length). */
  stride: number;
  keyOffset: number;
  valueOffset: number;
}

/** The cache rows' shape (their axis orders are the engine graph's). */
export type KvRowsShape = Omit<KvRowsLayout, "key" | "value">;

/** One layer's cache rows and the packed buffers its blocks come from or go to. */
export interface KvScatterLayer extends KvLayerBuffers {
  packedKey: GPUBuffer;
  packedValue: GPUBuffer;
}

const ENTRY_WORDS = 6;
const WORKGROUP = 256;
const MAX_GROUPS = 65_535;

/** Records KV block moves into command encoders. */
export class GpuKvScatter {
  readonly #device: GPUDevice;
  readonly #pipeline: GPUComputePipeline;
  readonly #shape: GPUBuffer;
  /** Uniform buffer l holds layer index l (a dispatch's layer, for packed buffers shared by every layer). */
  readonly #layers: GPUBuffer[] = [];
  #entries: GPUBuffer;

  private constructor(device: GPUDevice, pipeline: GPUComputePipeline) {
    this.#device = device;
    this.#pipeline = pipeline;
    this.#shape = device.createBuffer({ size: 32, usage: UNIFORM | COPY_DST, label: "kv scatter shape" });
    this.#entries = device.createBuffer({ size: 64 * ENTRY_WORDS * 4, usage: STORAGE | COPY_DST, label: "kv scatter entries" });
  }

  /** Compiles the kernel for `device`. */
  static async create(device: GPUDevice): Promise<GpuKvScatter> {
    return new GpuKvScatter(device, await kernelPipeline(device, "kv-scatter.wgsl", "kv scatter"));
  }

  /**
   * Records the moves for every layer into `encoder` (one dispatch per layer), into the rows or out of them.
   * `layerStride`: words between one layer's blocks and the next's when all layers share the packed buffers.
   * The moves are uploaded at once: submit `encoder` before the next call.
   */
  encode(
    encoder: GPUCommandEncoder,
    shape: KvRowsShape,
    direction: "into-rows" | "out-of-rows",
    moves: readonly KvBlockMove[],
    layers: readonly KvScatterLayer[],
    layerStride = 0,
  ): void {
    const active = moves.filter((m) => m.length > 0);
    for (const m of active) checkMove(shape, m);
    if (active.length === 0 || layers.length === 0) return;
    if (active.length > MAX_GROUPS) throw new RangeError(`${active.length} KV moves in one call (at most ${MAX_GROUPS})`);
    const device = this.#device;
    const words = new Uint32Array(active.length * ENTRY_WORDS);
    active.forEach((m, i) => words.set([m.row, m.start, m.length, m.stride, m.keyOffset, m.valueOffset], i * ENTRY_WORDS));
    this.#entries = uploadWords(device, this.#entries, words, "kv scatter entries");
    const { numKvHeads: heads, headDim, capacity, rows } = shape;
    device.queue.writeBuffer(
      this.#shape,
      0,
      Uint32Array.of(heads, headDim, capacity, active.length, direction === "into-rows" ? 1 : 0, layerStride, 0, 0),
    );
    while (this.#layers.length < layers.length) {
      const index = device.createBuffer({ size: 16, usage: UNIFORM | COPY_DST, label: "kv scatter layer" });
      device.queue.writeBuffer(index, 0, Uint32Array.of(this.#layers.length, 0, 0, 0));
      this.#layers.push(index);
    }
    const longest = Math.max(...active.map((m) => m.length));
    const groups = Math.min(MAX_GROUPS, Math.ceil((heads * headDim * longest) / WORKGROUP));
    const bytes = rows * heads * headDim * capacity * 4;
    const pass = encoder.beginComputePass({ label: "kv scatter" });
    pass.setPipeline(this.#pipeline);
    layers.forEach(({ key, value, packedKey, packedValue }, l) => {
      if (key.size < bytes || value.size < bytes) throw new RangeError(`a KV layer buffer is smaller than ${bytes} bytes`);
      pass.setBindGroup(
        0,
        device.createBindGroup({
          layout: this.#pipeline.getBindGroupLayout(0),
          entries: [
            { binding: 0, resource: { buffer: this.#shape } },
            { binding: 1, resource: { buffer: this.#layers[l] } },
            { binding: 2, resource: { buffer: this.#entries, size: words.byteLength } },
            { binding: 3, resource: { buffer: key, size: bytes } },
            { binding: 4, resource: { buffer: value, size: bytes } },
            { binding: 5, resource: { buffer: packedKey } },
            { binding: 6, resource: { buffer: packedValue } },
          ],
        }),
      );
      pass.dispatchWorkgroups(groups, active.length);
    });
    pass.end();
  }

  /** Releases the scatter's buffers. */
  destroy(): void {
    for (const b of [this.#shape, this.#entries, ...this.#layers]) b.destroy();
  }
}

function checkMove(shape: KvRowsShape, m: KvBlockMove): void {
  const whole = [m.row, m.start, m.length, m.stride, m.keyOffset, m.valueOffset].every((x) => Number.isInteger(x) && x >= 0);
  if (!whole || m.row >= shape.rows || m.start + m.length > shape.capacity || m.stride < m.length) {
    throw new RangeError(`KV move ${JSON.stringify(m)} is outside ${shape.rows} rows of ${shape.capacity} slots`);
  }
}
