/**
 * Sampling a step's rows on several threads. While the engine samples, the model is idle, so the cores it ran on
 * are free: the rows are split between this thread and helper threads (node:worker_threads, on Node, Deno and
 * Bun alike), each with its own Sampler. A row's token depends only on its logits and its resolved settings
 * (RowSampling, its random number already drawn), so which thread samples it never changes the answer.
 */
import { availableParallelism } from "node:os";
import type { Worker } from "node:worker_threads";
import { fromWire, toWire } from "../runtime/wire.ts";
import { startWorker } from "../runtime/worker.ts";
import type { SampleJob, SampleReply } from "./sample-worker.ts";
import { type RowSampling, type SampledToken, Sampler } from "./sampler.ts";

/** Fewer rows than this are sampled on the calling thread alone: a message costs more than they do. */
const MIN_ROWS_TO_SHARE = 4;

/**
 * Helper threads by default: every core but the calling thread's, at most 7. On 2 cores a helper gained nothing
 * while ONNX Runtime's threads spun on after each run, holding the second core; with their spinning stopped at the
 * end of a run (backends.ts), one helper cut the GRPO load's host time by about a third (2.2-2.35 s to 1.55-1.7 s).
 */
export function defaultSamplerThreads(): number {
  return Math.min(7, availableParallelism() - 1);
}

/** Samples rows of logits on the calling thread and `threads` helpers. */
export class SamplerPool {
  readonly #sampler = new Sampler();
  readonly #threads: number;
  #helpers: Helper[] | null = null;

  constructor(threads = defaultSamplerThreads()) {
    if (!Number.isInteger(threads) || threads < 0) throw new RangeError(`sampler threads ${threads} is not a count`);
    this.#threads = threads;
  }

  /** Helper threads running now (they start on the first batch large enough to share; 0 after one failed). */
  get helpers(): number {
    return this.#helpers?.length ?? 0;
  }

  /** Each row's token, sampled from its logits (left untouched) as its settings say. */
  async sample(logits: readonly Float32Array[], rows: readonly RowSampling[]): Promise<SampledToken[]> {
    if (logits.length !== rows.length) throw new Error(`${logits.length} rows of logits, ${rows.length} settings`);
    const helpers = rows.length >= MIN_ROWS_TO_SHARE ? this.#started() : [];
    const share = Math.ceil(rows.length / (helpers.length + 1));
    const theirs = helpers.map((helper, h) => {
      const [from, to] = [share * (h + 1), Math.min(rows.length, share * (h + 2))];
      // A helper that fails leaves its rows to this thread.
      return from >= to ? Promise.resolve([]) : helper.sample(logits.slice(from, to), rows.slice(from, to)).catch(() => {
        this.#retire();
        return logits.slice(from, to).map((row, i) => this.#sampler.sampleRow(row, rows[from + i]));
      });
    });
    const mine = rows.slice(0, share).map((row, i) => this.#sampler.sampleRow(logits[i], row));
    return [...mine, ...(await Promise.all(theirs)).flat()];
  }

  /** Stops the helper threads (a later batch starts them again). */
  async close(): Promise<void> {
    const helpers = this.#helpers ?? [];
    this.#helpers = null;
    await Promise.all(helpers.map((h) => h.close()));
  }

  #started(): Helper[] {
    if (this.#helpers === null) {
      try {
        this.#helpers = Array.from({ length: this.#threads }, () => new Helper());
      } catch {
        this.#helpers = [];
      }
    }
    return this.#helpers;
  }

  // After a helper fails, this pool samples on the calling thread only.
  #retire(): void {
    const helpers = this.#helpers ?? [];
    this.#helpers = [];
    for (const h of helpers) void h.close();
  }
}

let shared: SamplerPool | null = null;

/** The process's pool (engines share it: their steps take turns on one thread anyway). */
export function sharedSamplerPool(): SamplerPool {
  return shared ??= new SamplerPool();
}

/** One helper thread: jobs run one at a time; rows travel in a shared buffer (the caller's, or one it keeps). */
class Helper {
  readonly #worker: Worker;
  #buffer = new SharedArrayBuffer(0);
  #queue: Promise<unknown> = Promise.resolve();
  #busy = false;
  #reply: ((reply: SampleReply) => void) | null = null;
  #failure: Error | null = null;

  constructor() {
    this.#worker = startWorker(import.meta.url, "sample-worker");
    this.#worker.unref();
    this.#worker.on("message", (reply: SampleReply) => this.#settle(fromWire(reply) as SampleReply));
    this.#worker.on("error", (err) => this.#fail(err));
    this.#worker.on("exit", (code) => this.#fail(new Error(`sampler thread exited (${code})`)));
  }

  /** Samples the rows; an idle helper is sent them at once, so that it works while the caller samples its own. */
  sample(logits: readonly Float32Array[], rows: readonly RowSampling[]): Promise<SampledToken[]> {
    const job = this.#busy ? this.#queue.then(() => this.#run(logits, rows)) : this.#run(logits, rows);
    this.#busy = true;
    const settled = job.then(() => {}, () => {});
    this.#queue = settled;
    void settled.then(() => {
      if (this.#queue === settled) this.#busy = false;
    });
    return job;
  }

  async close(): Promise<void> {
    this.#failure ??= new Error("sampler thread closed");
    await this.#worker.terminate();
  }

  #run(logits: readonly Float32Array[], rows: readonly RowSampling[]): Promise<SampledToken[]> {
    if (this.#failure) return Promise.reject(this.#failure);
    const vocabSize = logits[0].length;
    // Rows already in one shared buffer (the model thread's logits) are read there; others are copied into ours.
    const shared = logits[0].buffer;
    let job: SampleJob;
    if (shared instanceof SharedArrayBuffer && logits.every((row) => row.buffer === shared)) {
      job = { buffer: shared, vocabSize, offsets: logits.map((row) => row.byteOffset), rows: [...rows] };
    } else {
      const bytes = rows.length * vocabSize * 4;
      if (this.#buffer.byteLength < bytes) this.#buffer = new SharedArrayBuffer(bytes);
      const view = new Float32Array(this.#buffer, 0, rows.length * vocabSize);
      logits.forEach((row, i) => view.set(row, i * vocabSize));
      job = { buffer: this.#buffer, vocabSize, offsets: rows.map((_, i) => i * vocabSize * 4), rows: [...rows] };
    }
    return new Promise<SampledToken[]>((resolve, reject) => {
      this.#reply = (reply) => ("error" in reply ? reject(new Error(reply.error)) : resolve(reply.tokens));
      this.#worker.ref();
      const moved: ArrayBuffer[] = [];
      this.#worker.postMessage(toWire(job, moved), moved);
    });
  }

  #settle(reply: SampleReply): void {
    this.#worker.unref();
    const settle = this.#reply;
    this.#reply = null;
    settle?.(reply);
  }

  #fail(err: unknown): void {
    this.#failure ??= err instanceof Error ? err : new Error(String(err));
    this.#settle({ error: this.#failure.message });
  }
}
