/**
 * Builds a model folder in the layout transformers.js loads: config.json, generation_config.json,
 * tokenizer files, onnx/model*.onnx (+ .onnx_data). Every file is written atomically and a build
 * record is written last, so a folder without a valid record is never taken for a complete model.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { writeFileAtomic } from "./atomic-file.ts";
import { archFromConfig } from "./arch.ts";
import { emitStandardDecoder } from "./decoder.ts";
import { isCurrentEngineGraph, writeEngineGraph } from "./engine-decoder.ts";
import { generationConfig, modelConfig, tokenizerFiles } from "./hf-files.ts";
import type { WeightDtype } from "./layers.ts";
import { writeOnnx } from "./onnx-write.ts";
import { getPreset, type Preset } from "./presets.ts";
import { randomWeights } from "./random-weights.ts";

/** Weight formats the builder writes. */
export type BuildDtype = WeightDtype;

/** The ONNX file of each dtype, as transformers.js names them. */
export const ONNX_FILES: Record<BuildDtype, string> = {
  fp32: "onnx/model.onnx",
  fp16: "onnx/model_fp16.onnx",
  q8: "onnx/model_quantized.onnx",
  q4: "onnx/model_q4.onnx",
};

/** The engine-layout graph of each dtype (engine-decoder.ts), sharing the weights of ONNX_FILES[dtype]. */
export const ENGINE_FILES: Record<BuildDtype, string> = {
  fp32: "onnx/engine.onnx",
  fp16: "onnx/engine_fp16.onnx",
  q8: "onnx/engine_quantized.onnx",
  q4: "onnx/engine_q4.onnx",
};

/** The build record; its presence (with every file it lists) marks a complete model folder. */
export const BUILD_RECORD = "gym-edge-build.json";

/** Options of buildModel. */
export interface BuildOptions {
  /** A preset name ("tiny", "tiny-llama3", "bench-135m", "qwen3-0.6b") or a Preset. */
  preset: string | Preset;
  /** The model folder to write. */
  out: string;
  /** Seed of the random weights (a non-negative integer); the same seed gives the same bytes. */
  seed?: number;
  /** One or more weight formats; defaults to fp32. */
  dtype?: BuildDtype | BuildDtype[];
  /** Told each weights file's bytes written so far and their total, as it is written. */
  onProgress?: (file: string, written: number, total: number) => void;
}

/** What a build wrote: the content of the build record. */
export interface BuiltModel {
  dir: string;
  preset: string;
  seed: number;
  dtypes: BuildDtype[];
  /** Relative file path -> size in bytes. */
  files: Record<string, number>;
}

function dtypesOf(dtype: BuildDtype | BuildDtype[] | undefined): BuildDtype[] {
  const list = dtype === undefined ? ["fp32" as const] : Array.isArray(dtype) ? dtype : [dtype];
  for (const d of list) if (!(d in ONNX_FILES)) throw new Error(`unknown dtype "${d}" (fp32, fp16, q8, q4)`);
  return [...new Set(list)];
}

/** Reads the build record of `dir`, if it has a valid one. */
export function readBuildRecord(dir: string): BuiltModel | undefined {
  try {
    const record = JSON.parse(fs.readFileSync(path.join(dir, BUILD_RECORD), "utf8"));
    if (typeof record.preset !== "string" || typeof record.files !== "object") return undefined;
    return { ...record, dir };
  } catch {
    return undefined;
  }
}

/** True when `dir` holds a complete built model (optionally of the given preset, seed and dtypes). */
export function isBuiltModel(
  dir: string,
  expect: { preset?: string; seed?: number; dtype?: BuildDtype | BuildDtype[] } = {},
): boolean {
  const record = readBuildRecord(dir);
  if (!record) return false;
  if (expect.preset !== undefined && record.preset !== expect.preset) return false;
  if (expect.seed !== undefined && record.seed !== expect.seed) return false;
  if (expect.dtype !== undefined && !dtypesOf(expect.dtype).every((d) => record.dtypes.includes(d))) return false;
  return Object.entries(record.files).every(([file, size]) => {
    try {
      return fs.statSync(path.join(dir, file)).size === size;
    } catch {
      return false;
    }
  });
}

/** Writes a complete model folder; dtypes already built there with the same preset and seed are kept. */
export async function buildModel(options: BuildOptions): Promise<BuiltModel> {
  const preset = typeof options.preset === "string" ? getPreset(options.preset) : options.preset;
  const seed = options.seed ?? 0;
  if (!Number.isSafeInteger(seed) || seed < 0) throw new Error(`seed must be a non-negative integer, got ${seed}`);
  const dtypes = dtypesOf(options.dtype);
  const dir = path.resolve(options.out);

  const previous = readBuildRecord(dir);
  const same = previous && previous.preset === preset.name && previous.seed === seed;
  const files: Record<string, number> = same ? { ...previous.files } : {};
  // Unrecord first: from here until the new record lands, the folder reads as incomplete.
  fs.rmSync(path.join(dir, BUILD_RECORD), { force: true });
  if (!same) fs.rmSync(path.join(dir, "onnx"), { recursive: true, force: true });
  fs.mkdirSync(path.join(dir, "onnx"), { recursive: true });

  const json = (name: string, value: unknown) => {
    const text = JSON.stringify(value, null, 2) + "\n";
    writeFileAtomic(path.join(dir, name), text);
    files[name] = new TextEncoder().encode(text).byteLength;
  };
  json("config.json", modelConfig(preset));
  json("generation_config.json", generationConfig(preset));
  const { tokenizer, tokenizerConfig } = tokenizerFiles(preset);
  writeFileAtomic(path.join(dir, "tokenizer.json"), tokenizer);
  files["tokenizer.json"] = tokenizer.byteLength;
  writeFileAtomic(path.join(dir, "tokenizer_config.json"), tokenizerConfig);
  files["tokenizer_config.json"] = new TextEncoder().encode(tokenizerConfig).byteLength;

  const weights = randomWeights(preset.arch, seed);
  for (const dtype of dtypes) {
    const model = emitStandardDecoder(preset.arch, { dtype, weights });
    const onnxPath = path.join(dir, ONNX_FILES[dtype]);
    const onProgress = options.onProgress && ((done: number, total: number) =>
      options.onProgress!(`${ONNX_FILES[dtype]}_data`, done, total));
    const written = await writeOnnx(onnxPath, model, { externalData: preset.externalData, onProgress });
    for (const [name, size] of Object.entries(written)) files[`onnx/${name}`] = size;
    const enginePath = path.join(dir, ENGINE_FILES[dtype]);
    files[ENGINE_FILES[dtype]] = writeEngineGraph(onnxPath, enginePath, preset.arch, dtype);
  }

  const allDtypes = [...new Set([...(same ? previous.dtypes : []), ...dtypes])];
  const record = { preset: preset.name, seed, dtypes: allDtypes, files };
  writeFileAtomic(path.join(dir, BUILD_RECORD), JSON.stringify(record, null, 2) + "\n");
  return { ...record, dir };
}

/** Returns the model in `out`, building it first unless a complete one with this preset and seed is there. */
export async function ensureModel(options: BuildOptions): Promise<BuiltModel> {
  const preset = typeof options.preset === "string" ? options.preset : options.preset.name;
  const expect = { preset, seed: options.seed ?? 0, dtype: options.dtype ?? "fp32" };
  if (isBuiltModel(options.out, expect)) return readBuildRecord(path.resolve(options.out))!;
  return await buildModel(options);
}

/**
 * The engine graph of `dtype` in `dir`, written from the standard graph's weights when it is missing or stale
 * (a folder built before engine graphs existed or by an older emitter, or a standard graph newer than it).
 * Returns its path.
 */
export function ensureEngineGraph(dir: string, dtype: BuildDtype = "fp32"): string {
  const enginePath = path.join(dir, ENGINE_FILES[dtype]);
  const standardPath = path.join(dir, ONNX_FILES[dtype]);
  const record = readBuildRecord(dir);
  const stat = (file: string) => fs.statSync(file, { throwIfNoEntry: false });
  const engine = stat(enginePath);
  const current = engine !== undefined &&
    (record
      ? record.files[ENGINE_FILES[dtype]] === engine.size
      : engine.mtimeMs >= (stat(standardPath)?.mtimeMs ?? Infinity));
  if (current && isCurrentEngineGraph(enginePath)) return enginePath;
  const arch = archFromConfig(JSON.parse(fs.readFileSync(path.join(dir, "config.json"), "utf8")));
  const size = writeEngineGraph(standardPath, enginePath, arch, dtype);
  if (record && record.dtypes.includes(dtype)) {
    // The folder stays complete: the new file joins its record.
    const { dir: _dir, ...content } = record;
    const updated = { ...content, files: { ...content.files, [ENGINE_FILES[dtype]]: size } };
    writeFileAtomic(path.join(dir, BUILD_RECORD), JSON.stringify(updated, null, 2) + "\n");
  }
  return enginePath;
}
