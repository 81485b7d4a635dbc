/** Readiness: GET /health, and GET / and GET /v1 for clients that poll the base URL. */
import { Hono } from "hono";
import type { AppDeps } from "./deps.ts";
import { NotReadyError } from "./errors.ts";
import type { HealthResponse } from "./schemas.ts";

/** The readiness routes: 200 once the model is loaded, 503 before. */
export function healthRoutes(deps: AppDeps): Hono {
  const routes = new Hono();
  const ready = (): HealthResponse => {
    if (!deps.isReady()) throw new NotReadyError();
    return { status: "ok" };
  };
  routes.get("/health", (c) => c.json(ready()));
  routes.get("/", (c) => c.json({ ...ready(), model: deps.servedModelName }));
  routes.get("/v1", (c) => c.json({ ...ready(), model: deps.servedModelName }));
  return routes;
}
