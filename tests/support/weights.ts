/** Refit targets for tests: the tiny model with other seeds, and weights of another shape, built once and shared. */
import * as fs from "node:fs";
import * as path from "node:path";
import { buildModel, isBuiltModel } from "../../src/model/builder/build.ts";
import { getPreset, type Preset } from "../../src/model/builder/presets.ts";
import { testCacheDir } from "./served.ts";

async function ensureBuilt(name: string, preset: Preset, seed: number): Promise<string> {
  const dir = path.join(testCacheDir(), "models", name);
  if (isBuiltModel(dir, { preset: preset.name, seed })) return dir;
  fs.mkdirSync(path.dirname(dir), { recursive: true });
  // Test files run in parallel: build beside the target and rename, and take another process's build if it won.
  const staging = fs.mkdtempSync(path.join(path.dirname(dir), `.${name}-building-`));
  try {
    await buildModel({ preset, seed, out: staging });
    try {
      fs.renameSync(staging, dir);
    } catch (err) {
      if (!isBuiltModel(dir, { preset: preset.name, seed })) throw err;
    }
  } finally {
    fs.rmSync(staging, { recursive: true, force: true });
  }
  return dir;
}

/** The tiny model's architecture with the weights of `seed` (the built-in model is seed 0). */
export function tinyWithSeed(seed: number): Promise<string> {
  return ensureBuilt(`tiny-seed${seed}`, getPreset("tiny"), seed);
}

/** A model like tiny but with a wider MLP: same config keys, weights of other shapes. */
export function tinyWiderMlp(): Promise<string> {
  const tiny = getPreset("tiny");
  return ensureBuilt("tiny-wide-mlp", { ...tiny, name: "tiny-wide-mlp", arch: { ...tiny.arch, intermediateSize: 192 } }, 0);
}
