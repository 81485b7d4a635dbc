/**
 * The engine: one loop that drives the model. Requests are submitted as prompt ids + sampling parameters and come
 * back as token events; between steps the scheduler lets requests join and leave (continuous batching). What one
 * step does on the model is engine/step-executor.ts's.
 */
import type { StepSummary } from "./step-log.ts";
import { PrefixCache, type PrefixCacheStats } from "./prefix-cache.ts";
import type { ModelRunner } from "./model-runner.ts";
import { requestHandle, type SubmittedRequest } from "./request.ts";
import { Scheduler, type SchedulingPolicy } from "./scheduler.ts";
import { SequenceConstraint, type TokenConstraint } from "./constraint.ts";
import { Sequence, type FinishReason } from "./sequence.ts";
import { checkAgainstVocab, type SamplingParams } from "./sampling-params.ts";
import { auditEngine } from "./audit.ts";
import { type SamplerPool, sharedSamplerPool } from "./sampler-pool.ts";
import { StepExecutor } from "./step-executor.ts";

export type { SubmittedRequest } from "./request.ts";

export interface EngineOptions {
  maxModelLen: number;
  maxNumSeqs?: number;
  maxNumBatchedTokens?: number;
  /** Bytes for all KV (running rows and prefix cache). */
  kvCacheBytes?: number;
  blockSize?: number;
  prefixCaching?: boolean;
  /** The order waiting requests run in: fcfs (default, as vLLM) or priority (a lower `priority` first). */
  schedulingPolicy?: SchedulingPolicy;
  /** End-of-sequence ids of the model (a sampled one stops the sequence unless ignore_eos). */
  eosTokenIds: number[];
  /** Rounds a row length up to what the runner allocates. */
  rowCapacity?: (length: number) => number;
  /** Threads that sample rows whose logits come back to the host (default: the process's shared pool). */
  samplerPool?: SamplerPool;
  /** Called after every step, between steps (tests audit the bookkeeping there), with what it did when it ran. */
  onStep?: (step: StepSummary | null) => void;
  /**
   * Called when a step failed: its sequences went back to the queue to be recomputed (`retried`), or ended with
   * the error after failing too often (`failed`).
   */
  onStepError?: (error: unknown, retried: number, failed: number) => void;
}

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
  cache: PrefixCacheStats;
  /** The KV budget in bytes, and what the running rows' tokens and the prefix cache's blocks take of it now. */
  kvCacheBytes: number;
  kvUsedBytes: number;
}

export class Engine {
  readonly scheduler: Scheduler;
  readonly cache: PrefixCache;
  readonly #executor: StepExecutor;
  /** Requests submitted while held, in arrival order. */
  readonly #held: Sequence[] = [];
  #holding = false;
  #frozen = false;
  /** Every sequence not finished yet, by id (abort). */
  readonly #byId = new Map<number, Sequence>();
  #loop: Promise<void> | null = null;
  #steps = 0;

  constructor(runner: ModelRunner, readonly options: EngineOptions) {
    // One row stays free for moves (RowTable.gather).
    const maxNumSeqs = Math.max(1, Math.min(options.maxNumSeqs ?? 32, runner.maxRows - 1));
    const { floatsPerToken } = runner;
    this.cache = new PrefixCache({ blockSize: options.blockSize ?? 16, floatsPerToken, capacityBlocks: 0 });
    this.scheduler = new Scheduler({
      maxNumSeqs,
      maxNumBatchedTokens: options.maxNumBatchedTokens ?? 512,
      kvCacheBytes: options.kvCacheBytes ?? 512 * 1024 * 1024,
      bytesPerToken: floatsPerToken * 4,
      rowCapacity: options.rowCapacity ?? ((n) => n),
      heldBytes: () => runner.workingBytes(),
    }, this.cache, options.prefixCaching ?? true, options.schedulingPolicy ?? "fcfs");
    this.#executor = new StepExecutor(runner, {
      scheduler: this.scheduler,
      cache: this.cache,
      rowCount: Math.min(runner.maxRows, maxNumSeqs + 1),
      pool: options.samplerPool ?? sharedSamplerPool(),
      finish: (seq, reason, error) => this.#finish(seq, reason, error),
      onStepError: options.onStepError,
    });
  }

  /** The model the engine runs (replaced by swapRunner). */
  get runner(): ModelRunner {
    return this.#executor.runner;
  }

  /** Version of the weights in use; every token event carries it. */
  get policyVersion(): number {
    return this.#executor.policyVersion;
  }

  /**
   * Queues a request; its events end with one that carries a finish reason. `sampleIndex` tells which of a
   * request's n samples this is (a seeded request seeds sample i from seed and i). `constraint`, this sample's own
   * (one per sequence), limits what it may generate; the engine disposes of it when the sequence ends.
   */
  submit(
    promptIds: readonly number[],
    params: SamplingParams,
    sampleIndex = 0,
    constraint: TokenConstraint | null = null,
  ): SubmittedRequest {
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
    // As vLLM: a priority asks for an order only the priority policy keeps.
    if (params.priority !== 0 && this.scheduler.policy !== "priority") {
      throw new EngineRequestError(`Got priority ${params.priority} but Priority scheduling is not enabled.`, "priority");
    }
    const scored = params.prompt_logprob_token_ids;
    const rows = Math.max(promptIds.length - 1 - params.prompt_logprob_start, 0);
    if (scored !== null && scored.length !== rows) {
      throw new EngineRequestError(
        `prompt_logprob_token_ids must have one row per scored position: ${rows} (the prompt's ${promptIds.length} ` +
          `tokens less 1 less prompt_logprob_start ${params.prompt_logprob_start}), got ${scored.length}`,
        "prompt_logprob_token_ids",
      );
    }
    const seq = new Sequence(promptIds, params, { sampleIndex, eosTokenIds, maxModelLen });
    if (constraint) seq.constraint = new SequenceConstraint(constraint);
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
      preemptions: this.#executor.preemptions,
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
      rows: this.#executor.rows,
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
    this.#executor.preempted(preempted);
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
    return this.#executor.swap(runner, version);
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
          let step: StepSummary | null = null;
          try {
            step = await this.#step();
          } catch (err) {
            // A fault in planning the step (a bug) must not leave requests hanging or stop the loop.
            const all = [...this.scheduler.running, ...this.scheduler.waiting];
            for (const seq of all) this.#finish(seq, "abort", err);
            this.options.onStepError?.(err, 0, all.length);
          }
          this.options.onStep?.(step);
        }
      } finally {
        this.#loop = null;
      }
    })();
  }

  async #step(): Promise<StepSummary> {
    const started = performance.now();
    const plan = this.scheduler.schedule();
    this.#steps++;
    await this.#executor.run(plan);
    const { running, waiting, kvUsedBytes, kvCacheBytes } = this.stats();
    return {
      decode: plan.decode.length,
      prefillSeqs: plan.prefill.length,
      prefillTokens: plan.prefill.reduce((n, p) => n + p.tokens, 0),
      admitted: plan.admitted.length,
      preempted: plan.preempted.length,
      ms: performance.now() - started,
      running,
      waiting,
      kvUsedBytes,
      kvCacheBytes,
    };
  }

  #finish(seq: Sequence, reason: FinishReason, error?: unknown): void {
    if (seq.status === "finished") return;
    this.scheduler.remove(seq);
    this.#executor.release(seq);
    const held = this.#held.indexOf(seq);
    if (held >= 0) this.#held.splice(held, 1);
    seq.status = "finished";
    seq.finishReason = reason;
    seq.constraint?.dispose();
    this.#byId.delete(seq.id);
    seq.events.close(error);
  }
}
