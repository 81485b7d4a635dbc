/** GET /v1/models and GET /v1/models/{model}: the served model under each of its names, in vLLM's model card shape. */
import { Hono } from "hono";
import type { AppDeps } from "./deps.ts";
import { ModelNotFoundError } from "./errors.ts";
import type { ModelCard, ModelList } from "./schemas.ts";

/** The names /v1/models lists: the served names, the first being the one responses carry. */
function servedNames(deps: AppDeps): readonly string[] {
  return deps.servedModelNames?.length ? deps.servedModelNames : [deps.servedModelName];
}

/**
 * Throws a 404 unless `model` is absent, a served name or where the model came from (NeMo RL's vLLM servers answer
 * both the served name and the model path, and clients send either).
 */
export function assertServedModel(deps: AppDeps, model: string | null | undefined): void {
  if (model != null && model !== deps.modelRoot && !servedNames(deps).includes(model)) throw new ModelNotFoundError(model);
}

/** The model routes. */
export function modelRoutes(deps: AppDeps): Hono {
  const created = Math.floor(Date.now() / 1000);
  // As vLLM: one card per served name, each with the model's path as root.
  const cards: ModelCard[] = servedNames(deps).map((id) => ({
    id,
    object: "model",
    created,
    owned_by: "gym-edge",
    root: deps.modelRoot ?? deps.servedModelName,
    parent: null,
    max_model_len: deps.maxModelLen,
    permission: [],
  }));
  const routes = new Hono();
  routes.get("/v1/models", (c) => c.json({ object: "list", data: cards } satisfies ModelList));
  // Hub ids hold a slash ("Qwen/Qwen3-0.6B"), so the name is the rest of the path.
  routes.get("/v1/models/:model{.+}", (c) => {
    const model = c.req.param("model");
    assertServedModel(deps, model);
    // The model path is no card of its own: it answers with the first served name's.
    return c.json(cards.find((card) => card.id === model) ?? cards[0]);
  });
  return routes;
}
