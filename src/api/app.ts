/** The HTTP app: middleware, the route families, and every error as OpenAI's JSON. Runs on any runtime's fetch. */
import { Hono } from "hono";
import { bodyLimit } from "hono/body-limit";
import { requireApiKey } from "./auth.ts";
import { chatCompletionRoutes } from "./chat-completions.ts";
import { completionRoutes } from "./completions.ts";
import type { AppDeps } from "./deps.ts";
import { errorResponse, MethodNotAllowedError, PayloadTooLargeError, RouteNotFoundError } from "./errors.ts";
import { healthRoutes } from "./health.ts";
import { modelRoutes } from "./models.ts";
import { responseRoutes } from "./responses.ts";
import { tokenizeRoutes } from "./tokenize.ts";

export type { AppDeps } from "./deps.ts";

const DEFAULT_MAX_BODY_BYTES = 32 * 1024 * 1024;

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

/** The server's HTTP app: a Hono app whose `fetch` serves the OpenAI-compatible API. */
export function createApp(deps: AppDeps): Hono {
  const app = new Hono({ strict: false });
  const maxBodyBytes = deps.maxBodyBytes ?? DEFAULT_MAX_BODY_BYTES;

  app.onError((err) => errorResponse(err));
  app.notFound((c) => {
    const allowed = allowedMethods(app, c.req.path);
    const err = allowed.length > 0
      ? new MethodNotAllowedError(c.req.method, c.req.path, allowed)
      : new RouteNotFoundError(c.req.method, c.req.path);
    return errorResponse(err);
  });

  if (deps.apiKey) app.use("*", requireApiKey(deps.apiKey));
  app.use("*", bodyLimit({ maxSize: maxBodyBytes, onError: () => { throw new PayloadTooLargeError(maxBodyBytes); } }));

  app.route("/", healthRoutes(deps));
  app.route("/", modelRoutes(deps));
  app.route("/", tokenizeRoutes(deps));
  app.route("/", chatCompletionRoutes(deps));
  app.route("/", completionRoutes(deps));
  app.route("/", responseRoutes(deps));
  return app;
}
