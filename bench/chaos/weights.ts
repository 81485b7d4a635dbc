/**
 * The two weight folders the chaos test refits between: the served model's, and the same preset built with the
 * next seed into the cache (built beside its target and renamed, so a test building the same folder meanwhile is
 * safe: the tests' `tiny-seed1` is the same folder).
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { buildModel, isBuiltModel, readBuildRecord } from "../../src/model/builder/build.ts";
import { ensureBuiltinModel } from "../../src/model/builtin.ts";

/** The served model's folder: `model` or the built-in one (built on first use). */
export async function servedWeights(model: string | null, cacheDir: string): Promise<string> {
  return model ? path.resolve(model) : await ensureBuiltinModel(cacheDir);
}

/**
 * A second folder of the same architecture: `explicit` if given; else, for a model the builder wrote, its preset
 * with the next seed under `<cacheDir>/models/<preset>-seed<N>`; else null (the refits reload the served weights).
 */
export async function otherWeights(served: string, cacheDir: string, explicit: string | null): Promise<string | null> {
  if (explicit) return path.resolve(explicit);
  const record = readBuildRecord(served);
  if (!record) return null;
  const seed = (record.seed ?? 0) + 1;
  const dir = path.join(path.resolve(cacheDir), "models", `${record.preset}-seed${seed}`);
  if (isBuiltModel(dir, { preset: record.preset, seed })) return dir;
  fs.mkdirSync(path.dirname(dir), { recursive: true });
  const staging = fs.mkdtempSync(path.join(path.dirname(dir), `.${record.preset}-seed${seed}-building-`));
  const started = performance.now();
  try {
    await buildModel({ preset: record.preset, seed, out: staging });
    try {
      fs.renameSync(staging, dir);
    } catch (err) {
      if (!isBuiltModel(dir, { preset: record.preset, seed })) throw err;
    }
  } finally {
    fs.rmSync(staging, { recursive: true, force: true });
  }
  console.error(
    `built ${record.preset} seed ${seed} into ${dir} in ${((performance.now() - started) / 1000).toFixed(1)} s`,
  );
  return dir;
}
