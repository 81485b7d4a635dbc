/**
 * Where the engine's time goes: every model run the engine makes (runner.step, or stepAndSample where the runner
 * samples on its device) timed into a StepProfile, with the runner's row buffers re-laid out and the peak KV bytes.
 */
import type { Engine } from "../../src/engine/engine.ts";
import type { RowInput } from "../../src/engine/model-runner.ts";
import { ThreadedRunner } from "../../src/model/thread/threaded-runner.ts";
import { round } from "./report.ts";

/** Per model run of the engine: rows, tokens per row, milliseconds. */
interface RunRecord {
  rows: number;
  tokensPerRow: number;
  ms: number;
}

/** Where the engine's time went in one measured load: model runs (decode / prefill) and the host around them. */
export class StepProfile {
  readonly #runs: RunRecord[] = [];
  #resizes = 0;
  #resizeMs = 0;

  /** `resizesTimed`: whether re-layouts are timed apart from the model runs (see profileRunner). */
  constructor(readonly resizesTimed = true) {}

  record(inputs: readonly RowInput[], ms: number): void {
    this.#runs.push({ rows: inputs.length, tokensPerRow: inputs[0]?.tokens.length ?? 0, ms });
  }

  /** A re-layout of the row buffers (`ms` long, 0 where it is not timed). */
  recordResize(ms: number): void {
    this.#resizes++;
    this.#resizeMs += ms;
  }

  clear(): void {
    this.#runs.length = 0;
    this.#resizes = 0;
    this.#resizeMs = 0;
  }

  /** Milliseconds in model runs so far. */
  get modelMs(): number {
    return this.#runs.reduce((a, r) => a + r.ms, 0);
  }

  /** Totals over the recorded runs; `wallMs` is the load's wall time, `generated` its generated tokens. */
  summary(wallMs: number, generated: number): Record<string, unknown> {
    const decode = this.#runs.filter((r) => r.tokensPerRow === 1);
    const prefill = this.#runs.filter((r) => r.tokensPerRow > 1);
    const sum = (rs: RunRecord[], f: (r: RunRecord) => number) => rs.reduce((a, r) => a + f(r), 0);
    const decodeMs = sum(decode, (r) => r.ms);
    const prefillMs = sum(prefill, (r) => r.ms);
    const batches = new Map<number, number>();
    for (const r of decode) batches.set(r.rows, (batches.get(r.rows) ?? 0) + 1);
    const hostMs = wallMs - decodeMs - prefillMs - this.#resizeMs;
    return {
      decode_runs: decode.length,
      decode_ms: round(decodeMs, 0),
      decode_ms_per_run: decode.length ? round(decodeMs / decode.length, 1) : null,
      decode_mean_batch: decode.length ? round(sum(decode, (r) => r.rows) / decode.length, 1) : null,
      // rows -> runs at that batch size
      decode_batches: Object.fromEntries([...batches].sort((a, b) => b[0] - a[0])),
      prefill_runs: prefill.length,
      prefill_tokens: sum(prefill, (r) => r.rows * r.tokensPerRow),
      prefill_ms: round(prefillMs, 0),
      // the runner growing or shrinking every row's buffers to a new number of slots (allocates and copies)
      resizes: this.#resizes,
      // null where the re-layouts' time is part of the model runs' (a runner on the model thread)
      resize_ms: this.resizesTimed ? round(this.#resizeMs, 0) : null,
      // sampling, KV bookkeeping, row moves, event delivery: everything outside the model runs
      host_ms: round(hostMs, 0),
      host_ms_per_token: generated ? round(hostMs / generated, 3) : null,
    };
  }
}

/** Peak bytes of the runner's row buffers and of the prefix cache, sampled at every model run. */
export interface KvPeak {
  rows: number;
  prefix: number;
}

/**
 * Times every model run of `engine`'s runner into a new StepProfile (calling `onRun` after each) and keeps the KV
 * peaks. Re-layouts of the row buffers: on this thread, a reserve call that changed the runner's bytes, timed. On
 * the model thread (ThreadedRunner) reserve only sends the call, and the bytes change when the thread answers: there
 * the re-layout runs queued ahead of the next model run, so its time is inside that run's time here and cannot be
 * told apart, and re-layouts are counted from the bytes each model run reports, a change from the run before
 * counting as one (so several between two runs count once, and a grow and shrink that cancel out not at all).
 */
export function profileRunner(engine: Engine, onRun?: () => void): { profile: StepProfile; kvPeak: KvPeak } {
  const runner = engine.runner;
  const onThread: boolean = runner instanceof ThreadedRunner;
  const profile = new StepProfile(!onThread);
  const kvPeak = { rows: 0, prefix: 0 };
  let bytesSeen = runner.workingBytes();
  if (!onThread) {
    const reserve = runner.reserve.bind(runner);
    runner.reserve = (length: number) => {
      const [t0, before] = [performance.now(), runner.workingBytes()];
      reserve(length);
      if (runner.workingBytes() !== before) profile.recordResize(performance.now() - t0);
    };
  }
  const timed = <A extends unknown[], R>(run: (inputs: RowInput[], ...rest: A) => Promise<R>) =>
    async (inputs: RowInput[], ...rest: A): Promise<R> => {
      const t0 = performance.now();
      const result = await run(inputs, ...rest);
      profile.record(inputs, performance.now() - t0);
      const bytes = runner.workingBytes();
      if (onThread && bytes !== bytesSeen) profile.recordResize(0);
      bytesSeen = bytes;
      kvPeak.rows = Math.max(kvPeak.rows, bytes);
      kvPeak.prefix = Math.max(kvPeak.prefix, engine.cache.usedBlocks * engine.cache.bytesPerBlock);
      onRun?.();
      return result;
    };
  runner.step = timed(runner.step.bind(runner));
  if (runner.stepAndSample) runner.stepAndSample = timed(runner.stepAndSample.bind(runner));
  return { profile, kvPeak };
}
