/**
 * The engine graph's runner for WebGPU (onnxruntime-web on navigator.gpu): the KV cache lives in GPU buffers,
 * fed to every run as GPU tensors and never copied to the host; the run's outputs stay on the GPU too, where
 * kv-scatter.wgsl writes the new tokens' K/V into their rows and GpuSampler draws each row's next token from the
 * logits. Only token ids and log-probabilities cross back each step (`stepAndSample`); `step` reads logits back
 * for callers that need them (prompt log-probabilities). The rows' GPU buffers, laid out as EngineRunner's, are
 * GpuKv's (gpu-kv.ts); this file runs the session and the sampler over them.
 */
import type { ModelRunner, RowInput } from "../../engine/model-runner.ts";
import type { RowSampling, SampledToken } from "../../engine/sampler.ts";
import { GpuSampler } from "../../../kernels/gpu-sampler.ts";
import type { OrtTensor } from "../ort/ort-types.ts";
import { RunQueue } from "../ort/run-queue.ts";
import { engineRowCapacity } from "./engine-kv.ts";
import { logitPicks, rowLogits, type TensorClass, tensorClass, tokenFeeds } from "./engine-feeds.ts";
import { GpuKv } from "./gpu-kv.ts";
import { checkCanonical, checkRange, checkRow, checkStep, RowLengths, slotsFor, StepGuard } from "./rows.ts";
import type { EngineRunnerOptions } from "./runner-options.ts";

/** What a GpuEngineRunner runs on: a session whose outputs stay on the GPU, and that session's device. */
export interface GpuEngineRunnerOptions extends Omit<EngineRunnerOptions, "copyInputs"> {
  /** The GPUDevice the session runs on (onnxruntime-web's env.webgpu.device). */
  device: GPUDevice;
}

/** Shape of `ort.Tensor.fromGpuBuffer`, which onnxruntime-common declares only where WebGPU types exist. */
type FromGpuBuffer = (buffer: GPUBuffer, options: { dataType: "float32"; dims: readonly number[] }) => OrtTensor;

/** Runs the engine graph over KV rows that live in GPU buffers. */
export class GpuEngineRunner implements ModelRunner {
  readonly vocabSize: number;
  readonly floatsPerToken: number;
  readonly maxRows: number;
  readonly maxLength: number;
  readonly #session: GpuEngineRunnerOptions["session"];
  readonly #Tensor: TensorClass;
  readonly #fromGpuBuffer: FromGpuBuffer;
  readonly #queue: RunQueue;
  readonly #numLayers: number;
  readonly #kvh: number;
  readonly #headDim: number;
  readonly #kv: GpuKv;
  readonly #sampler: GpuSampler;
  readonly #lengths: RowLengths;
  readonly #guard = new StepGuard();

  private constructor(options: GpuEngineRunnerOptions, kv: GpuKv, sampler: GpuSampler) {
    const { arch } = options;
    this.#session = options.session;
    this.#Tensor = tensorClass(options.Tensor);
    this.#fromGpuBuffer = (options.Tensor as unknown as { fromGpuBuffer: FromGpuBuffer }).fromGpuBuffer;
    this.#queue = options.queue ?? new RunQueue();
    this.#numLayers = arch.numLayers;
    this.#kvh = arch.numKvHeads;
    this.#headDim = arch.headDim;
    this.#kv = kv;
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
    const [kv, sampler] = await Promise.all([
      GpuKv.create(device, arch, options.maxRows),
      GpuSampler.create(device, { vocabSize: arch.vocabSize, maxRows: options.maxRows }),
    ]);
    return new GpuEngineRunner(options, kv, sampler);
  }

  /** Cache slots every row has now (the graph's M). */
  get capacity(): number {
    return this.#kv.capacity;
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
    this.#kv.resize(slotsFor(this.rowCapacity(this.#lengths.longest(length)), this.#kv.capacity), this.#lengths);
  }

  releaseRow(row: number): void {
    checkRow(row, this.maxRows);
    this.#lengths.release(row);
  }

  copyRow(from: number, to: number, length: number): void {
    this.#guard.idle("copyRow");
    checkRange(from, 0, length, this.maxRows, this.#kv.capacity);
    checkRow(to, this.maxRows);
    this.#kv.copyRow(from, to, length);
    this.#lengths.set(to, length);
  }

  readKv(row: number, start: number, length: number, out: Float32Array): void {
    checkRange(row, start, length, this.maxRows, this.#kv.capacity);
    checkCanonical(length, out, this.floatsPerToken);
    this.#kv.read(row, start, length, out);
  }

  async flush(): Promise<void> {
    await this.#kv.flush();
  }

  writeKv(row: number, start: number, length: number, data: Float32Array): void {
    this.#guard.idle("writeKv");
    checkRow(row, this.maxRows);
    checkCanonical(length, data, this.floatsPerToken);
    if (start + length > this.#kv.capacity) this.reserve(start + length);
    this.#kv.write(row, start, length, data);
    this.#lengths.wrote(row, start, length);
  }

  workingBytes(): number {
    return this.maxRows * this.#kv.capacity * this.floatsPerToken * 4;
  }

  async dispose(): Promise<void> {
    await this.flush().catch(() => {});
    this.#kv.destroy();
    this.#lengths.clear();
    this.#sampler.destroy();
    await this.#queue.run(() => this.#session.release());
  }

  /** One model run over `inputs`: the new K/V go into their rows on the GPU, then `finish` reads what it needs. */
  async #run<T>(inputs: RowInput[], finish: (out: Record<string, OrtTensor>, picks: number) => Promise<T>): Promise<T> {
    const seq = checkStep(inputs, this.maxRows, this.maxLength);
    const end = Math.max(...inputs.map((r) => r.start + r.tokens.length));
    if (end > this.#kv.capacity) this.reserve(end);
    return await this.#guard.during(() =>
      this.#queue.run(async () => {
        const picks = logitPicks(inputs);
        const feeds = { ...tokenFeeds(this.#Tensor, inputs, seq, picks), ...this.#cacheFeeds(inputs) };
        const out = await this.#session.run(feeds);
        try {
          this.#kv.storeNew(inputs, seq, (name) => (out[name] as OrtTensor & { gpuBuffer: GPUBuffer }).gpuBuffer);
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
    const [kvh, d, m] = [this.#kvh, this.#headDim, this.#kv.capacity];
    const [keys, values] = this.#kv.buffersFor(inputs.map((r) => r.row));
    const feeds: Record<string, OrtTensor> = {};
    for (let l = 0; l < this.#numLayers; l++) {
      feeds[`key_cache.${l}`] = this.#fromGpuBuffer(keys[l], { dataType: "float32", dims: [count, kvh, d, m] });
      feeds[`value_cache.${l}`] = this.#fromGpuBuffer(values[l], { dataType: "float32", dims: [count, kvh, m, d] });
    }
    return feeds;
  }
}
