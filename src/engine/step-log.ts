/**
 * What the engine did, for `--log-level debug`: the steps since the last line, summed, at most one line a second
 * while it works (a step takes milliseconds, so a line per step would drown everything else).
 */

/** One engine step as the debug log sums it. */
export interface StepSummary {
  /** Sequences that fed one token each. */
  decode: number;
  /** Sequences that fed a prompt chunk, and the chunks' tokens. */
  prefillSeqs: number;
  prefillTokens: number;
  /** Sequences admitted and preempted by the step's plan. */
  admitted: number;
  preempted: number;
  /** Wall time of the step: model runs, sampling and bookkeeping. */
  ms: number;
  /** After the step. */
  running: number;
  waiting: number;
  kvUsedBytes: number;
  kvCacheBytes: number;
}

/** Sums steps and writes one line per `intervalMs` while steps come. */
export class StepLog {
  #steps = 0;
  #decode = 0;
  #prefillSeqs = 0;
  #prefillTokens = 0;
  #admitted = 0;
  #preempted = 0;
  #ms = 0;
  #maxMs = 0;
  #since: number;

  constructor(
    readonly write: (line: string) => void,
    readonly intervalMs = 1000,
    readonly now: () => number = () => performance.now(),
  ) {
    this.#since = now();
  }

  record(step: StepSummary): void {
    this.#steps++;
    this.#decode += step.decode;
    this.#prefillSeqs += step.prefillSeqs;
    this.#prefillTokens += step.prefillTokens;
    this.#admitted += step.admitted;
    this.#preempted += step.preempted;
    this.#ms += step.ms;
    this.#maxMs = Math.max(this.#maxMs, step.ms);
    const elapsed = this.now() - this.#since;
    if (elapsed < this.intervalMs) return;
    const kv = step.kvCacheBytes > 0 ? (100 * step.kvUsedBytes) / step.kvCacheBytes : 0;
    this.write(
      `engine: ${this.#steps} steps in ${(elapsed / 1000).toFixed(1)} s: ${this.#decode} decode tokens, ` +
        `${this.#prefillTokens} prefill tokens in ${this.#prefillSeqs} chunks, ${this.#admitted} admitted, ` +
        `${this.#preempted} preempted; step ${(this.#ms / this.#steps).toFixed(1)} ms mean, ${this.#maxMs.toFixed(1)} ms max ` +
        `(${((100 * this.#ms) / elapsed).toFixed(0)}% busy); now ${step.running} running, ${step.waiting} waiting, ` +
        `KV ${kv.toFixed(1)}% used`,
    );
    this.#steps = this.#decode = this.#prefillSeqs = this.#prefillTokens = this.#admitted = this.#preempted = 0;
    this.#ms = this.#maxMs = 0;
    this.#since = this.now();
  }
}
