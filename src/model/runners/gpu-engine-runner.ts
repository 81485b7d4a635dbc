/**
 * The engine graph's runner for WebGPU (onnxruntime-web on navigator.gpu): the KV cache lives in GPU buffers,
 * fed to every run as GPU tensors and never copied to the host; the run's outputs stay on the GPU too, where
 * kv-scatter.wgsl writes the new tokens' K/V into their rows and GpuSampler draws each row's next token from the
 * logits. Only token ids and log-probabilities cross back each step (`stepAndSample`); `step` reads logits back
 * for callers that need them (prompt log-probabilities). Rows are laid out as EngineRunner's, one buffer per
 * layer for K and one for V.
 */
import type { ModelRunner, RowInput } from "../../engine/model-runner.ts";
import type { RowSampling, SampledToken } from "../../engine/sampler.ts";
import { forkPrefix, GpuKvCopier, type KvRowsLayout } from "../../../kernels/gpu-kv-copy.ts";
import { GpuKvScatter, type KvBlockMove, type KvScatterLayer } from "../../../kernels/gpu-kv-scatter.ts";
import { GpuSampler } from "../../../kernels/gpu-sampler.ts";
import { COPY_DST, COPY_SRC, MAP_MODE_READ, MAP_READ, STORAGE } from "../../../kernels/webgpu.ts";
import { engineRowCapacity } from "./engine-kv.ts";
import { logitPicks, rowLogits, type TensorClass, tensorClass, tokenFeeds } from "./engine-feeds.ts";
import { checkCanonical, checkRange, checkRow, checkStep, RowLengths, slotsFor, StepGuard } from "./rows.ts";
import type { EngineRunnerOptions } from "./runner-options.ts";
import type { OrtTensor } from "../ort/ort-types.ts";
import { RunQueue } from "../ort/run-queue.ts";

const KV_USAGE = STORAGE | COPY_SRC | COPY_DST;

/** What a GpuEngineRunner runs on: a session whose outputs stay on the GPU, and that session's device. */
export interface GpuEngineRunnerOptions extends Omit<EngineRunnerOptions, "copyInputs"> {
  /** The GPUDevice the session runs on (onnxruntime-web's env.webgpu.device). */
  device: GPUDevice;
}

/** Shape of `ort.Tensor.fromGpuBuffer`, which onnxruntime-common declares only where WebGPU types exist. */
type FromGpuBuffer = (buffer: GPUBuffer, options: { dataType: "float32"; dims: readonly number[] }) => OrtTensor;

/** A readKv waiting for its bytes. */
interface PendingRead {
  out: Float32Array;
  length: number;
  readback: GPUBuffer;
  mapped: Promise<void>;
}

/** Runs the engine graph over KV rows that live in GPU buffers. */
export class GpuEngineRunner implements ModelRunner {
  readonly vocabSize: number;
  readonly floatsPerToken: number;
  readonly maxRows: number;
  readonly maxLength: number;
  readonly #session: GpuEngineRunnerOptions["session"];
  readonly #Tensor: TensorClass;
  readonly #fromGpuBuffer: FromGpuBuffer;
  readonly #device: GPUDevice;
  readonly #queue: RunQueue;
  readonly #numLayers: number;
  readonly #kvh: number;
  readonly #headDim: number;
  readonly #copier: GpuKvCopier;
  readonly #scatter: GpuKvScatter;
  readonly #sampler: GpuSampler;
  readonly #lengths: RowLengths;
  readonly #guard = new StepGuard();
  #keys: GPUBuffer[] = [];
  #values: GPUBuffer[] = [];
  /** Rows gathered for a run that is not rows [0, n) (prefill chunks), per layer. */
  #gatherKeys: GPUBuffer[] = [];
  #gatherValues: GPUBuffer[] = [];
  #capacity = 0;
  #pending: PendingRead[] = [];

  private constructor(options: GpuEngineRunnerOptions, copier: GpuKvCopier, scatter: GpuKvScatter, sampler: GpuSampler) {
    const { arch } = options;
    this.#session = options.session;
    this.#Tensor = tensorClass(options.Tensor);
    this.#fromGpuBuffer = (options.Tensor as unknown as { fromGpuBuffer: FromGpuBuffer }).fromGpuBuffer;
    this.#device = options.device;
    this.#queue = options.queue ?? new RunQueue();
    this.#numLayers = arch.numLayers;
    this.#kvh = arch.numKvHeads;
    this.#headDim = arch.headDim;
    this.#copier = copier;
    this.#scatter = scatter;
    this.#sampler = sampler;
    this.#lengths = new RowLengths(options.maxRows);
    this.vocabSize = arch.vocabSize;
    this.floatsPerToken = arch.numLayers * 2 * arch.numKvHeads * arch.headDim;
    this.maxRows = options.maxRows;
    this.maxLength = options.maxLength;
  }

  /** Compiles the kernels on the session's device and makes the runner. */
  static async create(options: GpuEngineRunnerOptions): Promise<GpuEngineRunner> {
    const { device, arch } = options;
    const [copier, scatter, sampler] = await Promise.all([
      GpuKvCopier.create(device),
      GpuKvScatter.create(device),
      GpuSampler.create(device, { vocabSize: arch.vocabSize, maxRows: options.maxRows }),
    ]);
    return new GpuEngineRunner(options, copier, scatter, sampler);
  }

  /** Cache slots every row has now (the graph's M). */
  get capacity(): number {
    return this.#capacity;
  }

  /** Slots a row of `length` tokens gets: what the scheduler should count (its rowCapacity). */
  rowCapacity(length: number): number {
    return engineRowCapacity(Math.max(1, length), this.maxLength);
  }

  async step(inputs: RowInput[]): Promise<Float32Array[]> {
    return await this.#run(inputs, async (out, picks) => {
      const logits = await (out.logits as OrtTensor & { getData(): Promise<unknown> }).getData() as Float32Array;
      return rowLogits(logits, inputs, picks, this.vocabSize);
    });
  }

  async stepAndSample(inputs: RowInput[], sampling: readonly (RowSampling | null)[]): Promise<(SampledToken | null)[]> {
    if (sampling.length !== inputs.length) throw new Error(`stepAndSample: ${inputs.length} rows, ${sampling.length} samplings`);
    if (inputs.some((r) => r.allLogits)) throw new Error("stepAndSample: a row asks for all logits (use step)");
    return await this.#run(inputs, async (out) => {
      const rows = sampling.flatMap((s, b) => (s ? [{ ...s, logitsRow: b }] : []));
      const picked = await this.#sampler.sample((out.logits as OrtTensor & { gpuBuffer: GPUBuffer }).gpuBuffer, rows);
      let next = 0;
      return sampling.map((s) => (s ? picked[next++] : null));
    });
  }

  /** Grows every row to hold `length` tokens; shrinks them when no row needs a quarter of the slots any more. */
  reserve(length: number): void {
    this.#guard.idle("reserve");
    this.#resize(slotsFor(this.rowCapacity(this.#lengths.longest(length)), this.#capacity));
  }

  releaseRow(row: number): void {
    checkRow(row, this.maxRows);
    this.#lengths.release(row);
  }

  copyRow(from: number, to: number, length: number): void {
    this.#guard.idle("copyRow");
    checkRange(from, 0, length, this.maxRows, this.#capacity);
    checkRow(to, this.maxRows);
    if (from !== to && length > 0) {
      const encoder = this.#device.createCommandEncoder({ label: "kv row copy" });
      this.#copier.encode(encoder, this.#layout(), this.#layers(), forkPrefix(from, [to], length));
      this.#device.queue.submit([encoder.finish()]);
    }
    this.#lengths.set(to, length);
  }

  readKv(row: number, start: number, length: number, out: Float32Array): void {
    checkRange(row, start, length, this.maxRows, this.#capacity);
    checkCanonical(length, out, this.floatsPerToken);
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

  writeKv(row: number, start: number, length: number, data: Float32Array): void {
    this.#guard.idle("writeKv");
    checkRow(row, this.maxRows);
    checkCanonical(length, data, this.floatsPerToken);
    if (start + length > this.#capacity) this.reserve(start + length);
    if (length > 0) {
      const b = this.#kvh * length * this.#headDim;
      const bytes = this.#numLayers * b * 4;
      const [key, value] = [this.#buffer(bytes, STORAGE | COPY_DST), this.#buffer(bytes, STORAGE | COPY_DST)];
      for (let l = 0; l < this.#numLayers; l++) {
        this.#device.queue.writeBuffer(key, l * b * 4, data.buffer, data.byteOffset + 2 * l * b * 4, b * 4);
        this.#device.queue.writeBuffer(value, l * b * 4, data.buffer, data.byteOffset + (2 * l + 1) * b * 4, b * 4);
      }
      const encoder = this.#device.createCommandEncoder({ label: "kv write" });
      this.#encodeBlock(encoder, "into-rows", row, start, length, key, value);
      this.#device.queue.submit([encoder.finish()]);
      key.destroy();
      value.destroy();
    }
    this.#lengths.wrote(row, start, length);
  }

  workingBytes(): number {
    return this.maxRows * this.#capacity * this.floatsPerToken * 4;
  }

  async dispose(): Promise<void> {
    await this.flush().catch(() => {});
    this.#destroyRows();
    this.#destroyGathered();
    this.#lengths.clear();
    this.#copier.destroy();
    this.#scatter.destroy();
    this.#sampler.destroy();
    await this.#queue.run(() => this.#session.release());
  }

  /** One model run over `inputs`: the new K/V go into their rows on the GPU, then `finish` reads what it needs. */
  async #run<T>(inputs: RowInput[], finish: (out: Record<string, OrtTensor>, picks: number) => Promise<T>): Promise<T> {
    const seq = checkStep(inputs, this.maxRows, this.maxLength);
    const end = Math.max(...inputs.map((r) => r.start + r.tokens.length));
    if (end > this.#capacity) this.reserve(end);
    return await this.#guard.during(() =>
      this.#queue.run(async () => {
        const picks = logitPicks(inputs);
        const feeds = { ...tokenFeeds(this.#Tensor, inputs, seq, picks), ...this.#cacheFeeds(inputs) };
        const out = await this.#session.run(feeds);
        try {
          this.#storeNew(inputs, seq, out);
          this.#lengths.stepped(inputs);
          return await finish(out, picks);
        } finally {
          // Back to onnxruntime's pool; work already submitted on them still runs first.
          for (const tensor of Object.values(out)) tensor.dispose();
        }
      })
    );
  }

  /** The rows' cache as GPU tensors: rows [0, n) in place (a decode step); any other rows gathered first. */
  #cacheFeeds(inputs: RowInput[]): Record<string, OrtTensor> {
    const count = inputs.length;
    const [kvh, d, m] = [this.#kvh, this.#headDim, this.#capacity];
    let keys = this.#keys;
    let values = this.#values;
    if (!inputs.every((r, b) => r.row === b)) [keys, values] = this.#gather(inputs.map((r) => r.row));
    const feeds: Record<string, OrtTensor> = {};
    for (let l = 0; l < this.#numLayers; l++) {
      feeds[`key_cache.${l}`] = this.#fromGpuBuffer(keys[l], { dataType: "float32", dims: [count, kvh, d, m] });
      feeds[`value_cache.${l}`] = this.#fromGpuBuffer(values[l], { dataType: "float32", dims: [count, kvh, m, d] });
    }
    return feeds;
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

  /** Writes each row's new tokens (the run's key.l / value.l outputs, [batch, kvHeads, seq, headDim]) into it. */
  #storeNew(inputs: RowInput[], seq: number, out: Record<string, OrtTensor>): void {
    const block = this.#kvh * seq * this.#headDim;
    const moves: KvBlockMove[] = inputs.map((r, b) => ({
      row: r.row,
      start: r.start,
      length: r.tokens.length,
      stride: seq,
      keyOffset: b * block,
      valueOffset: b * block,
    }));
    const gpu = (name: string) => (out[name] as OrtTensor & { gpuBuffer: GPUBuffer }).gpuBuffer;
    const layers = this.#layers().map((layer, l) => ({ ...layer, packedKey: gpu(`key.${l}`), packedValue: gpu(`value.${l}`) }));
    const encoder = this.#device.createCommandEncoder({ label: "kv store" });
    this.#scatter.encode(encoder, this.#layout(), "into-rows", moves, layers);
    this.#device.queue.submit([encoder.finish()]);
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

  /** Re-lays out every row for `capacity` slots, keeping each row's known tokens (up to the new capacity). */
  #resize(capacity: number): void {
    if (capacity === this.#capacity) return;
    const old = { keys: this.#keys, values: this.#values, layout: this.#layout() };
    const bytes = this.maxRows * this.#kvh * this.#headDim * capacity * 4;
    this.#keys = [];
    this.#values = [];
    for (let l = 0; l < this.#numLayers; l++) {
      this.#keys.push(this.#buffer(bytes, KV_USAGE, `kv keys ${l}`));
      this.#values.push(this.#buffer(bytes, KV_USAGE, `kv values ${l}`));
    }
    this.#capacity = capacity;
    const moves: KvBlockMove[] = [];
    let words = 0;
    for (let row = 0; row < this.maxRows; row++) {
      const length = Math.min(this.#lengths.of(row), capacity, old.layout.capacity);
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

  #layout(): KvRowsLayout {
    const capacity = this.#capacity;
    return { rows: this.maxRows, numKvHeads: this.#kvh, headDim: this.#headDim, capacity, key: "dim-slot", value: "slot-dim" };
  }

  #layers(): { key: GPUBuffer; value: GPUBuffer }[] {
    return this.#keys.map((key, l) => ({ key, value: this.#values[l] }));
  }

  #buffer(bytes: number, usage: number, label?: string): GPUBuffer {
    // WebGPU sizes are multiples of 4 and at least 4; storage bindings may not be empty.
    return this.#device.createBuffer({ size: Math.max(16, Math.ceil(bytes / 16) * 16), usage, label });
  }

  #destroyRows(): void {
    for (const b of [...this.#keys, ...this.#values]) b.destroy();
    [this.#keys, this.#values, this.#capacity] = [[], [], 0];
  }

  #destroyGathered(): void {
    for (const b of [...this.#gatherKeys, ...this.#gatherValues]) b.destroy();
    [this.#gatherKeys, this.#gatherValues] = [[], []];
  }
}
