/** Which files of a model directory hold the ONNX graph for a dtype, checked before anything is loaded. */
import { existsSync, readdirSync, statSync } from "node:fs";
import * as path from "node:path";
import { ModelLoadError } from "../errors.ts";

/** Weight precisions the server can be asked for. */
export type ModelDtype = "fp32" | "fp16" | "q8" | "q4";

/** The file-name suffix of each dtype, as transformers.js names them (onnx/model{suffix}.onnx). */
export const DTYPE_SUFFIX: Record<ModelDtype, string> = { fp32: "", fp16: "_fp16", q8: "_quantized", q4: "_q4" };

/** The ONNX graph of one dtype and its external-data files, all absolute paths. */
export interface OnnxFiles {
  model: string;
  /** Weight files the graph refers to (model.onnx_data, model.onnx_data_1, ...), by their name in the graph. */
  externalData: { name: string; path: string }[];
}

/** The ONNX file name of `dtype` inside onnx/. */
export function onnxFileName(dtype: ModelDtype): string {
  return `model${DTYPE_SUFFIX[dtype]}.onnx`;
}

/** The dtypes whose ONNX file is present in `dir`/onnx. */
export function dtypesIn(dir: string): ModelDtype[] {
  const names = new Set(safeList(path.join(dir, "onnx")));
  return (Object.keys(DTYPE_SUFFIX) as ModelDtype[]).filter((d) => names.has(onnxFileName(d)));
}

/** Checks that `dir` is a model directory with config, tokenizer and the `dtype` graph; throws ModelLoadError. */
export function checkModelDir(dir: string, dtype: ModelDtype): OnnxFiles {
  if (!existsSync(dir)) throw new ModelLoadError(dir, `model directory ${dir} does not exist`);
  if (!statSync(dir).isDirectory()) throw new ModelLoadError(dir, `model path ${dir} is not a directory`);
  const missing = ["config.json", "tokenizer.json", "tokenizer_config.json"].filter((f) =>
    !existsSync(path.join(dir, f))
  );
  if (missing.length > 0) {
    throw new ModelLoadError(dir, `model directory ${dir} lacks ${missing.join(", ")}`);
  }
  return onnxFilesIn(dir, dtype);
}

/** The `dtype` graph in `dir`/onnx and its external data; throws ModelLoadError naming what is there instead. */
export function onnxFilesIn(dir: string, dtype: ModelDtype): OnnxFiles {
  const onnxDir = path.join(dir, "onnx");
  const file = onnxFileName(dtype);
  const model = path.join(onnxDir, file);
  if (!existsSync(model)) {
    const present = dtypesIn(dir);
    const hint = present.length > 0 ? `; dtypes present: ${present.join(", ")}` : "; it has no onnx/model*.onnx at all";
    throw new ModelLoadError(model, `model directory ${dir} lacks onnx/${file} (dtype ${dtype})${hint}`);
  }
  // transformers.js names external data <file>_data, then <file>_data_1, <file>_data_2, ...
  const externalData = safeList(onnxDir)
    .filter((name) => name === `${file}_data` || name.startsWith(`${file}_data_`))
    .sort()
    .map((name) => ({ name, path: path.join(onnxDir, name) }));
  return { model, externalData };
}

function safeList(dir: string): string[] {
  try {
    return readdirSync(dir);
  } catch {
    return [];
  }
}
