/** Composition root: resolve the model, load it, start the engine, build the app, serve it. */
import type { ServerConfig } from "./config.ts";
import { serve, type FetchHandler, type RunningServer } from "./runtime/serve.ts";
import { envRecord } from "./runtime/process.ts";
import { createLogger, type Logger } from "./log.ts";
import { createApp } from "./api/app.ts";
import { ChatTokenizer } from "./chat/template.ts";
import { Engine } from "./engine/engine.ts";
import { loadModel, type LoadedModel } from "./model/loader.ts";
import { defaultCacheDir } from "./model/builtin.ts";
import { openEngineRunner } from "./model/engine-runner.ts";

/** The default KV budget when --kv-cache-memory is not given. */
const DEFAULT_KV_CACHE_BYTES = 2 ** 30;

/** A loaded model with its tokenizer and a running engine. */
export interface ServedModel {
  loaded: LoadedModel;
  tokenizer: ChatTokenizer;
  engine: Engine;
  maxModelLen: number;
}

/** Loads the model named by the config (the built-in one when none) and starts an engine over it. */
export async function loadServedModel(config: ServerConfig, log: Logger = createLogger(config.logLevel)): Promise<ServedModel> {
  const cacheDir = config.cacheDir ?? defaultCacheDir(envRecord());
  const loaded = await loadModel({ model: config.model, device: config.device, dtype: config.dtype, cacheDir, log });
  log.info(`loaded ${loaded.id} on ${loaded.device} via ${loaded.backend.label} (${loaded.dtype})`);
  const maxModelLen = Math.min(config.maxModelLen ?? loaded.config.maxPositionEmbeddings, loaded.config.maxPositionEmbeddings);
  if (loaded.dtype !== "fp32" && loaded.dtype !== "q4") {
    throw new Error(`the engine runs fp32 and q4 models; --dtype ${loaded.dtype} is not supported yet`);
  }
  const runner = await openEngineRunner({
    dir: loaded.dir,
    dtype: loaded.dtype,
    backend: loaded.backend,
    maxRows: config.maxNumSeqs + 1,
    maxLength: maxModelLen,
  });
  // The engine runs its own graph; the standard session was only needed to load and check the model.
  await loaded.dispose();
  const engine = new Engine(runner, {
    maxModelLen,
    maxNumSeqs: config.maxNumSeqs,
    maxNumBatchedTokens: config.maxNumBatchedTokens,
    kvCacheBytes: config.kvCacheMemory ?? DEFAULT_KV_CACHE_BYTES,
    prefixCaching: config.prefixCaching,
    eosTokenIds: loaded.config.eosTokenIds,
    rowCapacity: (n) => runner.rowCapacity(n),
  });
  return { loaded, tokenizer: new ChatTokenizer(loaded.tokenizer), engine, maxModelLen };
}

export interface StartedServer extends RunningServer {
  /** Resolves once the model is loaded and /health answers ok; rejects if loading failed. */
  ready: Promise<ServedModel>;
}

/**
 * Binds the port at once (so /health can answer 503 while loading), then loads the model and swaps in the app.
 */
export async function startServer(config: ServerConfig, log: Logger = createLogger(config.logLevel)): Promise<StartedServer> {
  let handler: FetchHandler = notReady;
  const running = await serve((req) => handler(req), { hostname: config.host, port: config.port });
  log.info(`listening on http://${running.hostname}:${running.port}`);
  const ready = loadServedModel(config, log).then((served) => {
    const app = createApp({
      servedModelName: config.servedModelName ?? config.model ?? "gym-edge/tiny",
      modelRoot: served.loaded.id,
      maxModelLen: served.maxModelLen,
      tokenizer: served.tokenizer,
      engine: served.engine,
      isReady: () => true,
      apiKey: config.apiKey,
      toolCallParser: config.toolCallParser,
      reasoningParser: config.reasoningParser ?? null,
      logprobsMode: config.logprobsMode,
      returnTokensAsTokenIds: config.returnTokensAsTokenIds,
      requireTemperature: config.requireTemperature ?? null,
      requireTopP: config.requireTopP ?? null,
      requireTopK: config.requireTopK ?? null,
      strictMaxTokens: config.strictMaxTokens,
    });
    handler = (req) => app.fetch(req);
    log.info("ready");
    return served;
  });
  ready.catch((err) => log.error(`model load failed: ${err instanceof Error ? err.message : String(err)}`));
  return { ...running, ready };
}

function notReady(req: Request): Response {
  const path = new URL(req.url).pathname;
  const message = path === "/health" ? "model is loading" : "the server is starting: the model is loading";
  return Response.json({ error: { message, type: "service_unavailable", param: null, code: 503 } }, {
    status: 503,
    headers: { "Retry-After": "1" },
  });
}
