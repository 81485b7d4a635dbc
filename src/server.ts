/** Composition root: resolve the model, load it, start the engine, build the app, serve it. */
import * as path from "node:path";
import type { ServerConfig } from "./config.ts";
import { serve, type FetchHandler, type RunningServer } from "./runtime/serve.ts";
import process from "node:process";
import { envRecord } from "./runtime/process.ts";
import { createLogger, type Logger, type LogLevel } from "./log.ts";
import type { Hono } from "hono";
import { createApp } from "./api/app.ts";
import { errorPayload, errorResponse, HttpParseError, NotReadyError } from "./api/errors.ts";
import { meteredEngine } from "./api/metrics.ts";
import { formatRequestLine, RequestTracker, requestLogFields } from "./api/operations.ts";
import { ChatTokenizer, readChatTemplate } from "./chat/template.ts";
import { ControlError, EngineControl } from "./engine/control.ts";
import { Engine } from "./engine/engine.ts";
import { StepLog } from "./engine/step-log.ts";
import { cacheConfigOf } from "./metrics/cache-config.ts";
import { Rng } from "./engine/rng.ts";
import { SamplerPool } from "./engine/sampler-pool.ts";
import type { EngineSnapshot } from "./metrics/serving.ts";
import { ServingMetrics } from "./metrics/serving.ts";
import { setCpuThreads } from "./model/ort/backends.ts";
import { type ModelInfo, openModel } from "./model/loader.ts";
import { readSamplingDefaults, type SamplingDefaultsSource } from "./model/generation-defaults.ts";
import { BUILTIN_MODEL_NAME, defaultCacheDir } from "./model/builtin.ts";
import { engineRowCapacity } from "./model/runners/engine-kv.ts";
import { collectLoadGarbage, startModelThread } from "./model/thread/model-thread.ts";
import { openModelRunner, type RunnerLayout } from "./model/runners/open-runner.ts";
import { openWeights, resetWeightsDir, resolveWeightsPath, type ServedWeights, WeightsError } from "./model/weights.ts";
import { DigestsUnavailableError, WeightDigests } from "./model/weight-checksums.ts";
import { type StartupFacts, startupFields, startupLines } from "./startup-summary.ts";
import { Grammars } from "./engine/grammar/grammars.ts";

/** The default KV budget when --kv-cache-memory is not given. */
const DEFAULT_KV_CACHE_BYTES = 2 ** 30;

/** A loaded model with its tokenizer and a running engine. */
export interface ServedModel {
  loaded: ModelInfo;
  tokenizer: ChatTokenizer;
  engine: Engine;
  maxModelLen: number;
  /** Which graph the engine runs: its own ("engine"), or the model's standard past/present graph. */
  layout: RunnerLayout;
  /** The engine behind the control plane (refit, sleep, the queue bound): what the API submits to. */
  control: EngineControl;
  /** Sampling for what requests leave unset, from the model's generation config (--generation-config). */
  samplingDefaults: SamplingDefaultsSource;
}

/** A weights problem as the control plane reports it: the client's mistake, or a forbidden path. */
function asControlError(err: unknown): unknown {
  if (err instanceof DigestsUnavailableError) return new ControlError("conflict", err.message);
  if (!(err instanceof WeightsError)) return err;
  return new ControlError(err.problem === "forbidden" ? "forbidden" : "invalid", err.message, "path");
}

/**
 * Loads the model named by the config (the built-in one when none) and starts an engine over it. `hostCache`
 * keeps a WebGPU model's cache in host memory (benchmarks compare the two).
 */
export async function loadServedModel(
  config: ServerConfig,
  log: Logger = createLogger(config.logLevel),
  options: { hostCache?: boolean } = {},
): Promise<ServedModel> {
  const cacheDir = config.cacheDir ?? defaultCacheDir(envRecord());
  const chatTemplate = config.chatTemplate === undefined ? null : readChatTemplate(config.chatTemplate);
  setCpuThreads(config.threads);
  // Hub downloads (transformers.js's and the checkpoint's) read the token from HF_TOKEN.
  if (config.hfToken !== undefined) process.env.HF_TOKEN = config.hfToken;
  // The engine runs its own graph: only its runner opens on the device, never the model's standard session.
  const { model: loaded, opened } = await openModel(
    { model: config.model, device: config.device, dtype: config.dtype, cacheDir, hubUrl: config.hubUrl, revision: config.revision, log },
    async (backend, model) => {
      const { maxPositionEmbeddings } = model.config;
      const maxModelLen = Math.min(config.maxModelLen ?? maxPositionEmbeddings, maxPositionEmbeddings);
      if (model.dtype === "fp16") {
        throw new Error(`the engine runs fp32, q8 and q4 models; --dtype ${model.dtype} is not supported yet`);
      }
      const served: ServedWeights = {
        dir: model.dir,
        dtype: model.dtype,
        backend,
        maxRows: config.maxNumSeqs + 1,
        maxLength: maxModelLen,
        scratchDir: path.join(cacheDir, "refit"),
        hostCache: options.hostCache,
      };
      // The chat tokenizer (tens of ms over the vocabulary) is made while the graph opens, not once it is open.
      const chat = model.tokenizer.then((t) => new ChatTokenizer(t, { chatTemplate }));
      chat.catch(() => {}); // a tokenizer that failed is openModel's to report
      return { ...await openModelRunner(served), served, maxModelLen, chat };
    },
  );
  const { runner, layout, reason, served, maxModelLen } = opened;
  const tokenizer = await opened.chat;
  if (chatTemplate !== null) tokenizer.checkChatTemplate();
  const samplingDefaults = readSamplingDefaults(config.generationConfig, loaded.dir, config.overrideGenerationConfig);
  log.info(`loaded ${loaded.id} on ${loaded.device} via ${loaded.backend.label} (${loaded.dtype})`);
  if (layout === "standard") log.warn(`serving through the model's standard graph, slower at long contexts: ${reason}`);
  if (runner.stepAndSample) log.info("KV cache, logits and sampling stay on the GPU; only token ids and log-probabilities come back");
  // What is left (the engine, the app) gets event loop turns of its own, so that a request arriving meanwhile (a
  // readiness probe) waits for one stretch of work, not for all of them.
  await nextTurn();
  // At debug, what the engine does: its steps summed, a line a second while it works.
  const stepLog = config.logLevel === "debug" ? new StepLog((line) => log.debug(line)) : null;
  const engine = new Engine(runner, {
    onStep: stepLog ? (step) => step && stepLog.record(step) : undefined,
    maxModelLen,
    maxNumSeqs: config.maxNumSeqs,
    maxNumBatchedTokens: config.maxNumBatchedTokens,
    kvCacheBytes: config.kvCacheMemory ?? DEFAULT_KV_CACHE_BYTES,
    prefixCaching: config.prefixCaching,
    schedulingPolicy: config.schedulingPolicy,
    eosTokenIds: loaded.config.eosTokenIds,
    // The runner's buckets, which depend on the context length only: the same for every runner a refit opens.
    rowCapacity: (n) => engineRowCapacity(Math.max(1, n), maxModelLen),
    // The process's shared pool unless the count is set (servers in one process share its threads).
    samplerPool: config.samplerThreads === undefined ? undefined : new SamplerPool(config.samplerThreads),
    onStepError: (err, retried, failed) => {
      const why = err instanceof Error ? err.message : String(err);
      log.warn(`an engine step failed (${why}): ${retried} sequences requeued to recompute, ${failed} ended with the error`);
    },
  });
  const control = new EngineControl(engine, {
    weightsSource: loaded.dir,
    maxQueue: config.maxQueue ?? null,
    resolveSource: (requested) => {
      try {
        return resolveWeightsPath(requested, config.allowedWeightDir);
      } catch (err) {
        throw asControlError(err);
      }
    },
    loadWeights: (source) => openWeights(source, served).catch((err) => Promise.reject(asControlError(err))),
    resetWeights: () => resetWeightsDir(served).catch((err) => Promise.reject(asControlError(err))),
    weightDigests: (source) => {
      const digest = new WeightDigests(source, served.dtype);
      return { digests: () => digest.digests().catch((err) => Promise.reject(asControlError(err))) };
    },
  });
  tokenizer.limitToContext(maxModelLen);
  await nextTurn();
  return { loaded, tokenizer, engine, maxModelLen, layout, control, samplingDefaults };
}

/**
 * Resolves once the event loop has polled for I/O (requests) at least once. Through a timer then an immediate: on
 * Node, a timer alone resumes in the timers phase, before the poll phase, and an immediate alone called from the
 * poll phase resumes before the next one.
 */
async function nextTurn(): Promise<void> {
  await new Promise((resolve) => setTimeout(resolve, 0));
  await new Promise((resolve) => setImmediate(resolve));
}

/** The engine's live state for /metrics. */
function engineSnapshot(served: ServedModel): EngineSnapshot {
  const { engine, control } = served;
  const stats = engine.stats();
  return {
    running: stats.running,
    waiting: stats.waiting + stats.held,
    kvCacheUsage: Math.min(1, stats.kvUsedBytes / stats.kvCacheBytes),
    prefixCacheQueriedTokens: stats.cache.queriedTokens,
    prefixCacheHitTokens: stats.cache.hitTokens,
    preemptions: stats.preemptions,
    steps: stats.steps,
    policyVersion: engine.policyVersion,
    sleepLevel: control.status().sleepLevel,
    paused: control.status().paused !== null,
  };
}

const LEVELS: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40 };

/** The logger the flags ask for: text lines, or one JSON object per line (a message that is a JSON object is merged in). */
export function serverLogger(config: Pick<ServerConfig, "logLevel" | "logFormat">): Logger {
  if (config.logFormat !== "json") return createLogger(config.logLevel);
  const at = (level: LogLevel) => (msg: string) => {
    if (LEVELS[level] < LEVELS[config.logLevel]) return;
    let fields: Record<string, unknown> = { msg };
    if (msg.startsWith("{")) {
      try {
        fields = JSON.parse(msg);
      } catch { /* a plain message after all */ }
    }
    console.error(JSON.stringify({ ts: new Date().toISOString(), level, ...fields }));
  };
  return { debug: at("debug"), info: at("info"), warn: at("warn"), error: at("error") };
}

/** What serverApp shares with the process around it. */
export interface ServerAppOptions {
  log?: Logger;
  tracker?: RequestTracker;
  metrics?: ServingMetrics;
}

/** The names clients send and see: --served-model-name's, else the model path, else the built-in model's. */
function servedModelNamesOf(config: ServerConfig): string[] {
  return config.servedModelName ?? [config.model ?? BUILTIN_MODEL_NAME];
}

/** The seeds of requests that give none: a stream fixed by --seed, or none (each request samples afresh). */
function seedStream(seed: number | undefined): (() => number) | null {
  if (seed === undefined) return null;
  const rng = Rng.fromSeed(seed);
  return () => rng.nextUint32();
}

/** --allowed-origins: comma-separated, or a JSON list as vLLM takes it ('["*"]'); null: CORS off. */
function allowedOriginsOf(value: string | undefined): string[] | null {
  if (value === undefined) return null;
  let list: unknown = null;
  if (value.trim().startsWith("[")) {
    try {
      list = JSON.parse(value);
    } catch { /* read as comma-separated */ }
  }
  const origins = Array.isArray(list) ? list.map(String) : value.split(",");
  return origins.map((o) => o.trim()).filter(Boolean);
}

/** The HTTP app over a served model, with everything the config asks for (control plane, metrics, request log). */
export function serverApp(config: ServerConfig, served: ServedModel, options: ServerAppOptions = {}): Hono {
  const log = options.log ?? serverLogger(config);
  const servedModelNames = servedModelNamesOf(config);
  const metrics = options.metrics ?? new ServingMetrics(servedModelNames[0]);
  return createApp({
    servedModelName: servedModelNames[0],
    servedModelNames,
    // As the model was asked for (a hub id or a directory), which requests may name too.
    modelRoot: config.model ?? served.loaded.id,
    maxModelLen: served.maxModelLen,
    tokenizer: served.tokenizer,
    engine: meteredEngine(served.control, metrics),
    control: config.disableControlPlane ? null : served.control,
    adminApiKey: config.adminApiKey ?? null,
    metrics,
    metricsApiKeyRequired: config.metricsApiKeyRequired,
    cacheConfig: cacheConfigOf(served.engine),
    engineSnapshot: () => engineSnapshot(served),
    tracker: options.tracker,
    requestLog: config.logRequests
      ? (r) => log.info(config.logFormat === "json" ? JSON.stringify(requestLogFields(r)) : formatRequestLine(r))
      : null,
    allowedOrigins: allowedOriginsOf(config.allowedOrigins),
    isReady: () => true,
    apiKey: config.apiKey,
    toolCallParser: config.toolCallParser,
    grammars: grammarsOf(served),
    reasoningParser: config.reasoningParser ?? null,
    logprobsMode: config.logprobsMode,
    returnTokensAsTokenIds: config.returnTokensAsTokenIds,
    returnSamplingMask: config.enableReturnSamplingMask,
    requireTemperature: config.requireTemperature ?? null,
    requireTopP: config.requireTopP ?? null,
    requireTopK: config.requireTopK ?? null,
    strictMaxTokens: config.strictMaxTokens,
    samplingDefaults: served.samplingDefaults.defaults,
    nextSeed: seedStream(config.seed),
  });
}

/** The model's grammars: its vocabulary is compiled for them on the first constrained request, not at start. */
function grammarsOf(served: ServedModel): Grammars {
  const { tokenizer, engine, loaded } = served;
  return new Grammars(() => ({
    tokens: tokenizer.tokenStrings(Array.from({ length: tokenizer.vocabSize }, (_, i) => i)),
    vocabSize: engine.runner.vocabSize,
    stopTokenIds: loaded.config.eosTokenIds,
  }));
}

/** The figures of the start-up summary. */
function startupFacts(config: ServerConfig, served: ServedModel, listening: RunningServer): StartupFacts {
  const { limits } = served.engine.scheduler;
  return {
    hostname: listening.hostname,
    port: listening.port,
    servedModelNames: servedModelNamesOf(config),
    model: config.model ?? served.loaded.id,
    device: served.loaded.device,
    backend: served.loaded.backend.label,
    dtype: served.loaded.dtype,
    maxModelLen: served.maxModelLen,
    kvCacheBytes: limits.kvCacheBytes,
    kvBytesPerToken: limits.bytesPerToken,
    maxNumSeqs: limits.maxNumSeqs,
    samplingDefaults: served.samplingDefaults.defaults,
    samplingDefaultsSource: served.samplingDefaults.source,
  };
}

/** Logs the start-up summary: a few lines, or one JSON object with --log-format json. */
function logStartupSummary(log: Logger, config: ServerConfig, facts: StartupFacts): void {
  if (config.logFormat === "json") log.info(JSON.stringify(startupFields(facts)));
  else for (const line of startupLines(facts)) log.info(line);
}

export interface StartedServer extends RunningServer {
  /** Resolves once the model is loaded and /health answers ok; rejects if loading failed. */
  ready: Promise<ServedModel>;
  /**
   * Graceful stop: new requests get 503, those in flight get up to `timeoutMs` to finish (then they end with a
   * retriable error), then the listener closes.
   */
  shutdown(timeoutMs: number): Promise<void>;
}

/**
 * Binds the port at once (so /health can answer 503 while loading), then loads the model and swaps in the app.
 */
export async function startServer(config: ServerConfig, log: Logger = serverLogger(config)): Promise<StartedServer> {
  let handler: FetchHandler = notReady;
  // The model loads on its own thread; starting that thread holds this one a moment, better before any request.
  startModelThread();
  // So does the first Request and Response a runtime makes (Node loads its fetch implementation then: ~35 ms).
  notReady(new Request("http://localhost/health"));
  const running = await serve((req) => handler(req), {
    hostname: config.host,
    port: config.port,
    keepAliveTimeout: config.keepAliveTimeout,
    parseErrorBody: (status, message) => JSON.stringify(errorPayload(new HttpParseError(status, message)).body),
  });
  // Listening is not serving: until the model is loaded every route answers 503; the summary says when it serves
  // (tests and scripts wait for its word "ready", which this line must not hold).
  log.info(`listening on http://${running.hostname}:${running.port} (loading the model: requests get 503 until it has loaded)`);
  const tracker = new RequestTracker();
  const metrics = new ServingMetrics(servedModelNamesOf(config)[0]);
  let model: ServedModel | null = null;
  const ready = loadServedModel(config, log).then(async (served) => {
    model = served;
    const app = serverApp(config, served, { log, tracker, metrics });
    await warmUp(config, served);
    await collectLoadGarbage();
    handler = (req) => app.fetch(req);
    logStartupSummary(log, config, startupFacts(config, served, running));
    return served;
  });
  ready.catch((err) => log.error(`model load failed: ${err instanceof Error ? err.message : String(err)}`));
  const shutdown = async (timeoutMs: number) => {
    const started = performance.now();
    tracker.drain();
    const served = model as ServedModel | null;
    if (served) {
      const { running, waiting } = served.engine.stats();
      log.info(`shutting down: ${running + waiting} sequences in flight`);
      await served.control.shutdown(timeoutMs);
    }
    // The engine is done; give the last responses time to reach their clients before the connections close.
    const left = () => Math.max(1000, timeoutMs - (performance.now() - started));
    await tracker.settled(left());
    await running.close(left());
  };
  return { ...running, ready, shutdown };
}

/**
 * An app's first request runs code that has not run yet (10-25 ms here): a twin of the app, which logs and counts
 * nothing, takes that first request, so that no client's request waits for it behind the ones queued at the switch.
 */
async function warmUp(config: ServerConfig, served: ServedModel): Promise<void> {
  const twin = serverApp({ ...config, logRequests: false }, served, { log: createLogger("error") });
  await nextTurn();
  await twin.fetch(new Request("http://localhost/health"));
  await nextTurn();
}

/** What every route answers while the model loads: the API's own 503, so clients retry as they would after it. */
function notReady(req: Request): Response {
  const path = new URL(req.url).pathname;
  const message = path === "/health" ? "model is loading" : "the server is starting: the model is loading";
  return errorResponse(new NotReadyError(message));
}
