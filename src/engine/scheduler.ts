/**
 * Continuous batching: decides, before every model step, which sequences join (FIFO), which are preempted when KV
 * memory runs out, and how the step's token budget is split between decoding rows and chunks of prefill.
 */
import { PrefixCache } from "./prefix-cache.ts";
import type { Sequence } from "./sequence.ts";

export interface SchedulerLimits {
  /** Most sequences running at once (rows). */
  maxNumSeqs: number;
  /** Most tokens fed to the model in one step (decode tokens + prefill chunk tokens). */
  maxNumBatchedTokens: number;
  /** Bytes for all KV: the running rows first, the prefix cache gets what is left. */
  kvCacheBytes: number;
  /** Bytes one token's KV takes across layers. */
  bytesPerToken: number;
  /** Rounds a row length up to what the runner will allocate (its buckets). */
  rowCapacity: (length: number) => number;
}

/** What a row needs: the tokens already in it and those about to be fed. */
type RowDemand = Pick<Sequence, "numComputed" | "numPending">;

/** A sequence admitted this step, with the prefix-cache blocks it reuses. */
export interface Admission {
  seq: Sequence;
  cachedBlocks: number[];
}

export interface StepPlan {
  admitted: Admission[];
  preempted: Sequence[];
  /** Sequences feeding their one newest token. */
  decode: Sequence[];
  /** Sequences feeding the next `tokens` of their pending prompt (chunked prefill). */
  prefill: PrefillChunk[];
}

/** A prefill chunk: the next `tokens` of a sequence's pending prompt. */
export interface PrefillChunk {
  seq: Sequence;
  tokens: number;
  /** The chunk needs the logits of each of its tokens (prompt log-probabilities). */
  allLogits?: boolean;
}

/**
 * Groups a step's prefill chunks into model runs. A run pads its rows to its longest chunk, so chunks are sorted
 * by length and a run takes only chunks at least half as long as its first: padding never doubles a run's work.
 * A chunk that needs the logits of all its tokens (prompt log-probabilities) runs alone.
 */
export function prefillRuns(chunks: readonly PrefillChunk[]): PrefillChunk[][] {
  const runs: PrefillChunk[][] = [];
  for (const chunk of [...chunks].sort((a, b) => b.tokens - a.tokens)) {
    const run = runs.at(-1);
    if (chunk.allLogits) runs.push([chunk]);
    else if (run && !run[0].allLogits && chunk.tokens * 2 >= run[0].tokens) run.push(chunk);
    else runs.push([chunk]);
  }
  return runs;
}

/** FIFO continuous-batching scheduler over a KV budget. */
export class Scheduler {
  readonly waiting: Sequence[] = [];
  readonly running: Sequence[] = [];

  constructor(readonly limits: SchedulerLimits, readonly cache: PrefixCache, readonly prefixCaching: boolean) {}

  get hasWork(): boolean {
    return this.waiting.length > 0 || this.running.length > 0;
  }

  /** Queues a new sequence (behind those already waiting). */
  add(seq: Sequence): void {
    seq.status = "waiting";
    this.waiting.push(seq);
  }

  /** Removes a sequence wherever it is; the caller frees its row and blocks. Returns whether it was running. */
  remove(seq: Sequence): boolean {
    const w = this.waiting.indexOf(seq);
    if (w >= 0) this.waiting.splice(w, 1);
    const r = this.running.indexOf(seq);
    if (r >= 0) this.running.splice(r, 1);
    return r >= 0;
  }

  /** Moves every running sequence, in order, back to the head of the queue to be recomputed; returns them. */
  preemptAll(): Sequence[] {
    return this.preempt([...this.running]);
  }

  /** Moves these running sequences, in order, back to the head of the queue to be recomputed; returns them. */
  preempt(seqs: readonly Sequence[]): Sequence[] {
    const victims = seqs.filter((seq) => this.remove(seq));
    for (const seq of victims) {
      seq.status = "waiting";
      seq.numComputed = 0;
      seq.preemptions++;
    }
    this.waiting.unshift(...victims);
    return victims;
  }

  /** Plans the next step. */
  schedule(): StepPlan {
    const plan: StepPlan = { admitted: [], preempted: [], decode: [], prefill: [] };
    this.#preemptToFit(plan);
    this.#admit(plan);
    let budget = this.limits.maxNumBatchedTokens;
    for (const seq of this.running) {
      if (!seq.isPrefilling) {
        plan.decode.push(seq);
        budget--;
      }
    }
    for (const seq of this.running) {
      if (!seq.isPrefilling) continue;
      // A step with nothing else to do always makes prefill progress, whatever the budget says.
      const room = budget > 0 ? budget : plan.decode.length + plan.prefill.length === 0 ? 1 : 0;
      if (room === 0) break;
      const tokens = Math.min(seq.numPending, room);
      plan.prefill.push({ seq, tokens, allLogits: seq.wantsAllLogits });
      budget -= tokens;
    }
    return plan;
  }

  /** KV bytes the running rows need if each holds `extra` more tokens than computed. */
  #workingBytes(seqs: readonly RowDemand[], extra: (s: RowDemand) => number): number {
    let longest = 0;
    for (const s of seqs) longest = Math.max(longest, s.numComputed + extra(s));
    return seqs.length * this.limits.rowCapacity(longest) * this.limits.bytesPerToken;
  }

  /** Whether rows for `seqs` (each about to grow by its pending tokens) fit beside nothing else. */
  #fits(seqs: readonly RowDemand[]): boolean {
    return this.#workingBytes(seqs, (s) => Math.max(1, s.numPending)) <= this.limits.kvCacheBytes;
  }

  /** Preempts the youngest running sequences until the running rows fit; the prefix cache gets the rest. */
  #preemptToFit(plan: StepPlan): void {
    while (this.running.length > 1 && !this.#fits(this.running)) {
      const victim = this.running.pop()!;
      victim.status = "waiting";
      victim.numComputed = 0;
      victim.preemptions++;
      this.waiting.unshift(victim);
      plan.preempted.push(victim);
    }
    this.#resizeCache(this.running);
  }

  #resizeCache(running: readonly Sequence[]): void {
    const working = this.#workingBytes(running, (s) => Math.max(1, s.numPending));
    this.cache.resize(Math.max(0, this.limits.kvCacheBytes - working) / this.cache.bytesPerBlock);
  }

  /**
   * Admits waiting sequences in arrival order while rows and KV memory allow. One that waits for a shared
   * prefill (below) keeps its place in the queue but does not hold back the ones behind it.
   */
  #admit(plan: StepPlan): void {
    let next = 0;
    while (next < this.waiting.length && this.running.length < this.limits.maxNumSeqs) {
      const seq = this.waiting[next];
      // Prompt log-probabilities need the whole prompt computed: such a sequence neither waits for nor reuses a prefix.
      const reuses = this.prefixCaching && seq.promptLogprobs === null;
      if (reuses && this.#awaitsSharedPrefill(seq)) {
        next++;
        continue;
      }
      // Leave at least one token to compute: the step must produce logits to sample from.
      const cachedBlocks = reuses ? this.cache.match(seq.tokens, seq.length - 1) : [];
      const cached = cachedBlocks.length * this.cache.blockSize;
      const demand = { numComputed: cached, numPending: seq.length - cached };
      if (this.running.length > 0 && !this.#fits([...this.running, demand])) break;
      this.waiting.splice(next, 1);
      if (reuses) this.cache.countLookup(seq.length, cached);
      this.cache.acquire(cachedBlocks);
      seq.status = "running";
      seq.numComputed = cached;
      // What the prompt found cached on its first admission (a preempted sequence's recompute is not a prompt hit).
      if (seq.scheduledAt === null) seq.cachedPromptTokens = cached;
      seq.scheduledAt ??= performance.now();
      this.running.push(seq);
      plan.admitted.push({ seq, cachedBlocks });
    }
    this.#resizeCache(this.running);
  }

  /**
   * Whether a running sequence is still prefilling a first block this one shares: then this one waits, and
   * reuses that KV from the prefix cache instead of computing it again (the n samples of one prompt, say).
   */
  #awaitsSharedPrefill(seq: Sequence): boolean {
    const bs = this.cache.blockSize;
    if (seq.length <= bs) return false;
    return this.running.some((r) =>
      r.isPrefilling && r.length > bs && r.tokens.slice(0, bs).every((t, i) => t === seq.tokens[i])
    );
  }
}
