/**
 * A ModelRunner whose runner (session and KV rows) lives on the model thread (model-thread.ts): each call becomes a
 * request, answered in the order it was made. Large data crosses in shared memory, not in a new buffer each call
 * (those made the calling thread collect garbage about once a step): a step's logits land in one buffer reused
 * every step, and the prefix cache's blocks (SharedArrayBuffer slabs) are read and written in place; like a cache
 * on another device, readKv fills `out` by the time flush resolves. Calls that answer
 * nothing (reserve, releaseRow, copyRow, writeKv) are checked here as far as they can be without the rows; one that
 * fails on the thread all the same fails the runner's next step or readKv there, once, rather than let it run on
 * rows left as they should not be (the engine then recomputes the rows of that step).
 */
import type { ModelRunner, RowInput } from "../../engine/model-runner.ts";
import { engineRowCapacity } from "../runners/engine-kv.ts";
import { checkCanonical, checkRow, checkRowCount, checkStep } from "../runners/rows.ts";
import { type ModelThread, modelThread, ModelThreadError } from "./model-thread.ts";

/** What the model thread says of a runner it opened. */
export interface ThreadedRunnerInfo {
  handle: number;
  vocabSize: number;
  floatsPerToken: number;
  maxRows: number;
  maxLength: number;
  bytes: number;
}

/** What a step answers beside the logits it wrote into the logits buffer it was given: the runner's bytes. */
export interface StepReply {
  bytes: number;
}

/** The handle of a runner on the model thread, driven from the calling thread. */
export class ThreadedRunner implements ModelRunner {
  readonly vocabSize: number;
  readonly floatsPerToken: number;
  readonly maxRows: number;
  readonly maxLength: number;
  readonly #thread: ModelThread;
  readonly #handle: number;
  #bytes: number;
  #stepping = 0;
  #reads: Promise<void>[] = [];
  #readFailure: Error | null = null;
  /** Where the model thread writes each step's logits: one buffer for every step, not a new one a step. */
  #logits = new SharedArrayBuffer(0);

  constructor(info: ThreadedRunnerInfo, thread: ModelThread = modelThread()) {
    this.#thread = thread;
    this.#handle = info.handle;
    this.#bytes = info.bytes;
    this.vocabSize = info.vocabSize;
    this.floatsPerToken = info.floatsPerToken;
    this.maxRows = info.maxRows;
    this.maxLength = info.maxLength;
  }

  /** The rows' logits are views of the one buffer the model thread writes them into: they hold until the next step. */
  async step(inputs: RowInput[]): Promise<Float32Array[]> {
    checkStep(inputs, this.maxRows, this.maxLength);
    const floats = inputs.map((r) => (r.allLogits ? r.tokens.length : 1) * this.vocabSize);
    const total = floats.reduce((a, b) => a + b, 0);
    if (this.#logits.byteLength < total * 4) this.#logits = new SharedArrayBuffer(total * 4);
    this.#stepping++;
    try {
      const args = { handle: this.#handle, inputs, logits: this.#logits };
      const reply = await this.#thread.call<StepReply>("runner.step", args);
      this.#bytes = reply.bytes;
      let offset = 0;
      return floats.map((n) => new Float32Array(this.#logits, 4 * (offset += n) - 4 * n, n));
    } finally {
      this.#stepping--;
    }
  }

  reserve(length: number, rows?: number): void {
    this.#idle("reserve");
    engineRowCapacity(length, this.maxLength);
    if (rows !== undefined) checkRowCount(rows, this.maxRows);
    this.#send("reserve", { length, rows });
  }

  releaseRow(row: number): void {
    checkRow(row, this.maxRows);
    this.#send("releaseRow", { row });
  }

  copyRow(from: number, to: number, length: number): void {
    this.#idle("copyRow");
    checkRow(from, this.maxRows);
    checkRow(to, this.maxRows);
    this.#send("copyRow", { from, to, length });
  }

  /** Into shared memory (the prefix cache's blocks) the model thread writes in place; other memory gets a copy. */
  readKv(row: number, start: number, length: number, out: Float32Array): void {
    checkRow(row, this.maxRows);
    checkCanonical(length, out, this.floatsPerToken);
    const shared = out.buffer instanceof SharedArrayBuffer ? out : undefined;
    const read = this.#thread.call<Float32Array | null>("runner.readKv", { handle: this.#handle, row, start, length, out: shared })
      .then((data) => {
        if (data) out.set(data);
      });
    this.#reads.push(read.catch((err) => {
      this.#readFailure ??= err;
    }));
  }

  async flush(): Promise<void> {
    const reads = this.#reads;
    this.#reads = [];
    await Promise.all(reads);
    const failure = this.#readFailure;
    this.#readFailure = null;
    if (failure) throw failure;
  }

  writeKv(row: number, start: number, length: number, data: Float32Array): void {
    this.#idle("writeKv");
    checkRow(row, this.maxRows);
    checkCanonical(length, data, this.floatsPerToken);
    // Shared memory (the prefix cache's blocks) is read in place: the model thread takes its calls in order, so a
    // later readKv into the same block cannot overtake this write. Other memory: a copy of just the floats written,
    // moved to the thread, as the caller keeps its block.
    const floats = length * this.floatsPerToken;
    if (data.buffer instanceof SharedArrayBuffer) this.#send("writeKv", { row, start, length, data: data.subarray(0, floats) });
    else {
      const copy = data.slice(0, floats);
      this.#send("writeKv", { row, start, length, data: copy }, [copy.buffer]);
    }
  }

  workingBytes(): number {
    return this.#bytes;
  }

  async dispose(): Promise<void> {
    await this.#thread.call("runner.dispose", { handle: this.#handle });
  }

  /** Sends a call that answers nothing but the runner's bytes; the thread reports its failure (see above). */
  #send(what: string, args: Record<string, unknown>, transfer: ArrayBuffer[] = []): void {
    this.#thread.call<number>(`runner.${what}`, { handle: this.#handle, ...args }, transfer).then(
      (bytes) => this.#bytes = bytes,
      () => {},
    );
  }

  #idle(what: string): void {
    // As on one thread: the step in flight writes the rows it runs when it ends.
    if (this.#stepping > 0) throw new Error(`${what} while a step is running`);
  }
}

/**
 * Opens a runner on the model thread with `op` (a "open.*" operation of the thread) and returns its handle here,
 * with what else the thread answered. Where no thread can run, `here` opens the runner on the calling thread.
 */
export async function openOffThread<T extends object>(
  op: string,
  args: unknown,
  here: () => Promise<{ runner: ModelRunner } & Partial<T>>,
): Promise<{ runner: ModelRunner } & Partial<T>> {
  let thread: ModelThread;
  let info: ThreadedRunnerInfo & Partial<T>;
  try {
    thread = modelThread();
    info = await thread.call<ThreadedRunnerInfo & Partial<T>>(op, args);
  } catch (err) {
    if (err instanceof ModelThreadError) return await here();
    throw err;
  }
  return { ...info, runner: new ThreadedRunner(info, thread) };
}
