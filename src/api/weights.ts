/**
 * The weight API over HTTP, in vLLM's and SGLang's names, over the engine's refit (EngineControl.updateWeights).
 *
 * vLLM's phased routes with its disk backend: POST /init_weight_transfer_engine {init_info}, /start_weight_update,
 * /update_weights {update_info: {path}} (and gym-edge's own {path, mode, policy_version}), /finish_weight_update
 * {weight_version}, /update_weight_version {new_version}, GET /weight_info, GET /get_world_size, and the weight
 * checker, POST /weight_checker {action: checksum|compare|reset} (digests: model/weight-checksums.ts; reset serves
 * the builder's random weights of the served architecture). A refit loads a whole weight set into a new session, so
 * /update_weights swaps the weights as it answers, inside a start/finish pair or not; finish names them.
 *
 * SGLang's POST /update_weights_from_disk {model_path, weight_version, abort_all_requests, flush_cache} answers
 * {success, message, num_paused_requests}, and GET /get_weight_version (and /weight_version) {weight_version}.
 */
import { type Context, Hono } from "hono";
import { z } from "zod";
import { ControlError, type EngineControl, REFIT_MODES, type RefitMode, type RefitResult } from "../engine/control.ts";
import type { ServingMetrics } from "../metrics/serving.ts";
import { compareDigests } from "../model/weight-checksums.ts";
import { optionalJson } from "./body.ts";
import { errorPayload } from "./errors.ts";
import { httpErrorOf } from "./operations.ts";

/** What the weight routes drive (an EngineControl). */
export type WeightPlane = Pick<
  EngineControl,
  | "policyVersion"
  | "weightVersion"
  | "updateWeights"
  | "abortAll"
  | "setWeightVersion"
  | "startWeightUpdate"
  | "finishWeightUpdate"
  | "weightChecksums"
  | "resetWeights"
>;

/** The weight routes' paths (guarded and switched off with the rest of the control plane). */
export const WEIGHT_PATHS = [
  "/update_weights",
  "/update_weights_from_disk",
  "/init_weight_transfer_engine",
  "/start_weight_update",
  "/finish_weight_update",
  "/update_weight_version",
  "/weight_info",
  "/get_weight_version",
  "/weight_version",
  "/weight_checker",
  "/get_world_size",
] as const;

/** A trainer's name for a weight set. */
const WeightVersion = z.string().max(4096);

/** gym-edge's own refit fields, beside vLLM's and SGLang's. */
const RefitFields = {
  mode: z.enum(REFIT_MODES).default("finish"),
  policy_version: z.number().int().min(0).max(Number.MAX_SAFE_INTEGER).optional(),
  weight_version: WeightVersion.nullable().optional(),
};

const PATH_NEEDED = '`update_info.path` is required: {"update_info": {"path": <a model directory, checkpoint ' +
  "directory or .onnx file>}}; gym-edge loads weights from disk, as vLLM's disk backend";

/** vLLM's {update_info: {path}}, or gym-edge's {path} (and SGLang's model_path), with the refit fields. */
const UpdateWeightsRequest = z.object({
  update_info: z.object({ path: z.string({ error: PATH_NEEDED }).min(1) }, { error: PATH_NEEDED }).optional(),
  path: z.string().min(1).optional(),
  model_path: z.string().min(1).optional(),
  ...RefitFields,
}).refine((r) => r.update_info !== undefined || r.path !== undefined || r.model_path !== undefined, {
  message: PATH_NEEDED,
  path: ["update_info"],
});

/** SGLang's UpdateWeightFromDiskReqInput (gym-edge's `path` kept as another spelling of model_path). */
const UpdateFromDiskRequest = z.object({
  model_path: z.string().min(1).optional(),
  path: z.string().min(1).optional(),
  abort_all_requests: z.boolean().default(false),
  flush_cache: z.boolean().default(true),
  load_format: z.string().nullable().optional(),
  ...RefitFields,
}).refine((r) => r.model_path !== undefined || r.path !== undefined, {
  message: "`model_path` is required: a model directory, checkpoint directory or .onnx file with the new weights",
  path: ["model_path"],
});

const InitRequest = z.object({
  init_info: z.record(z.string(), z.unknown(), {
    error: "`init_info` is required: an object ({} for the disk backend)",
  }),
});
const FinishRequest = z.object({
  weight_version: WeightVersion.nullable().optional(),
  baseline: z.record(z.string(), z.string()).optional(),
});
const WeightVersionRequest = z.object({
  new_version: WeightVersion,
  abort_all_requests: z.boolean().default(false),
});

const ACTIONS = ["checksum", "compare", "reset"] as const;
const Digests = z.record(z.string(), z.string());
const CheckerRequest = z.object({
  action: z.enum(ACTIONS, {
    error: (issue) => `action must be one of checksum|reset|compare, got ${JSON.stringify(issue.input) ?? "nothing"}`,
  }),
});
const CompareRequest = z.object({
  baseline: z.record(z.string(), z.string(), { error: "action='compare' requires a 'baseline' object" }),
  checksums: z.array(Digests, { error: "'checksums' must be a list of checksum response objects" }).optional(),
});

async function run<T>(operation: () => Promise<T> | T): Promise<T> {
  try {
    return await operation();
  } catch (err) {
    throw httpErrorOf(err);
  }
}

/** The weight routes; the caller guards them. Refits are counted in `metrics`. */
export function weightRoutes(control: WeightPlane, metrics: ServingMetrics | null): Hono {
  const routes = new Hono();

  /** Runs a weight update, counted in the metrics. */
  const refit = async (update: () => Promise<RefitResult>, mode: RefitMode) => {
    const started = performance.now();
    try {
      const result = await run(update);
      metrics?.weightUpdate(mode, true, (performance.now() - started) / 1000);
      return result;
    } catch (err) {
      metrics?.weightUpdate(mode, false, (performance.now() - started) / 1000);
      throw err;
    }
  };
  const refitBody = (result: RefitResult) => ({
    status: "ok",
    policy_version: result.policyVersion,
    weight_version: control.weightVersion,
    previous_policy_version: result.previousPolicyVersion,
    mode: result.mode,
    path: result.source,
    aborted: result.aborted,
    preempted: result.preempted,
    load_ms: Math.round(result.loadMs),
    swap_ms: Math.round(result.swapMs),
  });

  routes.post("/update_weights", async (c) => {
    const request = UpdateWeightsRequest.parse(await optionalJson(c.req.raw));
    const path = (request.update_info?.path ?? request.path ?? request.model_path)!;
    try {
      const { mode, policy_version: version, weight_version: name } = request;
      const result = await refit(() => control.updateWeights(path, mode, version, name), mode);
      return c.json({ message: "Weights updated", ...refitBody(result) });
    } catch (err) {
      // As vLLM's disk backend, a failed load ends the update session it was part of.
      await control.finishWeightUpdate(null);
      throw err;
    }
  });

  routes.post("/update_weights_from_disk", async (c) => {
    try {
      const request = UpdateFromDiskRequest.parse(await optionalJson(c.req.raw));
      // SGLang aborts what is in flight (finish reason abort, tokens kept), then waits for the rest to finish.
      if (request.abort_all_requests) control.abortAll();
      const { mode, policy_version: version, weight_version: name } = request;
      const path = (request.model_path ?? request.path)!;
      const result = await refit(() => control.updateWeights(path, mode, version, name), mode);
      return c.json({
        success: true,
        message: "Succeeded to update model weights.",
        num_paused_requests: result.preempted,
        ...refitBody(result),
      });
    } catch (err) {
      // SGLang's failure shape, with OpenAI's error beside it.
      const { status, body, headers } = errorPayload(httpErrorOf(err));
      const answer = { success: false, message: body.error.message, num_paused_requests: 0, ...body };
      return c.json(answer, status as 400, headers);
    }
  });

  routes.post("/init_weight_transfer_engine", async (c) => {
    // The disk backend needs no rendezvous: init_info is read and has nothing to set up.
    InitRequest.parse(await optionalJson(c.req.raw));
    return c.json({ message: "Weight transfer initialized" });
  });

  routes.post("/start_weight_update", async (c) => {
    await optionalJson(c.req.raw);
    await run(() => control.startWeightUpdate());
    return c.json({ message: "Weight update started" });
  });

  routes.post("/finish_weight_update", async (c) => {
    const request = FinishRequest.parse(await optionalJson(c.req.raw));
    if (request.baseline) {
      const current = await run(() => control.weightChecksums(true));
      const { match, mismatches } = compareDigests([request.baseline, current]);
      if (!match) {
        await control.finishWeightUpdate(null);
        const shown = mismatches.slice(0, 5).join(", ") + (mismatches.length > 5 ? ", ..." : "");
        throw httpErrorOf(
          new ControlError(
            "conflict",
            `the served weights do not match the baseline: ${mismatches.length} tensors differ (${shown})`,
          ),
        );
      }
    }
    await run(() => control.finishWeightUpdate(request.weight_version));
    return c.json({ message: "Weight update finished" });
  });

  routes.post("/update_weight_version", async (c) => {
    const request = WeightVersionRequest.parse(await optionalJson(c.req.raw));
    if (request.abort_all_requests) control.abortAll();
    const name = await run(() => control.setWeightVersion(request.new_version));
    return c.json({ success: true, message: `Weight version updated to ${name}`, new_version: name });
  });

  // vLLM's count of the ranks a trainer's transfer group must reach (with or without data parallelism): one here.
  routes.get("/get_world_size", (c) => c.json({ world_size: 1 }));

  const weightVersion = (c: Context) => c.json({ weight_version: control.weightVersion });
  routes.get("/weight_info", weightVersion);
  routes.get("/get_weight_version", weightVersion);
  routes.get("/weight_version", weightVersion);

  routes.post("/weight_checker", async (c) => {
    const body = await optionalJson(c.req.raw);
    const { action } = CheckerRequest.parse(body);
    if (action === "reset") {
      await refit(() => control.resetWeights(), "finish");
      return c.json({ status: "reset" });
    }
    // The engine's state is checked before the action's own fields, as vLLM does.
    // Digests are kept per load: hashing before reading the baseline costs a malformed request nothing more.
    const checksums = await run(() => control.weightChecksums());
    const compare = action === "compare" ? CompareRequest.parse(body) : null;
    if (!compare) return c.json({ checksums });
    return c.json(compareDigests([compare.baseline, checksums, ...compare.checksums ?? []]));
  });

  return routes;
}
