/** Composition root: resolve the model, load it, build the app, serve it. */
import type { ServerConfig } from "./config.ts";
import { serve, type FetchHandler, type RunningServer } from "./runtime/serve.ts";
import { envRecord } from "./runtime/process.ts";
import { createLogger, type Logger } from "./log.ts";
import { createApp } from "./api/app.ts";
import { ChatTokenizer } from "./chat/template.ts";
import { loadModel } from "./model/loader.ts";
import { defaultCacheDir, ensureBuiltinModel } from "./model/builtin.ts";

export interface StartedServer extends RunningServer {
  /** Resolves once the model is loaded and /health answers ok; rejects if loading failed. */
  ready: Promise<void>;
}

/**
 * Binds the port at once (so /health can answer 503 while loading), then loads the model and swaps in the app.
 */
export async function startServer(config: ServerConfig, log: Logger = createLogger(config.logLevel)): Promise<StartedServer> {
  let handler: FetchHandler = notReady;
  const running = await serve((req) => handler(req), { hostname: config.host, port: config.port });
  log.info(`listening on http://${running.hostname}:${running.port}`);
  const ready = (async () => {
    const cacheDir = config.cacheDir ?? defaultCacheDir(envRecord());
    const model = config.model ?? await ensureBuiltinModel(cacheDir);
    const loaded = await loadModel({ model, device: config.device, dtype: config.dtype, cacheDir });
    log.info(`loaded ${model} on ${loaded.device} (${loaded.dtype})`);
    const tokenizer = new ChatTokenizer(loaded.tokenizer);
    const maxModelLen = config.maxModelLen ?? loaded.config.maxPositionEmbeddings;
    const app = createApp({
      servedModelName: config.servedModelName ?? config.model ?? "gym-edge/tiny",
      maxModelLen,
      tokenizer,
      isReady: () => true,
      apiKey: config.apiKey,
    });
    handler = (req) => app.fetch(req);
  })();
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
