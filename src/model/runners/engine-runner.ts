/**
 * The ModelRunner over the engine graph (builder/engine-decoder.ts): the KV cache lives in this runner's row
 * buffers and goes into every step as input only, as views of those buffers; each step hands back just the new
 * tokens' K/V, which the runner writes into the rows itself.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import type { ModelRunner, RowInput } from "../../engine/model-runner.ts";
import { archFromConfig } from "../builder/arch.ts";
import { ensureEngineGraph, ONNX_FILES } from "../builder/build.ts";
import { EngineKv, engineRowCapacity } from "./engine-kv.ts";
import type { Backend } from "../ort/backends.ts";
import type { EngineRunnerOptions } from "./runner-options.ts";
import type { OrtSession, OrtSessionOptions, OrtTensor } from "../ort/ort-types.ts";
import { RunQueue } from "../ort/run-queue.ts";
import { freeBuffer } from "../../runtime/gc.ts";
import { GpuEngineRunner } from "./gpu-engine-runner.ts";
import { logitPicks, rowLogits, type TensorClass, tensorClass, tokenFeeds } from "./engine-feeds.ts";
import { checkCanonical, checkRange, checkRow, checkRowCount, checkStep, RowLengths, slotsFor, StepGuard } from "./rows.ts";

/** Runs the engine graph over KV rows it owns. */
export class EngineRunner implements ModelRunner {
  readonly vocabSize: number;
  readonly floatsPerToken: number;
  readonly maxRows: number;
  readonly maxLength: number;
  readonly #session: OrtSession;
  readonly #Tensor: TensorClass;
  readonly #kv: EngineKv;
  readonly #queue: RunQueue;
  readonly #copyInputs: boolean;
  readonly #numLayers: number;
  readonly #lengths: RowLengths;
  readonly #guard = new StepGuard();
  /** The copied cache of the last run that copied it (see #feeds); grows to the largest such run. */
  #fed = new Float32Array(0);
  /** The buffer of the last step's logits, until releaseLogits. */
  #logits: ArrayBufferLike | null = null;
  /** Reserves in a row that found half the held rows or fewer in use (rows are dropped after SHRINK_AFTER). */
  #fewerRows = 0;

  constructor(options: EngineRunnerOptions) {
    const { arch } = options;
    this.#session = options.session;
    this.#Tensor = tensorClass(options.Tensor);
    this.#kv = new EngineKv(arch);
    this.#queue = options.queue ?? new RunQueue();
    this.#copyInputs = options.copyInputs ?? false;
    this.#numLayers = arch.numLayers;
    this.#lengths = new RowLengths(options.maxRows);
    this.vocabSize = arch.vocabSize;
    this.floatsPerToken = this.#kv.floatsPerToken;
    this.maxRows = options.maxRows;
    this.maxLength = options.maxLength;
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
    const seq = checkStep(inputs, this.maxRows, this.maxLength);
    const end = Math.max(...inputs.map((r) => r.start + r.tokens.length));
    if (end > this.#kv.capacity) this.reserve(end);
    this.#holdRow(Math.max(...inputs.map((r) => r.row)));
    return await this.#guard.during(() =>
      this.#queue.run(async () => {
        const picks = logitPicks(inputs);
        const out = await this.#session.run(this.#feeds(inputs, seq, picks));
        const rows = inputs.map((r) => r.row);
        const starts = inputs.map((r) => r.start);
        const lengths = inputs.map((r) => r.tokens.length);
        for (let l = 0; l < this.#numLayers; l++) {
          const [key, value] = [out[`key.${l}`].data, out[`value.${l}`].data] as Float32Array[];
          this.#kv.storeNew(l, rows, starts, lengths, seq, key, value);
          freeBuffer(key.buffer);
          freeBuffer(value.buffer);
        }
        this.#lengths.stepped(inputs);
        const logits = out.logits.data as Float32Array;
        this.#logits = logits.buffer;
        return rowLogits(logits, inputs, picks, this.vocabSize);
      })
    );
  }

  /** Frees the last step's logits (a new buffer each run: see freeBuffer). */
  releaseLogits(): void {
    if (this.#logits) freeBuffer(this.#logits);
    this.#logits = null;
  }

  /**
   * Grows every row to hold `length` tokens, and holds rows [0, rows) at least; shrinks them when no row needs a
   * quarter of the slots any more, and drops the rows above the last one in use once they have been at least half
   * of those held for SHRINK_AFTER calls in a row (a re-layout copies every row: requests coming and going must not
   * cause one a step). All of it in one re-layout at most.
   */
  reserve(length: number, rows = 0): void {
    this.#guard.idle("reserve");
    if (rows) checkRowCount(rows, this.maxRows);
    const capacity = slotsFor(this.rowCapacity(this.#lengths.longest(length)), this.#kv.capacity);
    const used = Math.max(rows, this.#lengths.used());
    this.#fewerRows = used * 2 <= this.#kv.rows ? this.#fewerRows + 1 : 0;
    const drop = this.#fewerRows >= SHRINK_AFTER || used === 0;
    const held = used > this.#kv.rows || drop ? heldRows(used, this.maxRows) : this.#kv.rows;
    this.#kv.resize(capacity, held);
  }

  /** Makes rows [0, row] exist: memory follows the highest row in use rather than the most rows there may be. */
  #holdRow(row: number): void {
    if (row >= this.#kv.rows) this.#kv.resize(this.#kv.capacity, heldRows(row + 1, this.maxRows));
  }

  /** Marks `row` empty, so its tokens no longer keep the capacity from shrinking. */
  releaseRow(row: number): void {
    checkRow(row, this.maxRows);
    this.#lengths.release(row);
  }

  copyRow(from: number, to: number, length: number): void {
    this.#guard.idle("copyRow");
    checkRange(from, 0, length, this.maxRows, this.#kv.capacity);
    checkRow(to, this.maxRows);
    this.#holdRow(to);
    if (from !== to) this.#kv.copyRow(from, to, length);
    this.#lengths.set(to, length);
  }

  readKv(row: number, start: number, length: number, out: Float32Array): void {
    checkRange(row, start, length, this.maxRows, this.#kv.capacity);
    checkCanonical(length, out, this.floatsPerToken);
    this.#kv.read(row, start, length, out);
  }

  writeKv(row: number, start: number, length: number, data: Float32Array): void {
    this.#guard.idle("writeKv");
    checkRow(row, this.maxRows);
    checkCanonical(length, data, this.floatsPerToken);
    if (start + length > this.#kv.capacity) this.reserve(start + length);
    this.#holdRow(row);
    this.#kv.write(row, start, length, data);
    this.#lengths.wrote(row, start, length);
  }

  workingBytes(): number {
    return this.#kv.bytes;
  }

  async dispose(): Promise<void> {
    this.#kv.clear();
    this.#fed = new Float32Array(0);
    this.#lengths.clear();
    await this.#queue.run(() => this.#session.release());
  }

  /**
   * Feeds of one run: the token inputs, and the rows' cache (see tokenFeeds). One ascending range of rows is fed as
   * views of the row buffers, all their slots: onnxruntime-node reads them where they lie, and onnxruntime-web, which
   * copies every input into its heap, copies them once. Other sets of rows (prefill chunks) are gathered, and so is
   * a range whose rows hold few of the slots (under CUT_BELOW where the runtime copies its inputs, CUT_BELOW_IN_PLACE
   * where it does not): either copy takes only the slots the rows hold (feedSlots), so the run computes over those
   * alone. The copy goes into one
   * buffer kept from run to run, so that no step allocates its cache's size anew.
   */
  #feeds(inputs: RowInput[], seq: number, picks: number): Record<string, OrtTensor> {
    const count = inputs.length;
    const feeds = tokenFeeds(this.#Tensor, inputs, seq, picks);
    const { numKvHeads: kvh, headDim: d } = this.#kv.shape;
    const capacity = this.#kv.capacity;
    const slots = feedSlots(inputs, capacity);
    const first = inputs[0].row;
    const inRange = inputs.every((r, b) => r.row === first + b);
    if (inRange && slots >= capacity * (this.#copyInputs ? CUT_BELOW : CUT_BELOW_IN_PLACE)) {
      for (let l = 0; l < this.#numLayers; l++) {
        const { key, value } = this.#kv.rowRange(l, first, count);
        feeds[`key_cache.${l}`] = new this.#Tensor("float32", key, [count, kvh, d, capacity]);
        feeds[`value_cache.${l}`] = new this.#Tensor("float32", value, [count, kvh, capacity, d]);
      }
      return feeds;
    }
    const size = count * kvh * d * slots;
    if (this.#fed.length < 2 * this.#numLayers * size) {
      freeBuffer(this.#fed.buffer);
      this.#fed = new Float32Array(2 * this.#numLayers * size);
    }
    const rows = inputs.map((r) => r.row);
    for (let l = 0; l < this.#numLayers; l++) {
      const key = this.#fed.subarray(2 * l * size, (2 * l + 1) * size);
      const value = this.#fed.subarray((2 * l + 1) * size, (2 * l + 2) * size);
      this.#kv.copyRows(l, rows, slots, key, value);
      feeds[`key_cache.${l}`] = new this.#Tensor("float32", key, [count, kvh, d, slots]);
      feeds[`value_cache.${l}`] = new this.#Tensor("float32", value, [count, kvh, slots, d]);
    }
    return feeds;
  }
}

/**
 * Cache slots a run fed a copy of its rows' cache needs: the most any of its rows holds (the graph masks out the
 * slots past each row's length), rounded up to a multiple of FEED_SLOTS_STEP so that runs' shapes repeat, at least
 * one and at most `capacity`.
 */
export function feedSlots(inputs: readonly RowInput[], capacity: number): number {
  const held = Math.max(1, ...inputs.map((r) => r.start));
  return Math.min(capacity, Math.ceil(held / FEED_SLOTS_STEP) * FEED_SLOTS_STEP);
}

/** Granularity of the slots a copied cache is cut to. */
const FEED_SLOTS_STEP = 16;

/**
 * Where the runtime copies its inputs, a range of rows holding under this share of the slots is fed cut to them:
 * the cut costs a copy of what the rows hold and saves copying and computing over the rest (measured about even
 * at 5/8 on onnxruntime-web's WASM build, bench-135m, 32 rows).
 */
const CUT_BELOW = 2 / 3;

/**
 * Where the runtime reads inputs where they lie (onnxruntime-node), the cut is a copy the run would not otherwise
 * make, written and read again, so it pays only once the rows hold under a third of the slots (prefill chunks of new
 * requests into rows laid out for longer ones).
 */
const CUT_BELOW_IN_PLACE = 1 / 3;

/** Calls to reserve (about one a step) that must find few rows in use before rows are dropped. */
const SHRINK_AFTER = 64;

/** Rows to hold for rows [0, used) in use: a multiple of 4 with at least one spare (moves need a free row). */
function heldRows(used: number, maxRows: number): number {
  return used === 0 ? 0 : Math.min(maxRows, Math.ceil((used + 1) / 4) * 4);
}

/** Options of openEngineRunner. */
export interface OpenEngineRunnerOptions {
  /** A model folder whose standard graph has the builder's weight names (one the builder wrote). */
  dir: string;
  /** fp32, q8 or q4 (the runner's cache is float32). */
  dtype?: "fp32" | "q8" | "q4";
  /** The device backend the model was loaded on: the engine graph opens there too. */
  backend: Backend;
  sessionOptions?: OrtSessionOptions;
  maxRows: number;
  /** Defaults to the model's max_position_embeddings. */
  maxLength?: number;
  /** On WebGPU, keep the cache in host memory and read logits back each step (EngineRunner) anyway. */
  hostCache?: boolean;
}

/**
 * Opens the engine graph of a model folder (writing it on first use) and a runner over it, on the given backend:
 * on onnxruntime-web's WebGPU, one whose cache and logits stay on the GPU (GpuEngineRunner) unless `hostCache`.
 */
export async function openEngineRunner(options: OpenEngineRunnerOptions): Promise<EngineRunner | GpuEngineRunner> {
  const { backend } = options;
  const dtype = options.dtype ?? "fp32";
  const enginePath = ensureEngineGraph(options.dir, dtype);
  const arch = archFromConfig(JSON.parse(fs.readFileSync(path.join(options.dir, "config.json"), "utf8")));
  // The engine graph points into the standard graph's external data file (same name, same offsets).
  const dataFile = `${path.join(options.dir, ONNX_FILES[dtype])}_data`;
  const externalData = fs.existsSync(dataFile) ? [{ name: path.basename(dataFile), path: dataFile }] : [];
  const onGpu = backend.device === "webgpu" && backend.runtime === "onnxruntime-web" && !options.hostCache;
  const sessionOptions: OrtSessionOptions = { ...options.sessionOptions };
  if (onGpu) sessionOptions.preferredOutputLocation = "gpu-buffer";
  const session = await backend.openFile({ model: enginePath, externalData }, sessionOptions);
  const common = {
    session,
    Tensor: backend.Tensor,
    arch,
    maxRows: options.maxRows,
    maxLength: options.maxLength ?? arch.maxPositionEmbeddings,
    queue: backend.runQueue(),
  };
  if (!onGpu) return new EngineRunner({ ...common, copyInputs: backend.runtime === "onnxruntime-web" });
  try {
    const env = backend.ort.env as { webgpu: { device: Promise<GPUDevice> | GPUDevice } };
    return await GpuEngineRunner.create({ ...common, device: await env.webgpu.device });
  } catch (err) {
    await session.release();
    throw err;
  }
}
