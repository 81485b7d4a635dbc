/**
 * The engine: one loop that drives the model. Requests are submitted as prompt ids + sampling parameters and come
 * back as token events; between steps the scheduler lets requests join and leave (continuous batching).
 */
import { KvCache, type KvCacheStats } from "./kv-cache.ts";
import type { ModelRunner } from "./model-runner.ts";
import { requestHandle, type SubmittedRequest } from "./request.ts";
import { RowTable } from "./rows.ts";
import { type PrefillChunk, prefillRuns, Scheduler, type StepPlan } from "./scheduler.ts";
import { Sequence, type FinishReason, type TokenEvent } from "./sequence.ts";
import { checkAgainstVocab, type SamplingParams } from "./sampling-params.ts";
import { PromptScorer } from "./prompt-logprobs.ts";
import { auditEngine } from "./audit.ts";
import type { RowSampling, SampledToken } from "./sampler.ts";
import { type SamplerPool, sharedSamplerPool } from "./sampler-pool.ts";

export type { SubmittedRequest } from "./request.ts";

export interface EngineOptions {
  maxModelLen: number;
  maxNumSeqs?: number;
  maxNumBatchedTokens?: number;
  /** Bytes for all KV (running rows and prefix cache). */
  kvCacheBytes?: number;
  blockSize?: number;
  prefixCaching?: boolean;
  /** End-of-sequence ids of the model (a sampled one stops the sequence unless ignore_eos). */
  eosTokenIds: number[];
  /** Rounds a row length up to what the runner allocates. */
  rowCapacity?: (length: number) => number;
  /** Threads that sample rows whose logits come back to the host (default: the process's shared pool). */
  samplerPool?: SamplerPool;
  /** Called after every step, between steps (tests audit the bookkeeping there). */
  onStep?: () => void;
  /**
   * Called when a step failed: its sequences went back to the queue to be recomputed (`retried`), or ended with
   * the error after failing too often (`failed`).
   */
  onStepError?: (error: unknown, retried: number, failed: number) => void;
}

/** Failed steps a sequence survives (put back in the queue); the next one ends it with the error. */
const MAX_FAULTS = 2;

/** A request the engine cannot take (the API answers 400). */
export class EngineRequestError extends Error {
  constructor(message: string, readonly param: string | null = null) {
    super(message);
    this.name = "EngineRequestError";
  }
}

export interface EngineStats {
  running: number;
  waiting: number;
  /** Submitted while held (a weight update in progress); they join the queue on release. */
  held: number;
  preemptions: number;
  steps: number;
  cache: KvCacheStats;
  /** The KV budget in bytes, and what the running rows' tokens and the prefix cache's blocks take of it now. */
  kvCacheBytes: number;
  kvUsedBytes: number;
}

export class Engine {
  readonly scheduler: Scheduler;
  readonly cache: KvCache;
  #runner: ModelRunner;
  #rows: RowTable;
  readonly #rowCount: number;
  /** Requests submitted while held, in arrival order. */
  readonly #held: Sequence[] = [];
  #holding = false;
  #frozen = false;
  /** Every sequence not finished yet, by id (abort). */
  readonly #byId = new Map<number, Sequence>();
  #policyVersion = 0;
  #loop: Promise<void> | null = null;
  #preemptions = 0;
  #steps = 0;
  #scorer: PromptScorer | null = null;
  readonly #pool: SamplerPool;

  constructor(runner: ModelRunner, readonly options: EngineOptions) {
    this.#runner = runner;
    // One row stays free for moves (RowTable.gather).
    const maxNumSeqs = Math.max(1, Math.min(options.maxNumSeqs ?? 32, runner.maxRows - 1));
    const blockSize = options.blockSize ?? 16;
    const bytesPerToken = runner.floatsPerToken * 4;
    const kvCacheBytes = options.kvCacheBytes ?? 512 * 1024 * 1024;
    this.cache = new KvCache({ blockSize, floatsPerToken: runner.floatsPerToken, capacityBlocks: 0 });
    this.scheduler = new Scheduler({
      maxNumSeqs,
      maxNumBatchedTokens: options.maxNumBatchedTokens ?? 512,
      kvCacheBytes,
      bytesPerToken,
      rowCapacity: options.rowCapacity ?? ((n) => n),
    }, this.cache, options.prefixCaching ?? true);
    this.#rowCount = Math.min(runner.maxRows, maxNumSeqs + 1);
    this.#rows = new RowTable(runner, this.#rowCount);
    this.#pool = options.samplerPool ?? sharedSamplerPool();
  }

  /** The model the engine runs (replaced by swapRunner). */
  get runner(): ModelRunner {
    return this.#runner;
  }

  /** Version of the weights in use; every token event carries it. */
  get policyVersion(): number {
    return this.#policyVersion;
  }

  /**
   * Queues a request; its events end with one that carries a finish reason. `sampleIndex` tells which of a
   * request's n samples this is (a seeded request seeds sample i from seed and i).
   */
  submit(promptIds: readonly number[], params: SamplingParams, sampleIndex = 0): SubmittedRequest {
    const { maxModelLen, eosTokenIds } = this.options;
    if (promptIds.length === 0) throw new EngineRequestError("the prompt is empty", "prompt");
    if (promptIds.length >= maxModelLen) {
      throw new EngineRequestError(
        `This model's maximum context length is ${maxModelLen} tokens, but the prompt has ${promptIds.length} tokens, leaving no room to generate.`,
        "messages",
      );
    }
    for (const id of promptIds) {
      if (!Number.isInteger(id) || id < 0 || id >= this.runner.vocabSize) {
        throw new EngineRequestError(`token id ${id} is outside the vocabulary (size ${this.runner.vocabSize})`, "prompt");
      }
    }
    checkAgainstVocab(params, this.runner.vocabSize);
    const seq = new Sequence(promptIds, params, { sampleIndex, eosTokenIds, maxModelLen });
    this.#byId.set(seq.id, seq);
    if (this.#holding) this.#held.push(seq);
    else {
      this.scheduler.add(seq);
      this.#kick();
    }
    return requestHandle(seq, seq.events);
  }

  /**
   * Ends a request now; its row and blocks are freed at once. The reason is "abort" unless the caller ended it for
   * another (a stop string it matched is a "stop").
   */
  abort(id: number, reason: FinishReason = "abort"): void {
    const seq = this.#byId.get(id);
    if (seq) this.#finish(seq, reason);
  }

  /** Queue lengths, counters and KV use, now. */
  stats(): EngineStats {
    const { running, waiting, limits } = this.scheduler;
    const cache = this.cache.stats();
    const rowTokens = running.reduce((n, seq) => n + seq.length, 0);
    return {
      running: running.length,
      waiting: waiting.length,
      held: this.#held.length,
      preemptions: this.#preemptions,
      steps: this.#steps,
      cache,
      kvCacheBytes: limits.kvCacheBytes,
      kvUsedBytes: rowTokens * limits.bytesPerToken + cache.blocks * this.cache.bytesPerBlock,
    };
  }

  /**
   * Every invariant the bookkeeping breaks now (empty: sound): rows, queues, prefix-cache references. Meaningful
   * between steps (onStep) or when idle.
   */
  audit(): string[] {
    return auditEngine({
      running: this.scheduler.running,
      waiting: this.scheduler.waiting,
      held: this.#held,
      rows: this.#rows.occupants,
      maxNumSeqs: this.scheduler.limits.maxNumSeqs,
      cache: this.cache,
      live: [...this.#byId.values()],
    });
  }

  /** Resolves when the loop stops: no request left to run (held ones aside), or frozen. */
  async idle(): Promise<void> {
    while (this.#loop) await this.#loop;
  }

  // Weight updates and sleep (engine/control.ts drives them): hold new requests, drain, freeze or abort the ones in
  // flight, then swap the runner between steps.

  /** Keeps requests submitted from now on out of the queue until release(). */
  hold(): void {
    this.#holding = true;
  }

  /** Queues the held requests (in arrival order) and takes new ones again. */
  release(): void {
    this.#holding = false;
    for (const seq of this.#held.splice(0)) this.scheduler.add(seq);
    this.#kick();
  }

  /** Stops stepping once the step in progress ends, and resolves then; sequences keep their places until thaw(). */
  async freeze(): Promise<void> {
    this.#frozen = true;
    await this.idle();
  }

  /** Steps again after freeze(). */
  thaw(): void {
    this.#frozen = false;
    this.#kick();
  }

  /** Drops every running sequence's KV (frozen only): they wait at the head of the queue, to be recomputed. */
  preemptAll(): number {
    if (this.#loop) throw new Error("preemptAll: a step is running (freeze first)");
    const preempted = this.scheduler.preemptAll();
    this.#applyPreemptions(preempted);
    return preempted.length;
  }

  /**
   * Ends requests with `error` (their event streams throw it): all of them, or with `startedOnly` those running or
   * with tokens generated, leaving the queued ones that have not started. Returns how many it ended.
   */
  abortAll(error: unknown, startedOnly = false): number {
    const all = [...this.scheduler.running, ...this.scheduler.waiting, ...this.#held];
    const victims = startedOnly ? all.filter((seq) => seq.status === "running" || seq.numGenerated > 0) : all;
    for (const seq of victims) this.#finish(seq, "abort", error);
    return victims.length;
  }

  /**
   * Runs on `runner` from now on, as weights `version`, and returns the runner it replaces. Only between steps,
   * with no sequence holding a row (drain, abort or freeze + preemptAll first). The prefix cache is emptied: KV
   * computed by other weights is never reused.
   */
  swapRunner(runner: ModelRunner, version: number): ModelRunner {
    if (this.#loop || this.scheduler.running.length > 0) throw new Error("swapRunner: sequences are running");
    const old = this.#runner;
    if (runner.vocabSize !== old.vocabSize || runner.floatsPerToken !== old.floatsPerToken) {
      throw new Error(
        `swapRunner: the new model's vocabulary (${runner.vocabSize}) or KV width (${runner.floatsPerToken}) differs ` +
          `from the served one's (${old.vocabSize}, ${old.floatsPerToken})`,
      );
    }
    this.#runner = runner;
    this.#rows = new RowTable(runner, this.#rowCount);
    this.cache.reset(version);
    this.#policyVersion = version;
    return old;
  }

  /**
   * Once idle (between steps, no row in use), frees the prefix cache and shrinks the row buffers to their smallest
   * size (level 1), and releases the weights too (level 2: wake() then needs a runner).
   */
  async sleep(level: 1 | 2): Promise<void> {
    await this.idle();
    this.cache.reset();
    this.runner.reserve(1);
    if (level === 2) await this.runner.dispose();
  }

  /** Undoes sleep(): after level 2, runs on `runner` (the same weights, reloaded) at the same policy version. */
  wake(runner: ModelRunner | null): void {
    if (runner) this.swapRunner(runner, this.policyVersion);
  }

  /** Forgets every cached prefix (new requests recompute their prompts). */
  resetPrefixCache(): void {
    this.cache.reset();
  }

  #kick(): void {
    if (this.#loop || this.#frozen) return;
    this.#loop = (async () => {
      // Yield first so that requests submitted together join the same first step.
      await Promise.resolve();
      try {
        while (this.scheduler.hasWork && !this.#frozen) {
          try {
            await this.#step();
          } catch (err) {
            // A fault in planning the step (a bug) must not leave requests hanging or stop the loop.
            const all = [...this.scheduler.running, ...this.scheduler.waiting];
            for (const seq of all) this.#finish(seq, "abort", err);
            this.options.onStepError?.(err, 0, all.length);
          }
          this.options.onStep?.();
        }
      } finally {
        this.#loop = null;
      }
    })();
  }

  async #step(): Promise<void> {
    const plan = this.scheduler.schedule();
    this.#steps++;
    this.#applyPreemptions(plan.preempted);
    // Where each sequence's random stream stood: a sequence whose step fails draws the same numbers again.
    const stepSeqs = new Set([...plan.admitted.map((a) => a.seq), ...plan.decode, ...plan.prefill.map((p) => p.seq)]);
    const draws = new Map([...stepSeqs].map((seq) => [seq, seq.sampler.rng.state()]));
    const guarded = async (seqs: Iterable<Sequence>, work: () => void | Promise<void>) => {
      try {
        await work();
      } catch (err) {
        this.#fault([...seqs], draws, err);
      }
    };
    await guarded(stepSeqs, () => {
      this.#applyAdmissions(plan);
      let longest = 0;
      for (const s of plan.decode) longest = Math.max(longest, s.numComputed + 1);
      for (const p of plan.prefill) longest = Math.max(longest, p.seq.numComputed + p.tokens);
      this.runner.reserve(longest);
    });
    const decode = plan.decode.filter((seq) => seq.status === "running");
    if (decode.length) await guarded(decode, () => this.#decode(decode));
    for (const run of prefillRuns(plan.prefill)) {
      const chunks = run.filter((c) => c.seq.status === "running");
      await guarded(chunks.map((c) => c.seq), () => this.#prefill(chunks));
    }
    await this.#flushBlocks();
    this.#rows.releaseFree();
  }

  /**
   * A failed step (a model run that threw, a row move that could not be made) must not lose its sequences: each
   * goes back to the head of the queue, its KV to be recomputed and its random stream rewound, and only one that
   * keeps failing ends with the error.
   */
  #fault(seqs: readonly Sequence[], draws: ReadonlyMap<Sequence, Uint32Array>, err: unknown): void {
    const running = seqs.filter((seq) => seq.status === "running");
    const failing = running.filter((seq) => ++seq.faults > MAX_FAULTS);
    for (const seq of failing) this.#finish(seq, "abort", err);
    const retried = this.scheduler.preempt(running.filter((seq) => seq.status === "running"));
    for (const seq of retried) seq.sampler.rng.restore(draws.get(seq)!);
    this.#applyPreemptions(retried);
    this.options.onStepError?.(err, retried.length, failing.length);
  }

  #applyPreemptions(preempted: readonly Sequence[]): void {
    for (const seq of preempted) {
      this.#preemptions++;
      this.#rows.release(seq);
      this.cache.release(seq.blockIds);
      seq.blockIds = [];
    }
  }

  #applyAdmissions(plan: StepPlan): void {
    const bs = this.cache.blockSize;
    for (const { seq, cachedBlocks } of plan.admitted) {
      const row = this.#rows.assign(seq);
      this.runner.reserve(seq.length);
      cachedBlocks.forEach((id, i) => this.runner.writeKv(row, i * bs, bs, this.cache.data(id)));
      seq.blockIds = [...cachedBlocks];
    }
  }

  async #decode(seqs: Sequence[]): Promise<void> {
    const ordered = this.#rows.gather(seqs);
    const inputs = ordered.map((s) => ({ row: s.row!, tokens: [s.tokens[s.length - 1]], start: s.numComputed }));
    const sampling = ordered.map((s) => this.#rowSampling(s));
    const picks = this.runner.stepAndSample
      ? await this.runner.stepAndSample(inputs, sampling)
      : await this.#pool.sample(await this.runner.step(inputs), sampling);
    ordered.forEach((seq, i) => {
      seq.numComputed++;
      this.#accept(seq, picks[i]!);
    });
  }

  /** How `seq`'s next token is drawn (one number from the sequence's stream, drawn now). */
  #rowSampling(seq: Sequence): RowSampling {
    return seq.sampler.next(seq.outputIds, this.runner.vocabSize);
  }

  /** Waits for the KV the prefix cache read from a runner whose cache lives on another device. */
  async #flushBlocks(): Promise<void> {
    if (!this.runner.flush) return;
    try {
      await this.runner.flush();
    } catch (err) {
      // Blocks inserted this step hold no KV: forget them all rather than ever reuse them. The rows are intact.
      this.cache.reset(this.#policyVersion);
      this.options.onStepError?.(err, 0, 0);
    }
  }

  /** Feeds several sequences' prefill chunks in one model run; the chunks that complete a prompt sample. */
  async #prefill(run: PrefillChunk[]): Promise<void> {
    if (run.length === 0) return;
    // In row order: new sequences take adjacent rows, and a runner reads an ascending range of rows in place
    // instead of gathering a copy of each row's cache.
    const chunks = [...run].sort((a, b) => a.seq.row! - b.seq.row!);
    const inputs = chunks.map(({ seq, tokens, allLogits }) => {
      const start = seq.numComputed;
      return { row: seq.row!, tokens: seq.tokens.slice(start, start + tokens), start, allLogits };
    });
    // Only a chunk that completes the prompt samples (one that leaves just the last token has no logits for it).
    const sampling = chunks.map(({ seq, tokens }) => (seq.numPending > tokens ? null : this.#rowSampling(seq)));
    let picks: (SampledToken | null)[];
    if (this.runner.stepAndSample && !chunks.some((c) => c.allLogits)) {
      picks = await this.runner.stepAndSample(inputs, sampling);
    } else {
      const logits = await this.runner.step(inputs);
      const vocab = this.runner.vocabSize;
      // Rows that asked for every position's logits score their prompt and sample from their last position's.
      const last = chunks.map(({ seq, tokens, allLogits }, i) => {
        if (!allLogits) return logits[i];
        this.#scorePrompt(seq, seq.numComputed, tokens, logits[i]);
        return logits[i].subarray((tokens - 1) * vocab);
      });
      const sampled = await this.#pool.sample(last.filter((_, i) => sampling[i]), sampling.filter((s) => s !== null));
      picks = sampling.map((s) => (s ? sampled.shift()! : null));
    }
    chunks.forEach(({ seq, tokens }, i) => {
      seq.numComputed += tokens;
      if (picks[i]) this.#accept(seq, picks[i]);
      else this.#cacheFullBlocks(seq);
    });
  }

  /** Fills the prompt log-probabilities of the tokens after positions [start, start + count) (logits in turn). */
  #scorePrompt(seq: Sequence, start: number, count: number, logits: Float32Array): void {
    const vocab = this.runner.vocabSize;
    this.#scorer ??= new PromptScorer(vocab);
    for (let i = 0; i < count && start + i + 1 < seq.promptLength; i++) {
      const at = start + i + 1;
      seq.promptLogprobs![at] = this.#scorer.score(logits.subarray(i * vocab, (i + 1) * vocab), seq.tokens[at], seq.promptTopLogprobs!);
    }
  }

  /** Appends a sampled token to a running sequence, reports it and stops the sequence when it should. */
  #accept(seq: Sequence, pick: SampledToken): void {
    if (seq.status !== "running") return;
    seq.tokens.push(pick.tokenId);
    seq.firstTokenAt ??= performance.now();
    this.#cacheFullBlocks(seq);
    const event: TokenEvent = {
      index: seq.numGenerated - 1,
      tokenId: pick.tokenId,
      logprob: pick.logprob,
      topLogprobs: pick.topLogprobs,
      policyVersion: this.#policyVersion,
    };
    if (event.index === 0 && seq.promptLogprobs) event.promptLogprobs = [...seq.promptLogprobs];
    const reason = seq.stopReason(pick.tokenId);
    if (reason) event.finishReason = reason;
    seq.events.push(event);
    if (reason) this.#finish(seq, reason);
  }

  /** Copies the sequence's newly completed blocks into the prefix cache (when it has room). */
  #cacheFullBlocks(seq: Sequence): void {
    if (!this.scheduler.prefixCaching || seq.row === null) return;
    const bs = this.cache.blockSize;
    while ((seq.blockIds.length + 1) * bs <= seq.numComputed) {
      const start = seq.blockIds.length * bs;
      const parent = seq.blockIds.at(-1) ?? KvCache.ROOT;
      const id = this.cache.insert(parent, seq.tokens, start, (out) => this.runner.readKv(seq.row!, start, bs, out));
      if (id === null) return;
      seq.blockIds.push(id);
    }
  }

  #finish(seq: Sequence, reason: FinishReason, error?: unknown): void {
    if (seq.status === "finished") return;
    const wasRunning = this.scheduler.remove(seq);
    if (wasRunning || seq.row !== null) this.#rows.release(seq);
    const held = this.#held.indexOf(seq);
    if (held >= 0) this.#held.splice(held, 1);
    this.cache.release(seq.blockIds);
    seq.blockIds = [];
    seq.status = "finished";
    seq.finishReason = reason;
    this.#byId.delete(seq.id);
    seq.events.close(error);
  }
}
