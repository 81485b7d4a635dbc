/** GET /v1/models and GET /v1/models/{model}: the one served model, in vLLM's model card shape. */
import { Hono } from "hono";
import type { AppDeps } from "./deps.ts";
import { ModelNotFoundError } from "./errors.ts";
import type { ModelCard, ModelList } from "./schemas.ts";

/** Throws a 404 unless `model` is absent or names the served model. */
export function assertServedModel(deps: AppDeps, model: string | null | undefined): void {
  if (model != null && model !== deps.servedModelName) throw new ModelNotFoundError(model);
}

/** The model routes. */
export function modelRoutes(deps: AppDeps): Hono {
  const created = Math.floor(Date.now() / 1000);
  const card: ModelCard = {
    id: deps.servedModelName,
    object: "model",
    created,
    owned_by: "gym-edge",
    root: deps.modelRoot ?? deps.servedModelName,
    parent: null,
    max_model_len: deps.maxModelLen,
    permission: [],
  };
  const routes = new Hono();
  routes.get("/v1/models", (c) => c.json({ object: "list", data: [card] } satisfies ModelList));
  // Hub ids hold a slash ("Qwen/Qwen3-0.6B"), so the name is the rest of the path.
  routes.get("/v1/models/:model{.+}", (c) => {
    assertServedModel(deps, c.req.param("model"));
    return c.json(card);
  });
  return routes;
}
