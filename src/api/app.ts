/** The HTTP app: middleware, the route families, and every error as OpenAI's JSON. Runs on any runtime's fetch. */
import { Hono, type MiddlewareHandler } from "hono";
import { cors } from "hono/cors";
import type { CacheConfig } from "../metrics/cache-config.ts";
import type { EngineSnapshot, ServingMetrics } from "../metrics/serving.ts";
import { requireApiKey } from "./auth.ts";
import { chatCompletionRoutes } from "./chat-completions.ts";
import { completionRoutes } from "./completions.ts";
import { CONTROL_PATHS, type ControlPlane, controlRoutes, versionRoutes } from "./control.ts";
import type { AppDeps } from "./deps.ts";
import {
  ClientClosedError,
  errorResponse,
  MethodNotAllowedError,
  PayloadTooLargeError,
  RouteNotFoundError,
} from "./errors.ts";
import { healthRoutes } from "./health.ts";
import { METRICS_PATH, metricsRoutes } from "./metrics.ts";
import { modelRoutes } from "./models.ts";
import { operations, type RequestRecord, type RequestTracker, ServiceUnavailableError } from "./operations.ts";
import { responseRoutes } from "./responses.ts";
import { tokenizeRoutes } from "./tokenize.ts";
import { tokenRoutes } from "./tokens.ts";
import { sglangRoutes } from "./sglang-generate.ts";

export type { AppDeps } from "./deps.ts";

/** What operating the server adds to the app; all optional, so a bare app (route tests) runs without it. */
export interface OperationsDeps {
  /** The control routes' target; none: no control routes (--disable-control-plane). */
  control?: ControlPlane | null;
  /** Guards the control routes instead of apiKey (--admin-api-key). */
  adminApiKey?: string | null;
  /** GET /metrics serves these, with the engine's live state. */
  metrics?: ServingMetrics | null;
  engineSnapshot?: () => EngineSnapshot | null;
  /** The engine's KV cache configuration, for `vllm:cache_config_info` in /metrics; none: the metric is left out. */
  cacheConfig?: CacheConfig | null;
  /** /metrics takes the API key too; by default it is open to scrapers, as in vLLM (--metrics-api-key-required). */
  metricsApiKeyRequired?: boolean;
  /** Counts requests in flight and turns new ones away while draining (graceful shutdown). */
  tracker?: RequestTracker;
  /** One call per finished request (the request log). */
  requestLog?: ((record: RequestRecord) => void) | null;
  /** Origins allowed by CORS ("*": any); none: no CORS headers at all. */
  allowedOrigins?: readonly string[] | null;
}

const DEFAULT_MAX_BODY_BYTES = 32 * 1024 * 1024;

/**
 * Reads the request body before the routes do, so that an upload that breaks off (the client hung up) is told apart
 * from a server error, and refuses one over `maxBytes` with 413. The rest of a body too large is read and dropped
 * first, up to twice the limit in all: a client still sending when the answer comes would see a reset, not the 413.
 */
function readBody(maxBytes: number): MiddlewareHandler {
  return async (c, next) => {
    const body = c.req.raw.body;
    if (!body) return await next();
    const reader = body.getReader();
    const chunks: Uint8Array[] = [];
    let size = 0;
    /** Reads until the end (true) or past `limit` bytes (false), keeping the chunks or not. */
    const readUpTo = async (limit: number, keep: boolean) => {
      while (size <= limit) {
        const { value, done } = await reader.read();
        if (done) return true;
        size += value.length;
        if (keep) chunks.push(value);
      }
      return false;
    };
    let whole: boolean;
    try {
      // The runtime holds a body to its declared length: one declared over the limit is refused without keeping it.
      whole = Number(c.req.header("content-length") ?? 0) <= maxBytes && await readUpTo(maxBytes, true);
      if (!whole) await readUpTo(2 * maxBytes, false);
    } catch {
      throw new ClientClosedError();
    }
    if (!whole) {
      await reader.cancel().catch(() => {});
      throw new PayloadTooLargeError(maxBytes);
    }
    c.req.raw = new Request(c.req.raw, { body: new Blob(chunks as BlobPart[]) });
    await next();
  };
}

// Route paths ("/v1/models/:model{.+}") as patterns, to tell an unknown path (404) from a wrong method (405).
function pathPattern(path: string): RegExp {
  const segments = path.split("/").map((segment) => {
    if (segment === "*") return ".*";
    const param = /^:\w+(?:\{(.+)\})?$/.exec(segment);
    if (param) return param[1] ? `(?:${param[1]})` : "[^/]+";
    return segment.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
  });
  return new RegExp(`^${segments.join("/")}/?$`);
}

function allowedMethods(app: Hono, path: string): string[] {
  const methods = new Set<string>();
  for (const route of app.routes) {
    if (route.method !== "ALL" && pathPattern(route.path).test(path)) methods.add(route.method);
  }
  if (methods.has("GET")) methods.add("HEAD");
  return [...methods];
}

/** A route's name as users read it: `/v1/models/{model}` for the router's `/v1/models/:model{.+}`. */
function routeName(path: string): string {
  return path.split("/").map((segment) => segment.replace(/^:(\w+)(?:\{.+\})?$/, "{$1}")).join("/");
}

/** The name of the route `path` belongs to, or "unmatched": a metrics label with a bounded set of values. */
function routeLabeler(app: Hono): (method: string, path: string) => string {
  let patterns: [RegExp, string][] | null = null;
  return (_method, path) => {
    patterns ??= [...new Set(app.routes.filter((r) => r.method !== "ALL").map((r) => r.path))]
      .map((p) => [pathPattern(p), routeName(p)]);
    return patterns.find(([pattern]) => pattern.test(path))?.[1] ?? "unmatched";
  };
}

/** The server's HTTP app: a Hono app whose `fetch` serves the OpenAI-compatible API. */
export function createApp(deps: AppDeps & OperationsDeps): Hono {
  const app = new Hono({ strict: false });
  const maxBodyBytes = deps.maxBodyBytes ?? DEFAULT_MAX_BODY_BYTES;

  app.onError((err, c) => {
    // A body that could not be read because the client hung up is the client's doing, not a server error.
    const res = errorResponse(c.req.raw.signal.aborted ? new ClientClosedError() : err);
    if (err instanceof ServiceUnavailableError) res.headers.set("retry-after", String(err.retryAfterSeconds));
    return res;
  });
  app.notFound((c) => {
    const allowed = allowedMethods(app, c.req.path);
    const err = allowed.length > 0
      ? new MethodNotAllowedError(c.req.method, c.req.path, allowed)
      : new RouteNotFoundError(c.req.method, c.req.path);
    return errorResponse(err);
  });

  if (deps.allowedOrigins?.length) {
    const origin = deps.allowedOrigins.includes("*") ? "*" : [...deps.allowedOrigins];
    app.use("*", cors({ origin, exposeHeaders: ["x-request-id", "retry-after"] }));
  }
  app.use("*", operations({ tracker: deps.tracker, metrics: deps.metrics, log: deps.requestLog, routeOf: routeLabeler(app) }));
  // With an admin key the control routes take that key instead of the API key.
  const adminKey = deps.control && deps.adminApiKey ? deps.adminApiKey : null;
  // Scrapers read /metrics without a key, as vLLM's do, unless --metrics-api-key-required.
  const metricsOpen = deps.metrics && !deps.metricsApiKeyRequired;
  const open = [...(adminKey ? CONTROL_PATHS : []), ...(metricsOpen ? [METRICS_PATH] : [])];
  if (deps.apiKey) app.use("*", requireApiKey(deps.apiKey, open));
  app.use("*", readBody(maxBodyBytes));

  app.route("/", healthRoutes(deps));
  app.route("/", modelRoutes(deps));
  app.route("/", tokenizeRoutes(deps));
  app.route("/", chatCompletionRoutes(deps));
  app.route("/", completionRoutes(deps));
  app.route("/", responseRoutes(deps));
  app.route("/", tokenRoutes(deps));
  app.route("/", sglangRoutes(deps));
  if (deps.metrics) {
    app.route("/", metricsRoutes(deps.metrics, deps.engineSnapshot ?? (() => null), deps.cacheConfig ?? null));
  }
  app.route("/", versionRoutes(
    () => deps.control?.policyVersion ?? deps.engine?.policyVersion ?? 0,
    () => deps.control?.weightVersion ?? deps.engine?.weightVersionOf?.(deps.engine.policyVersion) ?? null,
  ));
  if (deps.control) {
    app.route("/", controlRoutes(deps.control, adminKey ? requireApiKey(adminKey) : null, deps.metrics ?? null));
  }
  return app;
}
