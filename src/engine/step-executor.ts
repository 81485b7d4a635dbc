/**
 * One engine step on the model: seats the sequences the scheduler admitted in runner rows, runs the decode batch
 * and the prefill runs, samples, appends each sampled token to its sequence and stops the sequences that are done.
 * A step that fails puts its sequences back in the queue to be recomputed.
 */
import { PrefixCache } from "./prefix-cache.ts";
import type { ModelRunner } from "./model-runner.ts";
import { PromptScorer } from "./prompt-logprobs.ts";
import { RowTable } from "./rows.ts";
import type { RowSampling, SampledToken } from "./sampler.ts";
import type { SamplerPool } from "./sampler-pool.ts";
import { type PrefillChunk, prefillRuns, type Scheduler, type StepPlan } from "./scheduler.ts";
import type { FinishReason, Sequence, TokenEvent } from "./sequence.ts";

/** Failed steps a sequence survives (put back in the queue); the next one ends it with the error. */
const MAX_FAULTS = 2;

/** What a step works with beyond the model, and how it reports back to the engine. */
export interface StepContext {
  scheduler: Scheduler;
  cache: PrefixCache;
  /** Runner rows: one more than the most sequences running at once, for moves. */
  rowCount: number;
  /** Threads that sample rows whose logits come back to the host. */
  pool: SamplerPool;
  /** Ends a sequence (it stopped, or its steps keep failing): out of its queue, its row and blocks freed. */
  finish: (seq: Sequence, reason: FinishReason, error?: unknown) => void;
  /** A step failed: `retried` sequences went back to the queue, `failed` ended with the error. */
  onStepError?: (error: unknown, retried: number, failed: number) => void;
}

/** Runs the scheduler's plans on one model (the weights in use), in runner rows it keeps. */
export class StepExecutor {
  #runner: ModelRunner;
  #rows: RowTable;
  #policyVersion = 0;
  #preemptions = 0;
  #scorer: PromptScorer | null = null;
  readonly #context: StepContext;

  constructor(runner: ModelRunner, context: StepContext) {
    this.#runner = runner;
    this.#context = context;
    this.#rows = new RowTable(runner, context.rowCount);
  }

  get runner(): ModelRunner {
    return this.#runner;
  }

  /** Version of the weights in use; every token event carries it. */
  get policyVersion(): number {
    return this.#policyVersion;
  }

  /** Sequences whose KV was dropped to be recomputed, since the start. */
  get preemptions(): number {
    return this.#preemptions;
  }

  /** The sequence in each runner row (null: free). */
  get rows(): readonly (Sequence | null)[] {
    return this.#rows.occupants;
  }

  /**
   * Runs on `runner` from now on, as weights `version`, and returns the runner it replaces (no sequence may hold a
   * row). The prefix cache is emptied: KV computed by other weights is never reused.
   */
  swap(runner: ModelRunner, version: number): ModelRunner {
    const old = this.#runner;
    if (runner.vocabSize !== old.vocabSize || runner.floatsPerToken !== old.floatsPerToken) {
      throw new Error(
        `swapRunner: the new model's vocabulary (${runner.vocabSize}) or KV width (${runner.floatsPerToken}) differs ` +
          `from the served one's (${old.vocabSize}, ${old.floatsPerToken})`,
      );
    }
    this.#runner = runner;
    this.#rows = new RowTable(runner, this.#context.rowCount);
    this.#context.cache.reset(version);
    this.#policyVersion = version;
    return old;
  }

  /** Frees a sequence's row and its prefix-cache blocks. */
  release(seq: Sequence): void {
    this.#rows.release(seq);
    this.#context.cache.release(seq.blockIds);
    seq.blockIds = [];
  }

  /** Frees the rows and blocks of sequences the scheduler preempted (they will be recomputed). */
  preempted(seqs: readonly Sequence[]): void {
    for (const seq of seqs) {
      this.#preemptions++;
      this.release(seq);
    }
  }

  /** Carries out one step's plan. */
  async run(plan: StepPlan): Promise<void> {
    this.preempted(plan.preempted);
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
      this.#seat(plan);
      let longest = 0;
      for (const s of plan.decode) longest = Math.max(longest, s.numComputed + 1);
      for (const p of plan.prefill) longest = Math.max(longest, p.seq.numComputed + p.tokens);
      this.#runner.reserve(longest, this.#rows.reach);
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
    for (const seq of failing) this.#context.finish(seq, "abort", err);
    const retried = this.#context.scheduler.preempt(running.filter((seq) => seq.status === "running"));
    for (const seq of retried) seq.sampler.rng.restore(draws.get(seq)!);
    this.preempted(retried);
    this.#context.onStepError?.(err, retried.length, failing.length);
  }

  /**
   * Gives each admitted sequence a row, with the KV of the prefix-cache blocks it reuses. The rows are all taken
   * first and reserved in one call: a runner that lays out rows as they come into use then does so once a step.
   */
  #seat(plan: StepPlan): void {
    if (plan.admitted.length === 0) return;
    const { cache } = this.#context;
    const bs = cache.blockSize;
    for (const { seq } of plan.admitted) this.#rows.assign(seq);
    this.#runner.reserve(Math.max(...plan.admitted.map(({ seq }) => seq.length)), this.#rows.reach);
    for (const { seq, cachedBlocks } of plan.admitted) {
      cachedBlocks.forEach((id, i) => this.#runner.writeKv(seq.row!, i * bs, bs, cache.data(id)));
      seq.blockIds = [...cachedBlocks];
    }
  }

  async #decode(seqs: Sequence[]): Promise<void> {
    const ordered = this.#rows.gather(seqs);
    const inputs = ordered.map((s) => ({ row: s.row!, tokens: [s.tokens[s.length - 1]], start: s.numComputed }));
    const sampling = ordered.map((s) => this.#rowSampling(s));
    const picks = this.#runner.stepAndSample
      ? await this.#runner.stepAndSample(inputs, sampling)
      : await this.#context.pool.sample(await this.#runner.step(inputs), sampling);
    this.#runner.releaseLogits?.();
    ordered.forEach((seq, i) => {
      seq.numComputed++;
      this.#accept(seq, picks[i]!);
    });
  }

  /** How `seq`'s next token is drawn (one number from the sequence's stream, drawn now). */
  #rowSampling(seq: Sequence): RowSampling {
    const row = seq.sampler.next(seq.outputIds, this.#runner.vocabSize);
    const allowed = seq.constraint?.allowed(this.#runner.vocabSize);
    if (allowed) row.allowed = allowed;
    return row;
  }

  /** Waits for the KV the prefix cache read from a runner whose cache lives on another device. */
  async #flushBlocks(): Promise<void> {
    if (!this.#runner.flush) return;
    try {
      await this.#runner.flush();
    } catch (err) {
      // Blocks inserted this step hold no KV: forget them all rather than ever reuse them. The rows are intact.
      this.#context.cache.reset(this.#policyVersion);
      this.#context.onStepError?.(err, 0, 0);
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
    if (this.#runner.stepAndSample && !chunks.some((c) => c.allLogits)) {
      picks = await this.#runner.stepAndSample(inputs, sampling);
    } else {
      const logits = await this.#runner.step(inputs);
      const vocab = this.#runner.vocabSize;
      // Rows that asked for every position's logits score their prompt and sample from their last position's.
      const last = chunks.map(({ seq, tokens, allLogits }, i) => {
        if (!allLogits) return logits[i];
        this.#scorePrompt(seq, seq.numComputed, tokens, logits[i]);
        return logits[i].subarray((tokens - 1) * vocab);
      });
      const { pool } = this.#context;
      const sampled = await pool.sample(last.filter((_, i) => sampling[i]), sampling.filter((s) => s !== null));
      picks = sampling.map((s) => (s ? sampled.shift()! : null));
      this.#runner.releaseLogits?.();
    }
    chunks.forEach(({ seq, tokens }, i) => {
      seq.numComputed += tokens;
      if (picks[i]) this.#accept(seq, picks[i]);
      else this.#cacheFullBlocks(seq);
    });
  }

  /** Scores the prompt positions [start, start + count) as the sequence asked (logits in turn). */
  #scorePrompt(seq: Sequence, start: number, count: number, logits: Float32Array): void {
    this.#scorer ??= new PromptScorer(this.#runner.vocabSize);
    this.#scorer.scoreChunk(seq, start, count, logits);
  }

  /** Appends a sampled token to a running sequence, reports it and stops the sequence when it should. */
  #accept(seq: Sequence, pick: SampledToken): void {
    if (seq.status !== "running") return;
    seq.tokens.push(pick.tokenId);
    seq.constraint?.accept(pick.tokenId);
    seq.firstTokenAt ??= performance.now();
    this.#cacheFullBlocks(seq);
    const event: TokenEvent = {
      index: seq.numGenerated - 1,
      tokenId: pick.tokenId,
      logprob: pick.logprob,
      topLogprobs: pick.topLogprobs,
      policyVersion: this.#policyVersion,
    };
    if (pick.kept) event.samplingMask = pick.kept;
    if (event.index === 0 && seq.promptLogprobs) event.promptLogprobs = [...seq.promptLogprobs];
    if (event.index === 0 && seq.promptTokenScores) event.promptTokenScores = seq.promptTokenScores;
    // A grammar that takes no more tokens ends the sequence as vLLM does: "stop".
    const reason = seq.stopReason(pick.tokenId) ?? (seq.constraint?.ended(this.#runner.vocabSize) ? "stop" : null);
    if (reason) event.finishReason = reason;
    seq.events.push(event);
    if (reason) this.#context.finish(seq, reason);
  }

  /** Copies the sequence's newly completed blocks into the prefix cache (when it has room). */
  #cacheFullBlocks(seq: Sequence): void {
    const { cache, scheduler } = this.#context;
    if (!scheduler.prefixCaching || seq.row === null) return;
    const bs = cache.blockSize;
    while ((seq.blockIds.length + 1) * bs <= seq.numComputed) {
      const start = seq.blockIds.length * bs;
      const parent = seq.blockIds.at(-1) ?? PrefixCache.ROOT;
      const id = cache.insert(parent, seq.tokens, start, (out) => this.#runner.readKv(seq.row!, start, bs, out), seq.params.cache_salt);
      if (id === null) return;
      seq.blockIds.push(id);
    }
  }
}
