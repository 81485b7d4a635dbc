/** The built-in model: the `tiny` preset with seed 0, built on first use into the cache and reused after. */
import { mkdirSync, mkdtempSync, renameSync, rmSync } from "node:fs";
import { homedir } from "node:os";
import * as path from "node:path";
import { buildModel, isBuiltModel } from "./builder/build.ts";

/** The preset and seed of the built-in model. */
export const BUILTIN_MODEL = { preset: "tiny", seed: 0 } as const;
/** The name the built-in model is served as (when no --served-model-name says otherwise). */
export const BUILTIN_MODEL_NAME = "gym-edge/tiny";

/** The cache directory: $GYM_EDGE_CACHE, else $XDG_CACHE_HOME/gym-edge, else ~/.cache/gym-edge. */
export function defaultCacheDir(env: Record<string, string | undefined>): string {
  if (env.GYM_EDGE_CACHE) return path.resolve(env.GYM_EDGE_CACHE);
  if (env.XDG_CACHE_HOME) return path.join(path.resolve(env.XDG_CACHE_HOME), "gym-edge");
  return path.join(env.HOME || homedir(), ".cache", "gym-edge");
}

/** Where the built-in model is (or will be) under `cacheDir`. */
export function builtinModelDir(cacheDir: string): string {
  return path.join(path.resolve(cacheDir), "models", BUILTIN_MODEL.preset);
}

/** The built-in model's directory under `cacheDir`, building it first if no complete build is there. */
export async function ensureBuiltinModel(cacheDir: string): Promise<string> {
  const dir = builtinModelDir(cacheDir);
  if (isBuiltModel(dir, BUILTIN_MODEL)) return dir;
  mkdirSync(path.dirname(dir), { recursive: true });
  // Build beside the target and rename into place, so a second process never sees half a model.
  const staging = mkdtempSync(path.join(path.dirname(dir), `.${BUILTIN_MODEL.preset}-building-`));
  try {
    await buildModel({ ...BUILTIN_MODEL, out: staging });
    try {
      renameSync(staging, dir);
    } catch (err) {
      // Another process got there first: take its build. Otherwise the target is an incomplete leftover.
      if (isBuiltModel(dir, BUILTIN_MODEL)) return dir;
      if (!isExists(err)) throw err;
      rmSync(dir, { recursive: true, force: true });
      renameSync(staging, dir);
    }
  } finally {
    rmSync(staging, { recursive: true, force: true });
  }
  return dir;
}

function isExists(err: unknown): boolean {
  const code = (err as { code?: string }).code;
  return code === "ENOTEMPTY" || code === "EEXIST" || code === "EPERM";
}
