/**
 * The engine's control plane: weight updates between training steps (refit), sleep and wake-up, prefix-cache
 * reset, and the admission limits in front of submit (a bounded queue, no requests while asleep). Operations run
 * one at a time, in the order asked.
 *
 * A weight update holds the requests submitted from its start, and loads the new weights beside the old ones, so
 * a load that fails changes nothing (the held requests then run on the old weights). Once they are loaded, the
 * requests in flight are handled by the mode:
 *   finish  they complete on the old weights; the swap happens once none is left.
 *   abort   those that have started end at once with a retriable EngineUnavailableError ("weights_updated");
 *           those still queued, with no token yet, stay queued and run on the new weights.
 *   pause   they stop after the current step and keep their tokens; after the swap they resume on the new
 *           weights, their KV recomputed from their tokens (never stale KV). Each token's policy version tells
 *           which weights produced it.
 * The swap empties the prefix cache and bumps the policy version; then the held requests run on the new weights.
 *
 * Pause (vLLM's /pause, SGLang's /pause_generation) stops generation until resume(); requests that arrive meanwhile
 * wait (held), within the queue bound. The requests in flight are handled by the mode:
 *   abort    they end at once with finish reason "abort", keeping the tokens they have (no error).
 *   wait     they run to their end; pause() resolves once they have.
 *   keep     they stop after the current step and stay in place, KV and all; resume() continues them.
 *   retract  as keep, but their KV is dropped: resume() recomputes it from their tokens.
 * A weight update while paused swaps at once: kept requests are retracted for it (KV from the old weights is never
 * reused) and continue on the new weights after resume(), their later tokens carrying the new policy version.
 *
 * Weight versions: a trainer may name each set of weights with a string of its own (vLLM's and SGLang's
 * weight_version), given with the update or afterwards. The name belongs to a policy version, so a response tells
 * the name of the weights that produced it (weightVersionOf). Digests of the served weights (weightChecksums) come
 * from the files they were loaded from, recorded at each load.
 */
import type { FinishReason } from "./sequence.ts";
import { type Engine, EngineRequestError } from "./engine.ts";
import type { ModelRunner } from "./model-runner.ts";
import type { SamplingParams } from "./sampling-params.ts";
import type { SubmittedRequest } from "./request.ts";
import type { TokenConstraint } from "./constraint.ts";

/** How requests in flight are handled while weights are swapped. */
export type RefitMode = "finish" | "abort" | "pause";
export const REFIT_MODES: readonly RefitMode[] = ["finish", "abort", "pause"];

/** How pause() handles the requests in flight (see the file comment). */
export type PauseMode = "abort" | "wait" | "keep" | "retract";
export const PAUSE_MODES: readonly PauseMode[] = ["abort", "wait", "keep", "retract"];

/** Why the engine turned a request away or ended it early. */
export type UnavailableReason = "queue_full" | "sleeping" | "weights_updated" | "shutting_down";

/** The engine cannot serve this request now; the same request may succeed if sent again later. */
export class EngineUnavailableError extends Error {
  constructor(readonly reason: UnavailableReason, message: string, readonly retryAfterSeconds = 1) {
    super(message);
    this.name = "EngineUnavailableError";
  }
}

/**
 * A control operation that cannot be done: `invalid` (bad input: weights that are missing or of another model, a
 * policy version that does not increase), `forbidden` (weights outside the allowed directory), `conflict` (the
 * server's state forbids it now: a weight update while asleep).
 */
export class ControlError extends Error {
  constructor(readonly kind: "invalid" | "forbidden" | "conflict", message: string, readonly param: string | null = null) {
    super(message);
    this.name = "ControlError";
  }
}

export interface EngineControlOptions {
  /** Opens weights on the engine's device; throws a ControlError when they cannot serve (other architecture). */
  loadWeights: (source: string) => Promise<ModelRunner>;
  /** Turns the path a client asked for into the source to load, or throws a ControlError (default: as given). */
  resolveSource?: (requested: string) => string;
  /** What the served weights were loaded from (reported by status()). */
  weightsSource: string;
  /** Most sequences waiting to run (held ones included); beyond it submit throws queue_full. Null: unbounded. */
  maxQueue?: number | null;
  /** Seconds a refused client is told to wait (Retry-After). */
  retryAfterSeconds?: number;
  /** The digests of the weights loaded from a source, recording its files' state when called (none: not offered). */
  weightDigests?: (source: string) => WeightsDigest;
  /** Where weights to reset to lie (written on first call): the architecture served, weights no trainer made. */
  resetWeights?: () => Promise<string>;
}

/** The digests of one load's weights: `{key: SHA-256 hex}` per tensor, computed when asked. */
export interface WeightsDigest {
  digests(): Promise<Record<string, string>>;
}

/** What a weight update did. */
export interface RefitResult {
  policyVersion: number;
  previousPolicyVersion: number;
  mode: RefitMode;
  source: string;
  /** Requests ended (abort) or recomputed (pause). */
  aborted: number;
  preempted: number;
  /** Milliseconds spent loading the weights, and waiting for in-flight requests plus the swap. */
  loadMs: number;
  swapMs: number;
}

/** The control state, for /version and metrics. */
export interface ControlStatus {
  policyVersion: number;
  /** 0 awake, else the sleep level. */
  sleepLevel: number;
  weightsSource: string;
  /** A weight update, sleep or wake-up is in progress. */
  busy: boolean;
  /** How generation is paused (pause()), or null when it is not. */
  paused: PauseMode | null;
}

/** An Engine behind the control plane: submit/abort for the API, and the operations of the control routes. */
export class EngineControl {
  readonly #engine: Engine;
  readonly #load: (source: string) => Promise<ModelRunner>;
  readonly #resolve: (requested: string) => string;
  readonly #maxQueue: number | null;
  readonly #retryAfter: number;
  #source: string;
  #sleepLevel = 0;
  #stopping = false;
  #busy = 0;
  #paused: PauseMode | null = null;
  /** The trainer's name of each policy version's weights, where it gave one. */
  readonly #weightVersions = new Map<number, string>();
  readonly #digestOf: ((source: string) => WeightsDigest) | null;
  readonly #resetSource: (() => Promise<string>) | null;
  #digest: WeightsDigest | null;
  /** A phased update (vLLM's start_weight_update .. finish_weight_update) is open. */
  #updating = false;
  /** The tail of the operation chain: each operation starts once the previous one has settled. */
  #last: Promise<unknown> = Promise.resolve();

  constructor(engine: Engine, options: EngineControlOptions) {
    this.#engine = engine;
    this.#load = options.loadWeights;
    this.#resolve = options.resolveSource ?? ((requested) => requested);
    this.#source = options.weightsSource;
    this.#maxQueue = options.maxQueue ?? null;
    this.#retryAfter = options.retryAfterSeconds ?? 1;
    this.#digestOf = options.weightDigests ?? null;
    this.#resetSource = options.resetWeights ?? null;
    this.#digest = this.#digestOf?.(this.#source) ?? null;
  }

  get engine(): Engine {
    return this.#engine;
  }

  get policyVersion(): number {
    return this.#engine.policyVersion;
  }

  /** The trainer's name of the weights serving now; null when it gave none. */
  get weightVersion(): string | null {
    return this.weightVersionOf(this.#engine.policyVersion);
  }

  /** The trainer's name of the weights of policy version `policyVersion`; null when it gave none. */
  weightVersionOf(policyVersion: number): string | null {
    return this.#weightVersions.get(policyVersion) ?? null;
  }

  /** Names the weights serving now (once the operations asked before it are done); returns the name. */
  setWeightVersion(name: string): Promise<string> {
    return this.#serialized(() => {
      this.#weightVersions.set(this.#engine.policyVersion, name);
      return Promise.resolve(name);
    });
  }

  /** Throws a ControlError (conflict) while asleep or paused: the weight checker's condition. */
  #checkAwakeAndRunning(): void {
    if (this.#sleepLevel > 0) throw new ControlError("conflict", "weight_checker requires an awake engine: POST /wake_up first");
    if (this.#paused !== null) throw new ControlError("conflict", "weight_checker requires an unpaused engine: POST /resume first");
  }

  /**
   * Opens a phased weight update (vLLM's start_weight_update): a ControlError (conflict) while one is open. The
   * weights change with updateWeights() inside it; finishWeightUpdate() closes it.
   */
  startWeightUpdate(): Promise<void> {
    return this.#serialized(() => {
      if (this.#updating) {
        throw new ControlError("conflict", "a weight update is already open: finish it (POST /finish_weight_update) first");
      }
      this.#updating = true;
      return Promise.resolve();
    });
  }

  /** Closes the phased update, if one is open, and names the weights serving now when `name` is given. */
  finishWeightUpdate(name?: string | null): Promise<void> {
    return this.#serialized(() => {
      this.#updating = false;
      if (name !== undefined && name !== null) this.#weightVersions.set(this.#engine.policyVersion, name);
      return Promise.resolve();
    });
  }

  /**
   * The digests of the served weights (see WeightsDigest), once the operations asked before are done. A
   * ControlError (conflict) while asleep, or paused unless `whilePaused`, as vLLM's weight checker wants an awake,
   * unpaused engine.
   */
  async weightChecksums(whilePaused = false): Promise<Record<string, string>> {
    const digest = await this.#serialized(() => {
      if (whilePaused) {
        if (this.#sleepLevel > 0) throw new ControlError("conflict", "weight_checker requires an awake engine: POST /wake_up first");
      } else this.#checkAwakeAndRunning();
      if (!this.#digest) throw new ControlError("conflict", "this server keeps no record of its weight files to checksum");
      return Promise.resolve(this.#digest);
    });
    return await digest.digests();
  }

  /**
   * Queues sample `sampleIndex` of a request's n, unless asleep, shutting down or the queue lacks room for it and
   * the samples after it (EngineUnavailableError). n beyond the queue bound can never be admitted: an
   * EngineRequestError.
   */
  submit(
    promptIds: readonly number[],
    params: SamplingParams,
    sampleIndex = 0,
    constraint: TokenConstraint | null = null,
  ): SubmittedRequest {
    const bound = this.#maxQueue;
    if (bound !== null && params.n > bound) {
      throw new EngineRequestError(
        `n=${params.n} can never be admitted: a request's samples all wait in the request queue, which holds at ` +
          `most ${bound} (--max-queue); ask for n <= ${bound}`,
        "n",
      );
    }
    if (this.#stopping) throw this.#unavailable("shutting_down", "the server is shutting down");
    if (this.#sleepLevel > 0) {
      throw this.#unavailable("sleeping", "the server is asleep (POST /wake_up resumes it); retry later");
    }
    if (bound !== null) {
      // A request's samples are submitted one after another at once: the first is admitted only with room for
      // all, so a request never has some samples queued and the rest refused.
      const { waiting, held } = this.#engine.stats();
      const needed = Math.max(1, params.n - sampleIndex);
      if (waiting + held + needed > bound) {
        throw this.#unavailable(
          "queue_full",
          `the request queue is full (${waiting + held} of ${bound} waiting; this request needs ${needed}); retry later`,
        );
      }
    }
    return this.#engine.submit(promptIds, params, sampleIndex, constraint);
  }

  abort(id: number, reason?: FinishReason): void {
    this.#engine.abort(id, reason);
  }

  status(): ControlStatus {
    return {
      policyVersion: this.#engine.policyVersion,
      sleepLevel: this.#sleepLevel,
      weightsSource: this.#source,
      busy: this.#busy > 0,
      paused: this.#paused,
    };
  }

  /** Whether requests in flight are frozen in place (paused with keep or retract): no step runs until resume(). */
  get #frozen(): boolean {
    return this.#paused === "keep" || this.#paused === "retract";
  }

  /**
   * Stops generation until resume() (see the file comment for the modes). Requests submitted from now on wait.
   * With `clearCache` (abort and wait only, as vLLM's clear_cache) the prefix cache is emptied once drained.
   * Pausing again applies the new mode to what is in flight, and a pause that froze requests stays frozen until
   * resume(); wait is refused (a ControlError) while requests are frozen, as they could never finish.
   */
  pause(mode: PauseMode = "abort", clearCache = false): Promise<ControlStatus> {
    return this.#serialized(async () => {
      const engine = this.#engine;
      if (mode === "wait" && this.#frozen && engine.stats().running + engine.stats().waiting > 0) {
        const message = `requests are frozen by a pause with mode=${this.#paused}: resume first, or pause with mode=abort`;
        throw new ControlError("conflict", message);
      }
      engine.hold();
      this.#paused ??= mode;
      if (mode === "abort") engine.abortAll(undefined);
      else if (mode === "wait") await engine.idle();
      else {
        await engine.freeze();
        if (mode === "retract") engine.preemptAll();
      }
      // Once frozen (keep, retract), a later abort or wait leaves the engine frozen, and so the mode.
      if (mode === "keep" || mode === "retract" || !this.#frozen) this.#paused = mode;
      if (clearCache && !this.#frozen) engine.resetPrefixCache();
      return this.status();
    });
  }

  /** Undoes pause(): frozen requests continue, those that waited are queued, in arrival order. */
  resume(): Promise<ControlStatus> {
    return this.#serialized(() => {
      if (this.#paused !== null && !this.#stopping) {
        this.#paused = null;
        this.#engine.thaw();
        this.#engine.release();
      }
      return Promise.resolve(this.status());
    });
  }

  /**
   * Ends every request now with finish reason "abort" (their tokens so far kept), without pausing; returns how many.
   */
  abortAll(): number {
    return this.#engine.abortAll(undefined);
  }

  /**
   * Loads the weights at `requested` and swaps them in (see the file comment for the modes). `version` sets the
   * new policy version (it must exceed the current one); by default it is the current one plus 1. `weightVersion` names
   * the new weights (see weightVersionOf).
   */
  updateWeights(requested: string, mode: RefitMode = "finish", version?: number, weightVersion?: string | null): Promise<RefitResult> {
    return this.#serialized(() => this.#refit(() => this.#resolve(requested), mode, version, weightVersion));
  }

  /**
   * Replaces the served weights by weights of the same architecture that no trainer made (vLLM's weight checker
   * "reset"), so that a later update is seen to have written every weight: a refit (mode finish, the policy version
   * up by one) to the weights `resetWeights` gives. A ControlError (conflict) while paused or asleep.
   */
  resetWeights(): Promise<RefitResult> {
    return this.#serialized(() => {
      const reset = this.#resetSource;
      if (!reset) throw new ControlError("invalid", "this server offers no weights to reset to", "action");
      this.#checkAwakeAndRunning();
      return this.#refit(reset, "finish", undefined, null);
    });
  }

  async #refit(
    sourceOf: () => string | Promise<string>,
    mode: RefitMode,
    version: number | undefined,
    weightVersion: string | null | undefined,
  ): Promise<RefitResult> {
    const previous = this.#engine.policyVersion;
    const next = version ?? previous + 1;
    if (!Number.isSafeInteger(next) || next <= previous) {
      const message = `the new policy version must be an integer above the current one (${previous}), got ${next}`;
      throw new ControlError("invalid", message, "policy_version");
    }
    if (this.#sleepLevel > 0) throw new ControlError("conflict", "the server is asleep: wake it up before updating the weights");
    const source = await sourceOf();
    const started = performance.now();
    // Requests from now on wait for the new weights, also while they load; a failed load lets them run on the old.
    this.#engine.hold();
    let loaded = started;
    let outcome: { aborted: number; preempted: number };
    // The files' state as they are loaded, for the digests of what will serve.
    const digest = this.#digestOf?.(source) ?? null;
    try {
      const runner = await this.#load(source);
      loaded = performance.now();
      outcome = await this.#swap(runner, next, mode);
    } finally {
      // Paused, requests keep waiting until resume().
      if (this.#paused === null) this.#engine.release();
    }
    const { aborted, preempted } = outcome;
    this.#source = source;
    this.#digest = digest;
    if (weightVersion !== undefined && weightVersion !== null) this.#weightVersions.set(next, weightVersion);
    return {
      policyVersion: next,
      previousPolicyVersion: previous,
      mode,
      source,
      aborted,
      preempted,
      loadMs: loaded - started,
      swapMs: performance.now() - loaded,
    };
  }

  /**
   * Frees the KV cache (level 1) and the weights too (level 2). New requests are refused until wakeUp(); those in
   * flight finish first ("finish") or end with a retriable error ("abort").
   */
  sleep(level: 1 | 2 = 1, mode: "finish" | "abort" = "finish"): Promise<ControlStatus> {
    return this.#serialized(async () => {
      if (this.#sleepLevel >= level) return this.status();
      const engine = this.#engine;
      if (mode === "finish" && this.#frozen && engine.stats().running > 0) {
        const message = `requests are frozen by a pause with mode=${this.#paused}: resume first, or sleep with mode=abort`;
        throw new ControlError("conflict", message);
      }
      this.#sleepLevel = level;
      if (mode === "abort") {
        engine.abortAll(this.#unavailable("sleeping", "the request was aborted because the server was put to sleep"));
      }
      await engine.sleep(level);
      return this.status();
    });
  }

  /** Restores what sleep() freed (reloading the weights after level 2) and takes requests again. */
  wakeUp(): Promise<ControlStatus> {
    return this.#serialized(async () => {
      // Level 2 reads the weights again: their digests are those of the files as read now.
      const digest = this.#sleepLevel === 2 ? this.#digestOf?.(this.#source) ?? null : this.#digest;
      this.#engine.wake(this.#sleepLevel === 2 ? await this.#load(this.#source) : null);
      this.#digest = digest;
      this.#sleepLevel = 0;
      return this.status();
    });
  }

  /** Forgets every cached prefix (new requests recompute their prompts). */
  resetPrefixCache(): void {
    this.#engine.resetPrefixCache();
  }

  /**
   * Stops taking requests (shutting_down), lets those in flight finish for up to `timeoutMs`, then ends the rest
   * with a retriable error. Resolves once the engine is idle.
   */
  async shutdown(timeoutMs: number): Promise<void> {
    this.#stopping = true;
    const engine = this.#engine;
    this.#paused = null;
    engine.thaw();
    engine.release();
    let timer: ReturnType<typeof setTimeout> | undefined;
    const expired = new Promise<"expired">((resolve) => (timer = setTimeout(() => resolve("expired"), timeoutMs)));
    try {
      if (await Promise.race([engine.idle().then(() => "idle" as const), expired]) === "expired") {
        engine.abortAll(this.#unavailable("shutting_down", "the server shut down before the request finished"));
        await engine.idle();
      }
    } finally {
      clearTimeout(timer);
    }
  }

  async #swap(runner: ModelRunner, version: number, mode: RefitMode): Promise<{ aborted: number; preempted: number }> {
    const engine = this.#engine;
    let aborted = 0;
    let preempted = 0;
    // Requests frozen by a pause cannot finish first: they are retracted, to continue on the new weights.
    const frozen = this.#frozen;
    try {
      if (mode === "finish" && !frozen) await engine.idle();
      else {
        if (mode === "abort") {
          const reason = `the request was aborted because the policy weights are being updated to version ${version}; retry it`;
          aborted = engine.abortAll(this.#unavailable("weights_updated", reason), true);
        }
        await engine.freeze();
        // Pause: the running ones. Abort: any queued one admitted since, still in its prefill.
        preempted = engine.preemptAll();
      }
      const old = engine.swapRunner(runner, version);
      await old.dispose();
    } catch (err) {
      await runner.dispose();
      throw err;
    } finally {
      if (!frozen) engine.thaw();
    }
    return { aborted, preempted };
  }

  #unavailable(reason: UnavailableReason, message: string): EngineUnavailableError {
    return new EngineUnavailableError(reason, message, this.#retryAfter);
  }

  #serialized<T>(operation: () => Promise<T>): Promise<T> {
    const run = this.#last.then(async () => {
      this.#busy++;
      try {
        return await operation();
      } finally {
        this.#busy--;
      }
    });
    this.#last = run.catch(() => {});
    return run;
  }
}
