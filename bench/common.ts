/**
 * What the engine benchmarks share: flags, the benchmark model (built once into the cache directory, outside the
 * repository), the engine over it with its model runs timed, the transformers.js generate() baseline, random prompts,
 * medians, resident-memory sampling and the one JSON line per measurement.
 */
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import process from "node:process";
import { AutoModelForCausalLM, Tensor } from "@huggingface/transformers";
import { ServerConfig } from "../src/config.ts";
import type { Engine } from "../src/engine/engine.ts";
import type { RowInput } from "../src/engine/model-runner.ts";
import { Rng } from "../src/engine/rng.ts";
import { SamplingParams, type SamplingParamsInput } from "../src/engine/sampling-params.ts";
import { silentLogger } from "../src/log.ts";
import { ensureModel } from "../src/model/builder/build.ts";
import { defaultCacheDir } from "../src/model/builtin.ts";
import { runtimeName, runtimeVersion } from "../src/runtime/detect.ts";
import { loadServedModel, type ServedModel } from "../src/server.ts";

/** The value after `--name` on the command line, or `fallback`. */
export function flag(name: string, fallback: string): string {
  const args = process.argv;
  const at = args.indexOf(`--${name}`);
  return at >= 0 && at + 1 < args.length ? args[at + 1] : fallback;
}

/** A numeric flag. */
export function numberFlag(name: string, fallback: number): number {
  const value = Number(flag(name, String(fallback)));
  if (!Number.isFinite(value)) throw new Error(`--${name} must be a number`);
  return value;
}

/** Whether `--name` is on the command line. */
export function hasFlag(name: string): boolean {
  return process.argv.includes(`--${name}`);
}

/** Flags every engine benchmark takes. */
export interface CommonFlags {
  preset: string;
  device: "cpu" | "wasm" | "webgpu";
  /** On webgpu, keep the cache in host memory and sample on the CPU (the GPU-resident runner's comparison). */
  hostCache: boolean;
  cacheDir: string;
  runs: number;
  maxNumSeqs: number;
  maxNumBatchedTokens: number;
  kvCacheMemory: number;
  /** Skip the in-script baseline (transformers.js generate()). */
  noBaseline: boolean;
}

/** Reads the common flags (defaults: the server's engine defaults, 3 runs). */
export function commonFlags(defaults: { runs?: number } = {}): CommonFlags {
  const device = flag("device", "cpu");
  if (device !== "cpu" && device !== "wasm" && device !== "webgpu") {
    throw new Error(`--device must be cpu, wasm or webgpu, got ${device}`);
  }
  return {
    preset: flag("preset", "bench-135m"),
    device,
    hostCache: hasFlag("host-cache"),
    cacheDir: flag("cache-dir", path.join(defaultCacheDir(process.env), "bench")),
    runs: numberFlag("runs", defaults.runs ?? 3),
    maxNumSeqs: numberFlag("max-num-seqs", 32),
    maxNumBatchedTokens: numberFlag("max-num-batched-tokens", 512),
    kvCacheMemory: numberFlag("kv-cache-memory", 2 ** 30),
    noBaseline: hasFlag("no-baseline"),
  };
}

/** Builds the preset's model (once) into the cache directory and returns its folder. */
export async function benchModel(flags: CommonFlags): Promise<string> {
  const dir = path.join(flags.cacheDir, flags.preset);
  const t0 = performance.now();
  await ensureModel({ preset: flags.preset, out: dir, seed: 0 });
  console.error(`model ${dir} ready in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  return dir;
}

/** The median (upper middle for an even count). */
export function median(values: readonly number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)];
}

/** Rounds for printing. */
export function round(value: number, digits = 2): number {
  return Number(value.toFixed(digits));
}

/** The 1, 5 and 15 minute load averages: the machine is shared, so every line says how busy it was. */
export function loadAverage(): number[] {
  return os.loadavg().map((v) => round(v));
}

/** How a generate() baseline samples: top_k 0 is the engine's whole-vocabulary sampling. */
export function baselineVariant(topK: number): { baseline_top_k: number; baseline_sampling: string } {
  return {
    baseline_top_k: topK,
    baseline_sampling: topK === 0 ? "whole vocabulary, as the engine" : `top_k ${topK} (transformers.js default)`,
  };
}

/** A baseline's figures: the median of its runs' rates, and the engine's rate against it. */
export function baselineFigures(rates: number[], otherCores: (number | null)[], engineRate: number) {
  const rate = median(rates);
  return {
    runs: rates.length,
    tok_s: round(rate, 1),
    tok_s_runs: rates.map((r) => round(r, 1)),
    other_cores_runs: otherCores,
    engine_tok_s: round(engineRate, 1),
    engine_speedup: round(engineRate / rate, 2),
  };
}

/** Prints one measurement as a JSON line: what, runtime, backend, model, then the figures. */
export function report(
  what: string,
  flags: Pick<CommonFlags, "device" | "preset"> & { hostCache?: boolean },
  figures: Record<string, unknown>,
): void {
  console.log(JSON.stringify({
    what,
    runtime: runtimeName(),
    version: runtimeVersion(),
    backend: flags.device === "webgpu" && flags.hostCache ? "webgpu (host cache)" : flags.device,
    model: flags.preset,
    dtype: "fp32",
    ...figures,
    cores: os.cpus().length,
    load_average: loadAverage(),
  }));
}

/** Resident set size of this process, in bytes. */
export function rssBytes(): number {
  return process.memoryUsage().rss;
}

/** Samples the process's resident memory on a timer (and on demand) and keeps the peak. */
export class RssSampler {
  peak = 0;
  #timer: ReturnType<typeof setInterval> | null = null;

  /** Starts sampling every `intervalMs` (model runs are asynchronous, so the timer fires during them). */
  start(intervalMs = 20): this {
    this.sample();
    this.#timer = setInterval(() => this.sample(), intervalMs);
    return this;
  }

  sample(): void {
    this.peak = Math.max(this.peak, rssBytes());
  }

  stop(): number {
    if (this.#timer !== null) clearInterval(this.#timer);
    this.#timer = null;
    this.sample();
    return this.peak;
  }
}

/** Busy and idle CPU time of the whole machine (Linux's /proc/stat, in clock ticks), or null elsewhere. */
function machineTicks(): { busy: number; total: number } | null {
  try {
    const fields = fs.readFileSync("/proc/stat", "utf8").split("\n")[0].trim().split(/\s+/).slice(1, 9).map(Number);
    const total = fields.reduce((a, b) => a + b, 0);
    return { busy: total - fields[3] - fields[4], total };
  } catch {
    return null;
  }
}

/**
 * How many cores this process and the rest of the machine kept busy over an interval: the machine is shared, and a
 * run that had to share its cores says so (`other_cores` well above 0).
 */
export class CpuMeter {
  #wall = 0;
  #process = process.cpuUsage();
  #machine = machineTicks();

  start(): this {
    this.#wall = performance.now();
    this.#process = process.cpuUsage();
    this.#machine = machineTicks();
    return this;
  }

  /** Average cores busy since start: this process's, and everything else's where the machine tells. */
  stop(): { process_cores: number; other_cores: number | null } {
    const seconds = (performance.now() - this.#wall) / 1000;
    const usage = process.cpuUsage(this.#process);
    const processCores = (usage.user + usage.system) / 1e6 / seconds;
    const [before, after] = [this.#machine, machineTicks()];
    let other: number | null = null;
    if (before && after && after.total > before.total) {
      const cores = os.cpus().length;
      const busyCores = ((after.busy - before.busy) / (after.total - before.total)) * cores;
      other = Math.max(0, busyCores - processCores);
    }
    return { process_cores: round(processCores), other_cores: other === null ? null : round(other) };
  }
}

/** `count` token ids drawn from a seeded stream, clear of the special tokens at the top of the vocabulary. */
export function randomTokens(rng: Rng, count: number, vocabLimit = 150_000): number[] {
  return Array.from({ length: count }, () => 300 + Math.floor(rng.nextUniform() * (vocabLimit - 300)));
}

/** `count` prompts of about `length` tokens (length +- spread/2), from `seed`. */
export function randomPrompts(seed: number, count: number, length: number, spread = 0): number[][] {
  const rng = Rng.fromSeed(seed);
  return Array.from({ length: count }, () => {
    const jitter = spread > 0 ? Math.floor(rng.nextUniform() * (spread + 1)) - Math.floor(spread / 2) : 0;
    return randomTokens(rng, length + jitter);
  });
}

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

  record(inputs: readonly RowInput[], ms: number): void {
    this.#runs.push({ rows: inputs.length, tokensPerRow: inputs[0]?.tokens.length ?? 0, ms });
  }

  /** A runner.reserve call that re-laid out the row buffers (`ms` long). */
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
      resize_ms: round(this.#resizeMs, 0),
      // sampling, KV bookkeeping, row moves, event delivery: everything outside the model runs
      host_ms: round(hostMs, 0),
      host_ms_per_token: generated ? round(hostMs / generated, 3) : null,
    };
  }
}

/** An engine over the benchmark model, with its model runs timed into `profile`. */
export interface BenchEngine {
  served: ServedModel;
  engine: Engine;
  profile: StepProfile;
  /** Peak bytes of the runner's row buffers and of the prefix cache, sampled at every model run. */
  kvPeak: { rows: number; prefix: number };
  close(): Promise<void>;
}

/** Loads the benchmark model into an engine with the benchmark's flags. */
export async function openBenchEngine(
  dir: string,
  flags: CommonFlags,
  overrides: { prefixCaching?: boolean; onRun?: () => void } = {},
): Promise<BenchEngine> {
  const config = ServerConfig.parse({
    model: dir,
    device: flags.device,
    cacheDir: flags.cacheDir,
    maxNumSeqs: flags.maxNumSeqs,
    maxNumBatchedTokens: flags.maxNumBatchedTokens,
    kvCacheMemory: flags.kvCacheMemory,
    prefixCaching: overrides.prefixCaching ?? true,
  });
  const served = await loadServedModel(config, silentLogger, { hostCache: flags.hostCache });
  const { engine } = served;
  const runner = engine.runner;
  const profile = new StepProfile();
  const kvPeak = { rows: 0, prefix: 0 };
  const step = runner.step.bind(runner);
  const reserve = runner.reserve.bind(runner);
  runner.reserve = (length: number) => {
    const [t0, before] = [performance.now(), runner.workingBytes()];
    reserve(length);
    if (runner.workingBytes() !== before) profile.recordResize(performance.now() - t0);
  };
  // Time every model run the engine makes (runner.step, or stepAndSample where the runner samples on its device,
  // for each decode batch and prefill chunk).
  const timed = <A extends unknown[], R>(run: (inputs: RowInput[], ...rest: A) => Promise<R>) =>
    async (inputs: RowInput[], ...rest: A): Promise<R> => {
      const t0 = performance.now();
      const result = await run(inputs, ...rest);
      profile.record(inputs, performance.now() - t0);
      kvPeak.rows = Math.max(kvPeak.rows, runner.workingBytes());
      kvPeak.prefix = Math.max(kvPeak.prefix, engine.cache.usedBlocks * engine.cache.bytesPerBlock);
      overrides.onRun?.();
      return result;
    };
  runner.step = timed(step);
  if (runner.stepAndSample) runner.stepAndSample = timed(runner.stepAndSample.bind(runner));
  return { served, engine, profile, kvPeak, close: () => runner.dispose() };
}

/** What one batch of requests through the engine gave. */
export interface EngineLoadResult {
  seconds: number;
  /** Cores this process and the rest of the machine kept busy meanwhile. */
  cpu: ReturnType<CpuMeter["stop"]>;
  generated: number;
  /** Time to first token of each request, in ms from submission. */
  ttftMs: number[];
}

/**
 * Submits every prompt `n` times (sample indexes 0..n-1) at once and waits for every token.
 * The requests' seeds are `seed` + prompt index, so a run can be repeated.
 */
export async function runEngineLoad(
  engine: Engine,
  prompts: readonly number[][],
  n: number,
  params: SamplingParamsInput,
  seed: number,
): Promise<EngineLoadResult> {
  const meter = new CpuMeter().start();
  const t0 = performance.now();
  const requests = prompts.flatMap((prompt, p) => {
    const sampling = SamplingParams.parse({ ...params, seed: seed + p });
    return Array.from({ length: n }, (_, i) => engine.submit(prompt, sampling, i));
  });
  const ttftMs: number[] = [];
  let generated = 0;
  await Promise.all(requests.map(async (request) => {
    const submitted = performance.now();
    let first = true;
    for await (const _event of request.events) {
      if (first) ttftMs.push(performance.now() - submitted);
      first = false;
      generated++;
    }
    if (request.finishReason !== "length" && request.finishReason !== "stop") {
      throw new Error(`a request ended with ${request.finishReason}`);
    }
  }));
  const seconds = (performance.now() - t0) / 1000;
  return { seconds, cpu: meter.stop(), generated, ttftMs };
}

/** Sampling options of the baseline, as generate() takes them. */
export interface BaselineSampling {
  temperature: number;
  /** 0: the whole vocabulary (what the engine samples from at top_k off); transformers.js defaults to 50. */
  topK: number;
}

/** transformers.js's own model and generate(): the baseline the engine is measured against. */
export class GenerateBaseline {
  private constructor(
    // deno-lint-ignore no-explicit-any
    readonly model: any,
    readonly padId: number,
  ) {}

  /** Loads the model folder's standard graph with transformers.js on onnxruntime-node's CPU provider. */
  static async open(dir: string): Promise<GenerateBaseline> {
    const config = JSON.parse(fs.readFileSync(path.join(dir, "config.json"), "utf8"));
    const padId = config.pad_token_id ?? [config.eos_token_id].flat()[0];
    const model = await AutoModelForCausalLM.from_pretrained(dir, {
      local_files_only: true,
      device: "cpu",
      dtype: "fp32",
      // The threads the engine's sessions get: onnxruntime-node's own default ran one thread here.
      session_options: { intraOpNumThreads: os.availableParallelism() },
    });
    return new GenerateBaseline(model, padId);
  }

  /**
   * Generates exactly `newTokens` tokens for every prompt in one generate() call, the prompts left-padded to the
   * longest (a static batch: every row waits for the batch). Returns the seconds it took and the cores busy meanwhile.
   */
  async generate(
    prompts: readonly number[][],
    newTokens: number,
    sampling: BaselineSampling,
  ): Promise<{ seconds: number; cpu: ReturnType<CpuMeter["stop"]> }> {
    const width = Math.max(...prompts.map((p) => p.length));
    const ids = new BigInt64Array(prompts.length * width);
    const mask = new BigInt64Array(prompts.length * width);
    prompts.forEach((prompt, b) => {
      const pad = width - prompt.length;
      for (let i = 0; i < width; i++) {
        ids[b * width + i] = BigInt(i < pad ? this.padId : prompt[i - pad]);
        mask[b * width + i] = i < pad ? 0n : 1n;
      }
    });
    const meter = new CpuMeter().start();
    const t0 = performance.now();
    const output = await this.model.generate({
      input_ids: new Tensor("int64", ids, [prompts.length, width]),
      attention_mask: new Tensor("int64", mask, [prompts.length, width]),
      max_new_tokens: newTokens,
      // The engine's ignore_eos: end-of-sequence masked until the last token.
      min_new_tokens: newTokens,
      do_sample: sampling.temperature > 0,
      temperature: sampling.temperature,
      top_k: sampling.topK,
    });
    const seconds = (performance.now() - t0) / 1000;
    const cpu = meter.stop();
    const dims = (output as { dims: number[] }).dims;
    if (dims[0] !== prompts.length || dims[1] !== width + newTokens) {
      throw new Error(`generate() returned [${dims}], expected [${prompts.length}, ${width + newTokens}]`);
    }
    return { seconds, cpu };
  }

  async dispose(): Promise<void> {
    await this.model.dispose();
  }
}
