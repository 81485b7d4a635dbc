/**
 * The engine benchmarks' engine: the benchmark model (built once into the cache directory, outside the repository),
 * the engine over it with its model runs profiled, and a load of requests through it.
 */
import * as path from "node:path";
import { ServerConfig } from "../../src/config.ts";
import type { TokenConstraint } from "../../src/engine/constraint.ts";
import type { Engine } from "../../src/engine/engine.ts";
import { SamplingParams, type SamplingParamsInput } from "../../src/engine/sampling-params.ts";
import { silentLogger } from "../../src/log.ts";
import { ensureModel } from "../../src/model/builder/build.ts";
import { loadServedModel, type ServedModel } from "../../src/server.ts";
import { bunAllocatorEnv, runAgain } from "../../src/runtime/bun-install.ts";
import { exitProcess } from "../../src/runtime/process.ts";
import type { EngineBenchFlags } from "./engine-flags.ts";
import { CpuMeter } from "./meters.ts";
import { type KvPeak, profileRunner, type StepProfile } from "./profile.ts";

/**
 * Builds the preset's model (once) into the cache directory and returns its folder. On Bun, first runs this script
 * again with the allocator setting the server starts itself with (bunAllocatorEnv), so that the engine's figures are
 * the server's: without it the GRPO-like load ran at 127 tok/s against 161.
 */
export async function benchModel(flags: EngineBenchFlags): Promise<string> {
  const allocator = bunAllocatorEnv();
  if (allocator !== null) exitProcess(await runAgain(allocator));
  const dir = path.join(flags.cacheDir, flags.preset);
  const t0 = performance.now();
  await ensureModel({ preset: flags.preset, out: dir, seed: 0, dtype: flags.dtype });
  console.error(`model ${dir} (${flags.dtype}) ready in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  return dir;
}

/** An engine over the benchmark model, with its model runs timed into `profile`. */
export interface BenchEngine {
  served: ServedModel;
  engine: Engine;
  profile: StepProfile;
  /** Peak bytes of the runner's row buffers and of the prefix cache, sampled at every model run. */
  kvPeak: KvPeak;
  close(): Promise<void>;
}

/** Loads the benchmark model into an engine with the benchmark's flags. */
export async function openBenchEngine(
  dir: string,
  flags: EngineBenchFlags,
  overrides: { prefixCaching?: boolean; onRun?: () => void } = {},
): Promise<BenchEngine> {
  const config = ServerConfig.parse({
    model: dir,
    device: flags.device,
    dtype: flags.dtype,
    cacheDir: flags.cacheDir,
    maxNumSeqs: flags.maxNumSeqs,
    maxNumBatchedTokens: flags.maxNumBatchedTokens,
    kvCacheMemory: flags.kvCacheMemory,
    prefixCaching: overrides.prefixCaching ?? true,
  });
  const served = await loadServedModel(config, silentLogger, { hostCache: flags.hostCache });
  const { engine } = served;
  const { profile, kvPeak } = profileRunner(engine, overrides.onRun);
  const { runner } = engine;
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
 * The requests' seeds are `seed` + prompt index, so a run can be repeated. `constraint` gives each sample a grammar.
 */
export async function runEngineLoad(
  engine: Engine,
  prompts: readonly number[][],
  n: number,
  params: SamplingParamsInput,
  seed: number,
  constraint?: () => TokenConstraint,
): Promise<EngineLoadResult> {
  const meter = new CpuMeter().start();
  const t0 = performance.now();
  const requests = prompts.flatMap((prompt, p) => {
    const sampling = SamplingParams.parse({ ...params, seed: seed + p });
    return Array.from({ length: n }, (_, i) => engine.submit(prompt, sampling, i, constraint?.() ?? null));
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
