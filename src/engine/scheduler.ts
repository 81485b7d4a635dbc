/**
 * Continuous batching: decides, before every model step, which sequences join (FIFO, or by priority then arrival
 * under the priority policy), which are preempted when KV memory runs out (the youngest, or the lowest priority's
 * youngest), and how the step's token budget is split between decoding rows and chunks of prefill.
 */
import { PrefixCache } from "./prefix-cache.ts";
import type { Sequence } from "./sequence.ts";

/**
 * vLLM's --scheduling-policy: fcfs (first come, first served) or priority (a lower `priority` runs first, ties in
 * arrival order; preemption takes the lowest priority first).
 */
export type SchedulingPolicy = "fcfs" | "priority";

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
  /**
   * Bytes the runner's rows hold now. They can be more than the running sequences need: a runner keeps rows laid out
   * after their sequences end (until it re-lays them out), and while nothing runs the prefix cache would otherwise
   * take the whole budget beside them.
   */
  heldBytes?: () => number;
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

/** Whether `a` runs before `b`: under the priority policy, the lower priority; then the earlier arrival. */
function before(a: Sequence, b: Sequence, policy: SchedulingPolicy): boolean {
  if (policy === "priority" && a.params.priority !== b.params.priority) return a.params.priority < b.params.priority;
  return a.id < b.id;
}

/** Continuous-batching scheduler over a KV budget: FIFO, or by priority. */
export class Scheduler {
  readonly waiting: Sequence[] = [];
  readonly running: Sequence[] = [];

  constructor(
    readonly limits: SchedulerLimits,
    readonly cache: PrefixCache,
    readonly prefixCaching: boolean,
    readonly policy: SchedulingPolicy = "fcfs",
  ) {}

  get hasWork(): boolean {
    return this.waiting.length > 0 || this.running.length > 0;
  }

  /** Queues a new sequence: behind those already waiting, or under the priority policy, behind those before it. */
  add(seq: Sequence): void {
    seq.status = "waiting";
    if (this.policy === "fcfs") this.waiting.push(seq);
    else this.#insert(seq);
  }

  /** Puts `seq` in the waiting queue in its place by priority then arrival (the queue is in that order). */
  #insert(seq: Sequence): void {
    let at = this.waiting.length;
    while (at > 0 && before(seq, this.waiting[at - 1], this.policy)) at--;
    this.waiting.splice(at, 0, seq);
  }

  /** Puts preempted sequences back: at the head of the queue (fcfs), or each in its place (priority). */
  #requeue(seqs: readonly Sequence[]): void {
    if (this.policy === "fcfs") this.waiting.unshift(...seqs);
    else for (const seq of seqs) this.#insert(seq);
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

  /**
   * Moves these running sequences back to the queue to be recomputed (in order at its head; under the priority
   * policy each in its place); returns them.
   */
  preempt(seqs: readonly Sequence[]): Sequence[] {
    const victims = seqs.filter((seq) => this.remove(seq));
    for (const seq of victims) {
      seq.status = "waiting";
      seq.numComputed = 0;
      seq.preemptions++;
    }
    this.#requeue(victims);
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
      let tokens = Math.min(seq.numPending, room);
      let allLogits = seq.wantsAllLogits;
      // Logits are wanted from a position on (teacher scoring): the prompt before it runs as a chunk of its own,
      // without a vocabulary row of logits per token.
      const from = seq.logitsFrom;
      if (allLogits && from !== null && seq.numComputed < from) {
        tokens = Math.min(tokens, from - seq.numComputed);
        allLogits = false;
      }
      plan.prefill.push({ seq, tokens, allLogits });
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

  /**
   * Preempts running sequences until the running rows fit, the prefix cache getting the rest: the youngest first,
   * or under the priority policy the lowest priority (the largest number) first, its youngest among equals.
   */
  #preemptToFit(plan: StepPlan): void {
    while (this.running.length > 1 && !this.#fits(this.running)) {
      let victim = this.running.length - 1;
      if (this.policy === "priority") {
        this.running.forEach((seq, i) => {
          if (before(this.running[victim], seq, this.policy)) victim = i;
        });
      }
      const [seq] = this.running.splice(victim, 1);
      seq.status = "waiting";
      seq.numComputed = 0;
      seq.preemptions++;
      this.#requeue([seq]);
      plan.preempted.push(seq);
    }
    this.#resizeCache(this.running);
  }

  #resizeCache(running: readonly Sequence[]): void {
    const working = Math.max(this.#workingBytes(running, (s) => Math.max(1, s.numPending)), this.limits.heldBytes?.() ?? 0);
    this.cache.resize(Math.max(0, this.limits.kvCacheBytes - working) / this.cache.bytesPerBlock);
  }

  /**
   * Admits waiting sequences in queue order (arrival, or priority then arrival) while rows and KV memory allow. One
   * that waits for a shared prefill (below) keeps its place in the queue but does not hold back the ones behind it.
   */
  #admit(plan: StepPlan): void {
    let next = 0;
    while (next < this.waiting.length && this.running.length < this.limits.maxNumSeqs) {
      const seq = this.waiting[next];
      // Scored prompt positions need their logits computed: such a sequence reuses no prefix past the first of them
      // (prompt log-probabilities: none at all), and leaves at least one token to compute, to sample from.
      const reusable = seq.reusableTokens;
      const reuses = this.prefixCaching && seq.promptLogprobs === null;
      if (reuses && reusable >= this.cache.blockSize && this.#awaitsSharedPrefill(seq)) {
        next++;
        continue;
      }
      const cachedBlocks = reuses ? this.cache.match(seq.tokens, reusable, seq.params.cache_salt) : [];
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
      r.isPrefilling && r.length > bs && r.params.cache_salt === seq.params.cache_salt &&
      r.tokens.slice(0, bs).every((t, i) => t === seq.tokens[i])
    );
  }
}
