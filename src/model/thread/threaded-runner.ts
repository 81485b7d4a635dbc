/**
 * A ModelRunner whose runner (session and KV rows) lives on the model thread (model-thread.ts): each call becomes a
 * request, answered in the order it was made. Steps, and KV read back for the prefix cache, travel as moved buffers,
 * not copies; like a cache on another device, readKv fills `out` by the time flush resolves. Calls that answer
 * nothing (reserve, releaseRow, copyRow, writeKv) are checked here as far as they can be without the rows; one that
 * fails on the thread all the same fails the runner's next step or readKv there, once, rather than let it run on
 * rows left as they should not be (the engine then recomputes the rows of that step).
 */
import type { ModelRunner, RowInput } from "../../engine/model-runner.ts";
import { engineRowCapacity } from "../runners/engine-kv.ts";
import { checkCanonical, checkRow, checkStep } from "../runners/rows.ts";
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

/** A step's logits as they come back: the moved buffers, and each row's (buffer, byte offset, floats). */
export interface StepReply {
  buffers: ArrayBuffer[];
  rows: [number, number, number][];
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

  constructor(info: ThreadedRunnerInfo, thread: ModelThread = modelThread()) {
    this.#thread = thread;
    this.#handle = info.handle;
    this.#bytes = info.bytes;
    this.vocabSize = info.vocabSize;
    this.floatsPerToken = info.floatsPerToken;
    this.maxRows = info.maxRows;
    this.maxLength = info.maxLength;
  }

  async step(inputs: RowInput[]): Promise<Float32Array[]> {
    checkStep(inputs, this.maxRows, this.maxLength);
    this.#stepping++;
    try {
      const reply = await this.#thread.call<StepReply>("runner.step", { handle: this.#handle, inputs });
      this.#bytes = reply.bytes;
      return reply.rows.map(([b, offset, length]) => new Float32Array(reply.buffers[b], offset, length));
    } finally {
      this.#stepping--;
    }
  }

  reserve(length: number): void {
    this.#idle("reserve");
    engineRowCapacity(length, this.maxLength);
    this.#send("reserve", { length });
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

  readKv(row: number, start: number, length: number, out: Float32Array): void {
    checkRow(row, this.maxRows);
    checkCanonical(length, out, this.floatsPerToken);
    const read = this.#thread.call<Float32Array>("runner.readKv", { handle: this.#handle, row, start, length })
      .then((data) => out.set(data));
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
    // A copy of just the floats written, moved to the thread: the caller keeps its block.
    const floats = data.slice(0, length * this.floatsPerToken);
    this.#send("writeKv", { row, start, length, data: floats }, [floats.buffer]);
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
