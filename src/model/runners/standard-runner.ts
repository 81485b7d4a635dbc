/**
 * The ModelRunner over a standard decoder graph (the layout hub ONNX exports and transformers.js use: inputs
 * input_ids, attention_mask, position_ids and past_key_values.{i}.key/value; outputs logits and present.{i}.*):
 * the fallback for models whose weights the engine graph cannot take. The graph takes the whole past as input
 * and hands back the whole present, so each step gathers the rows' caches into one batch (each row's past
 * left-padded to the longest, its new tokens right-padded to the longest chunk, the pads masked out) and keeps
 * just the new tokens' K/V from the present. Each row owns its cache, per layer one K and one V buffer
 * [kvHeads, capacity, headDim], grown on demand and freed when the row is released.
 */
import type { ModelRunner, RowInput } from "../../engine/model-runner.ts";
import { engineRowCapacity } from "./engine-kv.ts";
import { checkCanonical, checkRow, checkStep, slotsFor, StepGuard } from "./rows.ts";
import type { EngineRunnerOptions } from "./runner-options.ts";
import type { OrtSession, OrtTensor } from "../ort/ort-types.ts";
import { RunQueue } from "../ort/run-queue.ts";

/** What a StandardRunner runs on: what an EngineRunner does, over a standard graph (onnx/model*.onnx). */
export interface StandardRunnerOptions extends Omit<EngineRunnerOptions, "copyInputs"> {
  /**
   * Whether rows of different lengths may share a run, padded and masked (default true). Graphs whose attention
   * derives each row's cache length from its mask (GroupQueryAttention) misread a left-padded past: for them
   * only rows of equal lengths share a run.
   */
  padded?: boolean;
}

type TensorClass = new (type: string, data: unknown, dims: readonly number[]) => OrtTensor;

/** One row's cache: for buffer j = 2 * layer + (0 for K, 1 for V), [kvHeads, capacity, headDim]; and its length. */
interface RowKv {
  buffers: Float32Array[];
  capacity: number;
  length: number;
}

const emptyRow = (): RowKv => ({ buffers: [], capacity: 0, length: 0 });
/** The name suffix of cache buffer j: "3.key" for K of layer 3. */
const kvName = (j: number) => `${j >> 1}.${j & 1 ? "value" : "key"}`;

/** A tensor's data on the CPU (downloading it from the device where the session left it). */
async function cpuFloats(tensor: OrtTensor | undefined, name: string): Promise<Float32Array> {
  if (!tensor) throw new Error(`the graph gave no output ${name}`);
  const data = tensor.location === "cpu" ? tensor.data : await tensor.getData(true);
  if (!(data instanceof Float32Array)) throw new Error(`output ${name} is ${tensor.type}, expected float32`);
  return data;
}

/** Runs a standard decoder graph over KV rows it owns. */
export class StandardRunner implements ModelRunner {
  readonly vocabSize: number;
  readonly floatsPerToken: number;
  readonly maxRows: number;
  readonly maxLength: number;
  readonly #session: OrtSession;
  readonly #Tensor: TensorClass;
  readonly #queue: RunQueue;
  /** Cache buffers per row: K and V of every layer. */
  readonly #count: number;
  readonly #kvHeads: number;
  readonly #headDim: number;
  #rows: RowKv[];
  readonly #guard = new StepGuard();
  readonly #padded: boolean;

  constructor(options: StandardRunnerOptions) {
    const { arch, session } = options;
    this.#count = 2 * arch.numLayers;
    const required = ["input_ids", "attention_mask", "position_ids"];
    for (let j = 0; j < this.#count; j++) required.push(`past_key_values.${kvName(j)}`);
    const missing = required.filter((name) => !session.inputNames.includes(name));
    if (missing.length) throw new Error(`not a standard decoder graph: it lacks the inputs ${missing.join(", ")}`);
    this.#session = session;
    this.#Tensor = options.Tensor as unknown as TensorClass;
    this.#queue = options.queue ?? new RunQueue();
    this.#kvHeads = arch.numKvHeads;
    this.#headDim = arch.headDim;
    this.#rows = Array.from({ length: options.maxRows }, emptyRow);
    this.#padded = options.padded ?? true;
    this.vocabSize = arch.vocabSize;
    this.floatsPerToken = this.#count * arch.numKvHeads * arch.headDim;
    this.maxRows = options.maxRows;
    this.maxLength = options.maxLength;
  }

  async step(inputs: RowInput[]): Promise<Float32Array[]> {
    this.#checkStep(inputs);
    for (const r of inputs) this.#grow(this.#rows[r.row], r.start + r.tokens.length);
    if (this.#padded) return await this.#run(inputs);
    // Without padding, rows of one past length and one chunk length run together; the others in runs of their own.
    const groups = new Map<string, number[]>();
    inputs.forEach((r, b) => {
      const key = `${r.start}:${r.tokens.length}`;
      groups.set(key, [...(groups.get(key) ?? []), b]);
    });
    const logits: Float32Array[] = new Array(inputs.length);
    for (const members of groups.values()) {
      const out = await this.#run(members.map((b) => inputs[b]));
      members.forEach((b, i) => logits[b] = out[i]);
    }
    return logits;
  }

  async #run(inputs: RowInput[]): Promise<Float32Array[]> {
    // A row released while the run is queued or in flight (an aborted request) gets a new, empty cache; the
    // run reads and writes the one it started with.
    const targets = inputs.map((r) => this.#rows[r.row]);
    return await this.#guard.during(() =>
      this.#queue.run(async () => {
        const past = Math.max(...inputs.map((r) => r.start));
        const seq = Math.max(...inputs.map((r) => r.tokens.length));
        const out = await this.#session.run(this.#feeds(inputs, targets, past, seq));
        const [kvh, d, total] = [this.#kvHeads, this.#headDim, past + seq];
        for (let j = 0; j < this.#count; j++) {
          const present = await cpuFloats(out[`present.${kvName(j)}`], `present.${kvName(j)}`);
          inputs.forEach((r, b) => {
            const { buffers, capacity } = targets[b];
            for (let h = 0; h < kvh; h++) {
              const src = ((b * kvh + h) * total + past) * d;
              buffers[j].set(present.subarray(src, src + r.tokens.length * d), (h * capacity + r.start) * d);
            }
          });
        }
        inputs.forEach((r, b) => targets[b].length = r.start + r.tokens.length);
        const logits = await cpuFloats(out.logits, "logits");
        return inputs.map((r, b) => {
          const first = r.allLogits ? 0 : r.tokens.length - 1;
          return logits.subarray((b * seq + first) * this.vocabSize, (b * seq + r.tokens.length) * this.vocabSize);
        });
      })
    );
  }

  /**
   * Checks that rows may hold `length` tokens (they grow as they are written) and shrinks every row whose
   * buffers are four times what its tokens need; empty rows give their buffers up.
   */
  reserve(length: number): void {
    this.#guard.idle("reserve");
    engineRowCapacity(length, this.maxLength);
    for (const r of this.#rows) {
      if (r.length === 0) Object.assign(r, emptyRow());
      else if (slotsFor(engineRowCapacity(r.length, this.maxLength), r.capacity) < r.capacity) this.#relayout(r, r.length);
    }
  }

  releaseRow(row: number): void {
    checkRow(row, this.maxRows);
    this.#rows[row] = emptyRow();
  }

  copyRow(from: number, to: number, length: number): void {
    this.#guard.idle("copyRow");
    this.#checkRange(from, 0, length);
    checkRow(to, this.maxRows);
    const [src, dst] = [this.#rows[from], this.#rows[to]];
    if (from !== to) {
      dst.length = 0; // nothing of its old contents is kept
      this.#grow(dst, length);
      const [d, span] = [this.#headDim, length * this.#headDim];
      for (let j = 0; j < this.#count; j++) {
        for (let h = 0; h < this.#kvHeads; h++) {
          const at = h * src.capacity * d;
          dst.buffers[j].set(src.buffers[j].subarray(at, at + span), h * dst.capacity * d);
        }
      }
    }
    dst.length = length;
  }

  readKv(row: number, start: number, length: number, out: Float32Array): void {
    this.#checkRange(row, start, length);
    checkCanonical(length, out, this.floatsPerToken);
    this.#transfer(this.#rows[row], start, length, out, false);
  }

  writeKv(row: number, start: number, length: number, data: Float32Array): void {
    this.#guard.idle("writeKv");
    checkRow(row, this.maxRows);
    checkCanonical(length, data, this.floatsPerToken);
    const r = this.#rows[row];
    if (!Number.isInteger(start) || start < 0 || start > r.length) {
      throw new Error(`writeKv at token ${start} would leave a gap: row ${row} holds ${r.length} tokens`);
    }
    // Blocks arrive in order from slot 0: a write there starts the row anew.
    if (start === 0) r.length = 0;
    this.#grow(r, start + length);
    this.#transfer(r, start, length, data, true);
    r.length = Math.max(r.length, start + length);
  }

  workingBytes(): number {
    return this.#rows.reduce((sum, r) => sum + r.capacity * this.floatsPerToken * 4, 0);
  }

  async dispose(): Promise<void> {
    this.#rows = Array.from({ length: this.maxRows }, emptyRow);
    await this.#queue.run(() => this.#session.release());
  }

  /** Feeds of one run: each row's past left-padded to `past` tokens, its new tokens right-padded to `seq`. */
  #feeds(inputs: RowInput[], rows: RowKv[], past: number, seq: number): Record<string, OrtTensor> {
    const [count, total, kvh, d] = [inputs.length, past + seq, this.#kvHeads, this.#headDim];
    const ids = new BigInt64Array(count * seq);
    const positions = new BigInt64Array(count * seq);
    const mask = new BigInt64Array(count * total);
    inputs.forEach((r, b) => {
      const last = r.tokens.length - 1;
      mask.fill(1n, b * total + past - r.start, b * total + past + last + 1);
      for (let s = 0; s < seq; s++) {
        ids[b * seq + s] = BigInt(r.tokens[Math.min(s, last)]);
        positions[b * seq + s] = BigInt(r.start + Math.min(s, last));
      }
    });
    const feeds: Record<string, OrtTensor> = {
      input_ids: new this.#Tensor("int64", ids, [count, seq]),
      attention_mask: new this.#Tensor("int64", mask, [count, total]),
      position_ids: new this.#Tensor("int64", positions, [count, seq]),
    };
    for (let j = 0; j < this.#count; j++) {
      const data = new Float32Array(count * kvh * past * d);
      inputs.forEach((r, b) => {
        const { buffers, capacity } = rows[b];
        for (let h = 0; h < kvh; h++) {
          const at = h * capacity * d;
          data.set(buffers[j].subarray(at, at + r.start * d), ((b * kvh + h) * past + past - r.start) * d);
        }
      });
      feeds[`past_key_values.${kvName(j)}`] = new this.#Tensor("float32", data, [count, kvh, past, d]);
    }
    return feeds;
  }

  /** Makes `r` able to hold `length` tokens (growing it, keeping what it holds). */
  #grow(r: RowKv, length: number): void {
    if (length > r.capacity) this.#relayout(r, length);
  }

  /** Re-lays out `r` for the slots `length` tokens get, keeping its first min(held, length) tokens. */
  #relayout(r: RowKv, length: number): void {
    const capacity = engineRowCapacity(Math.max(1, length), this.maxLength);
    const [kvh, d] = [this.#kvHeads, this.#headDim];
    const keep = Math.min(r.length, capacity) * d;
    r.buffers = Array.from({ length: this.#count }, (_, j) => {
      const next = new Float32Array(kvh * capacity * d);
      for (let h = 0; h < kvh && keep > 0; h++) {
        next.set(r.buffers[j].subarray(h * r.capacity * d, h * r.capacity * d + keep), h * capacity * d);
      }
      return next;
    });
    r.capacity = capacity;
  }

  /** Copies tokens [start, start + length) of `r` to or from the canonical layout (buffer j, kv head, token, d). */
  #transfer(r: RowKv, start: number, length: number, canonical: Float32Array, intoRow: boolean): void {
    const span = length * this.#headDim;
    for (let j = 0; j < this.#count; j++) {
      for (let h = 0; h < this.#kvHeads; h++) {
        const at = (h * r.capacity + start) * this.#headDim;
        const base = (j * this.#kvHeads + h) * span;
        if (intoRow) r.buffers[j].set(canonical.subarray(base, base + span), at);
        else canonical.set(r.buffers[j].subarray(at, at + span), base);
      }
    }
  }

  #checkStep(inputs: RowInput[]): void {
    checkStep(inputs, this.maxRows, this.maxLength);
    for (const r of inputs) {
      const held = this.#rows[r.row].length;
      if (r.start > held) throw new Error(`step: row ${r.row} starts at token ${r.start} but holds ${held} tokens`);
    }
  }

  /** Checks that `row` holds tokens [start, start + length). */
  #checkRange(row: number, start: number, length: number): void {
    checkRow(row, this.maxRows);
    const held = this.#rows[row].length;
    if (!Number.isInteger(start) || !Number.isInteger(length) || start < 0 || length < 0 || start + length > held) {
      throw new Error(`tokens [${start}, ${start + length}) are outside the ${held} tokens row ${row} holds`);
    }
  }
}
