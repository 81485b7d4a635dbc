/**
 * The control plane over HTTP, for the trainer: the weight API (refit, weight versions, checksums: weights.ts),
 * /sleep, /wake_up, /reset_prefix_cache, GET /is_sleeping; and GET /version, always on, with the policy version.
 * Names and shapes follow vLLM's (sleep level as a query parameter or a field).
 *
 * Pausing generation: vLLM's POST /pause (?mode=abort|wait|keep), /resume, GET /is_paused, and SGLang's
 * /pause_generation ({"mode": "abort"|"retract"|"in_place"}), /continue_generation. Aborting requests by id:
 * POST /abort_requests {"request_ids": [...]} (empty: all) and SGLang's /abort_request {"rid", "abort_all"}.
 */
import { Hono, type MiddlewareHandler } from "hono";
import { z } from "zod";
import type { ControlStatus, EngineControl } from "../engine/control.ts";
import type { PauseMode } from "../engine/control.ts";
import type { ServingMetrics } from "../metrics/serving.ts";
import { VERSION } from "../version.ts";
import { optionalJson } from "./body.ts";
import { httpErrorOf } from "./operations.ts";
import { abortNamed } from "./request-names.ts";
import { WEIGHT_PATHS, type WeightPlane, weightRoutes } from "./weights.ts";

/** What the control routes drive (an EngineControl). */
export type ControlPlane =
  & Pick<EngineControl, "policyVersion" | "status" | "sleep" | "wakeUp" | "resetPrefixCache" | "pause" | "resume" | "abortAll">
  & WeightPlane;

/** Paths of the routes that change the server's state (guarded by --admin-api-key, off with --disable-control-plane). */
export const CONTROL_PATHS = [
  ...WEIGHT_PATHS,
  "/sleep",
  "/wake_up",
  "/is_sleeping",
  "/reset_prefix_cache",
  "/pause",
  "/resume",
  "/is_paused",
  "/abort_requests",
  "/pause_generation",
  "/continue_generation",
  "/abort_request",
] as const;

// The level comes as a JSON number or as vLLM's query string ("?level=2"); nothing else is coerced.
const SleepLevel = z.union([z.number(), z.string().regex(/^\d+$/).transform(Number)]).pipe(z.union([z.literal(1), z.literal(2)]));
const SleepRequest = z.object({
  level: SleepLevel.default(1),
  mode: z.enum(["finish", "abort"]).default("finish"),
});

// vLLM's booleans come as query strings, spelled as pydantic reads them ("true", "1", "yes", "on", ... any case); a
// JSON body may send real ones.
const TRUE = ["true", "1", "yes", "on", "t", "y"];
const FALSE = ["false", "0", "no", "off", "f", "n"];
const Flag = z.union([
  z.boolean(),
  z.string().transform((v) => v.toLowerCase()).pipe(z.enum([...TRUE, ...FALSE] as [string, ...string[]]))
    .transform((v) => TRUE.includes(v)),
]);

/** vLLM's /pause: `mode`, and its deprecated `wait_for_inflight_requests` (true: mode wait) and `clear_cache`. */
const PauseRequest = z.object({
  mode: z.enum(["abort", "wait", "keep"]).optional(),
  wait_for_inflight_requests: Flag.default(false),
  clear_cache: Flag.default(true),
});

/** SGLang's /pause_generation: retract drops the KV of the requests in flight, in_place keeps it. */
const SGLANG_PAUSE: Record<string, PauseMode> = { abort: "abort", retract: "retract", in_place: "keep" };
const PauseGenerationRequest = z.object({ mode: z.enum(["abort", "retract", "in_place"]).default("abort") });

const AbortRequestsRequest = z.object({ request_ids: z.array(z.string()).max(100_000) });
const AbortRequestRequest = z.object({ rid: z.string().default(""), abort_all: z.boolean().default(false) });

function statusBody(s: ControlStatus, weightVersion: string | null) {
  return {
    policy_version: s.policyVersion,
    weight_version: weightVersion,
    is_sleeping: s.sleepLevel > 0,
    sleep_level: s.sleepLevel,
  };
}

/** Runs a control operation with its errors as HTTP errors. */
async function run<T>(operation: () => Promise<T> | T): Promise<T> {
  try {
    return await operation();
  } catch (err) {
    throw httpErrorOf(err);
  }
}

/** GET /version: the server's version and the policy version serving now (and the trainer's name of its weights). */
export function versionRoutes(policyVersion: () => number, weightVersion: () => string | null = () => null): Hono {
  const routes = new Hono();
  routes.get("/version", (c) => c.json({ version: VERSION, policy_version: policyVersion(), weight_version: weightVersion() }));
  return routes;
}

/** The control routes; `guard` (an admin key check) runs before each; weight updates are counted in `metrics`. */
export function controlRoutes(control: ControlPlane, guard: MiddlewareHandler | null, metrics: ServingMetrics | null): Hono {
  const routes = new Hono();
  if (guard) for (const path of CONTROL_PATHS) routes.use(path, guard);

  routes.route("/", weightRoutes(control, metrics));

  routes.post("/sleep", async (c) => {
    const request = SleepRequest.parse({ ...c.req.query(), ...await optionalJson(c.req.raw) });
    return c.json(statusBody(await run(() => control.sleep(request.level, request.mode)), control.weightVersion));
  });
  routes.post("/wake_up", async (c) => {
    await optionalJson(c.req.raw);
    return c.json(statusBody(await run(() => control.wakeUp()), control.weightVersion));
  });
  routes.get("/is_sleeping", (c) => c.json(statusBody(control.status(), control.weightVersion)));
  routes.post("/pause", async (c) => {
    const request = PauseRequest.parse({ ...c.req.query(), ...await optionalJson(c.req.raw) });
    const mode = request.mode ?? (request.wait_for_inflight_requests ? "wait" : "abort");
    await run(() => control.pause(mode, request.clear_cache));
    return c.json({ status: "paused" });
  });
  routes.post("/resume", async (c) => {
    await optionalJson(c.req.raw);
    await run(() => control.resume());
    return c.json({ status: "resumed" });
  });
  routes.get("/is_paused", (c) => c.json({ is_paused: control.status().paused !== null }));
  routes.post("/pause_generation", async (c) => {
    const request = PauseGenerationRequest.parse(await optionalJson(c.req.raw));
    await run(() => control.pause(SGLANG_PAUSE[request.mode], false));
    return c.json({ message: "Generation paused successfully.", status: "ok" });
  });
  routes.post("/continue_generation", async (c) => {
    await optionalJson(c.req.raw);
    await run(() => control.resume());
    return c.json({ message: "Generation continued successfully.", status: "ok" });
  });
  routes.post("/abort_requests", async (c) => {
    const { request_ids: ids } = AbortRequestsRequest.parse(await optionalJson(c.req.raw));
    if (ids.length === 0) return c.json({ status: "ok", aborted: control.abortAll(), not_found: [] });
    const found = abortNamed(ids);
    return c.json({ status: "ok", aborted: found.length, not_found: ids.filter((id) => !found.includes(id)) });
  });
  routes.post("/abort_request", async (c) => {
    const request = AbortRequestRequest.parse(await optionalJson(c.req.raw));
    if (request.abort_all) control.abortAll();
    else if (request.rid !== "") abortNamed([request.rid]);
    return c.body(null, 200);
  });
  routes.post("/reset_prefix_cache", async (c) => {
    await optionalJson(c.req.raw);
    control.resetPrefixCache();
    return c.json({ status: "ok" });
  });
  return routes;
}
