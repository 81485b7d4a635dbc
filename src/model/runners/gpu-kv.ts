/**
 * The KV cache rows of the engine graph in GPU buffers, laid out as EngineKv's (engine-kv.ts): per layer one K buffer
 * [rows, kvHeads, headDim, capacity] and one V buffer [rows, kvHeads, capacity, headDim]. Tokens move between the
 * rows and packed blocks through kv-scatter.wgsl, and between rows through kv-copy.wgsl; reads come back to the host
 * asynchronously (by the time flush resolves). Outside this file KV moves in the canonical layout
 * [layers][K, V][kvHeads][token][headDim].
 */
import type { RowInput } from "../../engine/model-runner.ts";
import { forkPrefix, GpuKvCopier, type KvRowsLayout } from "../../../kernels/gpu-kv-copy.ts";
import { GpuKvScatter, type KvBlockMove, type KvScatterLayer } from "../../../kernels/gpu-kv-scatter.ts";
import { COPY_DST, COPY_SRC, MAP_MODE_READ, MAP_READ, STORAGE } from "../../../kernels/webgpu.ts";
import type { KvShape } from "./engine-kv.ts";
import type { RowLengths } from "./rows.ts";

const KV_USAGE = STORAGE | COPY_SRC | COPY_DST;

/** A read waiting for its bytes. */
interface PendingRead {
  out: Float32Array;
  length: number;
  readback: GPUBuffer;
  mapped: Promise<void>;
}

/** Per-layer K/V row buffers on a GPU device, for `maxRows` rows of `capacity` slots each. */
export class GpuKv {
  readonly #device: GPUDevice;
  readonly #maxRows: number;
  readonly #numLayers: number;
  readonly #kvh: number;
  readonly #headDim: number;
  readonly #copier: GpuKvCopier;
  readonly #scatter: GpuKvScatter;
  #keys: GPUBuffer[] = [];
  #values: GPUBuffer[] = [];
  /** Rows gathered for a run that is not rows [0, n) (prefill chunks), per layer. */
  #gatherKeys: GPUBuffer[] = [];
  #gatherValues: GPUBuffer[] = [];
  #capacity = 0;
  #pending: PendingRead[] = [];

  private constructor(device: GPUDevice, shape: KvShape, maxRows: number, copier: GpuKvCopier, scatter: GpuKvScatter) {
    this.#device = device;
    this.#maxRows = maxRows;
    this.#numLayers = shape.numLayers;
    this.#kvh = shape.numKvHeads;
    this.#headDim = shape.headDim;
    this.#copier = copier;
    this.#scatter = scatter;
  }

  /** Compiles the copy and scatter kernels on `device` and makes the (empty) rows. */
  static async create(device: GPUDevice, shape: KvShape, maxRows: number): Promise<GpuKv> {
    const [copier, scatter] = await Promise.all([GpuKvCopier.create(device), GpuKvScatter.create(device)]);
    return new GpuKv(device, shape, maxRows, copier, scatter);
  }

  /** Token slots per row. */
  get capacity(): number {
    return this.#capacity;
  }

  /** The rows' buffers for a run over `rows`: rows [0, n) in place (a decode step); any other rows gathered first. */
  buffersFor(rows: readonly number[]): [GPUBuffer[], GPUBuffer[]] {
    if (rows.every((row, b) => row === b)) return [this.#keys, this.#values];
    return this.#gather(rows);
  }

  /** Copies the first `length` tokens of row `from` into row `to`. */
  copyRow(from: number, to: number, length: number): void {
    if (from === to || length === 0) return;
    const encoder = this.#device.createCommandEncoder({ label: "kv row copy" });
    this.#copier.encode(encoder, this.#layout(), this.#layers(), forkPrefix(from, [to], length));
    this.#device.queue.submit([encoder.finish()]);
  }

  /** Queues a copy of tokens [start, start + length) of `row` into `out` (canonical layout), filled by flush. */
  read(row: number, start: number, length: number, out: Float32Array): void {
    if (length === 0) return;
    const bytes = this.#numLayers * this.#kvh * length * this.#headDim * 4;
    const [key, value] = [this.#buffer(bytes, STORAGE | COPY_SRC), this.#buffer(bytes, STORAGE | COPY_SRC)];
    const readback = this.#buffer(2 * bytes, MAP_READ | COPY_DST);
    const encoder = this.#device.createCommandEncoder({ label: "kv read" });
    this.#encodeBlock(encoder, "out-of-rows", row, start, length, key, value);
    encoder.copyBufferToBuffer(key, 0, readback, 0, bytes);
    encoder.copyBufferToBuffer(value, 0, readback, bytes, bytes);
    this.#device.queue.submit([encoder.finish()]);
    key.destroy();
    value.destroy();
    this.#pending.push({ out, length, readback, mapped: readback.mapAsync(MAP_MODE_READ) });
  }

  /** Resolves once every read queued so far has filled its `out`. */
  async flush(): Promise<void> {
    const pending = this.#pending;
    this.#pending = [];
    const block = (length: number) => this.#kvh * length * this.#headDim;
    const results = await Promise.allSettled(pending.map(async ({ out, length, readback, mapped }) => {
      try {
        await mapped;
        const b = block(length);
        const half = this.#numLayers * b;
        const words = new Float32Array(readback.getMappedRange(0, 2 * half * 4));
        // The readback holds every layer's K, then every layer's V; canonical interleaves them per layer.
        for (let l = 0; l < this.#numLayers; l++) {
          out.set(words.subarray(l * b, (l + 1) * b), 2 * l * b);
          out.set(words.subarray(half + l * b, half + (l + 1) * b), (2 * l + 1) * b);
        }
        readback.unmap();
      } finally {
        readback.destroy();
      }
    }));
    const failed = results.find((r): r is PromiseRejectedResult => r.status === "rejected");
    if (failed) throw new Error(`reading KV back from the GPU failed: ${String(failed.reason)}`, { cause: failed.reason });
  }

  /** Writes `length` tokens of `data` (canonical layout) into `row` at [start, start + length). */
  write(row: number, start: number, length: number, data: Float32Array): void {
    if (length === 0) return;
    const b = this.#kvh * length * this.#headDim;
    const bytes = this.#numLayers * b * 4;
    const [key, value] = [this.#buffer(bytes, STORAGE | COPY_DST), this.#buffer(bytes, STORAGE | COPY_DST)];
    // Deno's writeBuffer refuses shared memory, where the prefix cache keeps its blocks: those go through a copy.
    const src = data.buffer instanceof ArrayBuffer ? data : data.slice(0, 2 * this.#numLayers * b);
    for (let l = 0; l < this.#numLayers; l++) {
      this.#device.queue.writeBuffer(key, l * b * 4, src.buffer, src.byteOffset + 2 * l * b * 4, b * 4);
      this.#device.queue.writeBuffer(value, l * b * 4, src.buffer, src.byteOffset + (2 * l + 1) * b * 4, b * 4);
    }
    const encoder = this.#device.createCommandEncoder({ label: "kv write" });
    this.#encodeBlock(encoder, "into-rows", row, start, length, key, value);
    this.#device.queue.submit([encoder.finish()]);
    key.destroy();
    value.destroy();
  }

  /**
   * Writes each row's new tokens into it: `packed(name)` is the run's output key.l / value.l, [batch, kvHeads, seq,
   * headDim], on the GPU.
   */
  storeNew(inputs: readonly RowInput[], seq: number, packed: (name: string) => GPUBuffer): void {
    const block = this.#kvh * seq * this.#headDim;
    const moves: KvBlockMove[] = inputs.map((r, b) => ({
      row: r.row,
      start: r.start,
      length: r.tokens.length,
      stride: seq,
      keyOffset: b * block,
      valueOffset: b * block,
    }));
    const layers = this.#layers().map((layer, l) => ({ ...layer, packedKey: packed(`key.${l}`), packedValue: packed(`value.${l}`) }));
    const encoder = this.#device.createCommandEncoder({ label: "kv store" });
    this.#scatter.encode(encoder, this.#layout(), "into-rows", moves, layers);
    this.#device.queue.submit([encoder.finish()]);
  }

  /** Re-lays out every row for `capacity` slots, keeping each row's known tokens (up to the new capacity). */
  resize(capacity: number, lengths: RowLengths): void {
    if (capacity === this.#capacity) return;
    const old = { keys: this.#keys, values: this.#values, layout: this.#layout() };
    const bytes = this.#maxRows * this.#kvh * this.#headDim * capacity * 4;
    this.#keys = [];
    this.#values = [];
    for (let l = 0; l < this.#numLayers; l++) {
      this.#keys.push(this.#buffer(bytes, KV_USAGE, `kv keys ${l}`));
      this.#values.push(this.#buffer(bytes, KV_USAGE, `kv values ${l}`));
    }
    this.#capacity = capacity;
    const moves: KvBlockMove[] = [];
    let words = 0;
    for (let row = 0; row < this.#maxRows; row++) {
      const length = Math.min(lengths.of(row), capacity, old.layout.capacity);
      if (length === 0) continue;
      moves.push({ row, start: 0, length, stride: length, keyOffset: words, valueOffset: words });
      words += this.#kvh * length * this.#headDim;
    }
    if (moves.length > 0) {
      // Through a packed copy, one layer at a time (each encode uploads its own moves: one submit each).
      const [key, value] = [this.#buffer(words * 4, STORAGE), this.#buffer(words * 4, STORAGE)];
      for (let l = 0; l < this.#numLayers; l++) {
        const from: KvScatterLayer = { key: old.keys[l], value: old.values[l], packedKey: key, packedValue: value };
        const to: KvScatterLayer = { key: this.#keys[l], value: this.#values[l], packedKey: key, packedValue: value };
        for (const [layout, direction, layer] of [[old.layout, "out-of-rows", from], [this.#layout(), "into-rows", to]] as const) {
          const encoder = this.#device.createCommandEncoder({ label: "kv resize" });
          this.#scatter.encode(encoder, layout, direction, moves, [layer]);
          this.#device.queue.submit([encoder.finish()]);
        }
      }
      key.destroy();
      value.destroy();
    }
    for (const b of [...old.keys, ...old.values]) b.destroy();
    this.#destroyGathered();
  }

  /** Frees every buffer and the kernels. */
  destroy(): void {
    for (const b of [...this.#keys, ...this.#values]) b.destroy();
    [this.#keys, this.#values, this.#capacity] = [[], [], 0];
    this.#destroyGathered();
    this.#copier.destroy();
    this.#scatter.destroy();
  }

  /** Copies the given rows, in order, into the gather buffers (each row is one contiguous block per buffer). */
  #gather(rows: readonly number[]): [GPUBuffer[], GPUBuffer[]] {
    const stride = this.#kvh * this.#headDim * this.#capacity * 4;
    const bytes = rows.length * stride;
    if ((this.#gatherKeys[0]?.size ?? 0) < bytes) {
      this.#destroyGathered();
      for (let l = 0; l < this.#numLayers; l++) {
        this.#gatherKeys.push(this.#buffer(bytes, KV_USAGE));
        this.#gatherValues.push(this.#buffer(bytes, KV_USAGE));
      }
    }
    const encoder = this.#device.createCommandEncoder({ label: "kv gather" });
    for (let l = 0; l < this.#numLayers; l++) {
      rows.forEach((row, b) => {
        encoder.copyBufferToBuffer(this.#keys[l], row * stride, this.#gatherKeys[l], b * stride, stride);
        encoder.copyBufferToBuffer(this.#values[l], row * stride, this.#gatherValues[l], b * stride, stride);
      });
    }
    this.#device.queue.submit([encoder.finish()]);
    return [this.#gatherKeys, this.#gatherValues];
  }

  /** Moves one row's tokens between the rows and per-layer-packed K and V buffers (the canonical layout, split). */
  #encodeBlock(
    encoder: GPUCommandEncoder,
    direction: "into-rows" | "out-of-rows",
    row: number,
    start: number,
    length: number,
    key: GPUBuffer,
    value: GPUBuffer,
  ): void {
    const move: KvBlockMove = { row, start, length, stride: length, keyOffset: 0, valueOffset: 0 };
    const layers = this.#layers().map((layer) => ({ ...layer, packedKey: key, packedValue: value }));
    this.#scatter.encode(encoder, this.#layout(), direction, [move], layers, this.#kvh * length * this.#headDim);
  }

  #layout(): KvRowsLayout {
    const capacity = this.#capacity;
    return { rows: this.#maxRows, numKvHeads: this.#kvh, headDim: this.#headDim, capacity, key: "dim-slot", value: "slot-dim" };
  }

  #layers(): { key: GPUBuffer; value: GPUBuffer }[] {
    return this.#keys.map((key, l) => ({ key, value: this.#values[l] }));
  }

  #buffer(bytes: number, usage: number, label?: string): GPUBuffer {
    // WebGPU sizes are multiples of 4 and at least 4; storage bindings may not be empty.
    return this.#device.createBuffer({ size: Math.max(16, Math.ceil(bytes / 16) * 16), usage, label });
  }

  #destroyGathered(): void {
    for (const b of [...this.#gatherKeys, ...this.#gatherValues]) b.destroy();
    [this.#gatherKeys, this.#gatherValues] = [[], []];
  }
}
