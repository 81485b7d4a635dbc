/**
 * New weights for the served model (refit): where they may be read from, and an engine runner over them on the
 * device the model already runs on. They must have the served architecture; the tokenizer stays the served one.
 * Accepted: a model directory (config.json + onnx/model*.onnx, as the builder writes), a Hugging Face checkpoint
 * directory (config.json + safetensors, as trainers save them), or a standard-layout ONNX graph file, with its
 * external data beside it.
 */
import { createHash } from "node:crypto";
import * as fs from "node:fs";
import * as path from "node:path";
import { archFromConfig, type DecoderArch } from "./builder/arch.ts";
import { ENGINE_FILES, ONNX_FILES } from "./builder/build.ts";
import { convertCheckpoint } from "./builder/convert.ts";
import { EngineLayoutError, writeEngineGraph } from "./builder/engine-decoder.ts";
import { emitStandardDecoder } from "./builder/decoder.ts";
import { decodeModel } from "./builder/onnx-read.ts";
import { writeOnnx } from "./builder/onnx-write.ts";
import { randomWeights } from "./builder/random-weights.ts";
import { type Backend, cpuThreadCount } from "./ort/backends.ts";
import type { ModelRunner } from "../engine/model-runner.ts";
import { EngineRunner } from "./runners/engine-runner.ts";
import { openModelRunner, openStandardRunner } from "./runners/open-runner.ts";
import { openOffThread } from "./thread/threaded-runner.ts";
import { hasCheckpoint } from "./sources/safetensors.ts";
import { WeightsError } from "./errors.ts";

export { WeightsError, type WeightsProblem } from "./errors.ts";

function isInside(root: string, candidate: string): boolean {
  const rel = path.relative(root, candidate);
  return rel === "" || (rel !== ".." && !rel.startsWith(".." + path.sep) && !path.isAbsolute(rel));
}

/**
 * The real path (symlinks resolved) of `requested`. With `allowedDir`, a relative path is taken inside it and the
 * result must stay inside it, both as written and once resolved, so neither `..` nor a symlink escapes it.
 */
export function resolveWeightsPath(requested: string, allowedDir: string | null | undefined): string {
  if (requested.trim() === "" || requested.includes("\0")) throw new WeightsError("not_found", "the weights path is empty or invalid");
  if (!allowedDir) {
    try {
      return fs.realpathSync(path.resolve(requested));
    } catch {
      throw new WeightsError("not_found", `no file or directory at ${requested}`);
    }
  }
  const root = fs.realpathSync(path.resolve(allowedDir));
  const forbidden = () => new WeightsError("forbidden", `weights may only be loaded from inside ${allowedDir}; ${requested} is outside it`);
  // Checked before touching the file system, so that a refusal tells nothing about what exists outside.
  const written = path.resolve(root, requested);
  if (!isInside(root, written)) throw forbidden();
  // Likewise a symlink that leads outside is refused whether or not its target holds the rest of the path.
  const { real, missing } = resolveExisting(written);
  if (!isInside(root, real)) throw forbidden();
  if (missing) throw new WeightsError("not_found", `no file or directory at ${requested} (inside ${allowedDir})`);
  return real;
}

/** The real path of `p`, or of its longest existing ancestor when `p` itself does not exist. */
function resolveExisting(p: string): { real: string; missing: boolean } {
  for (let at = p, missing = false;; at = path.dirname(at), missing = true) {
    try {
      return { real: fs.realpathSync(at), missing };
    } catch {
      if (path.dirname(at) === at) return { real: at, missing: true };
    }
  }
}

/** The served model, as new weights must match it. */
export interface ServedWeights {
  /** The served model's directory (its config.json is the architecture to match). */
  dir: string;
  dtype: "fp32" | "q8" | "q4";
  backend: Backend;
  maxRows: number;
  /** The served context length: the new weights must support it. */
  maxLength: number;
  /** A directory for the engine graph written over a loose ONNX file (removed once the session is open). */
  scratchDir: string;
  /** On WebGPU, keep the cache in host memory (see OpenEngineRunnerOptions). */
  hostCache?: boolean;
}

const SHAPE_FIELDS = [
  ["hiddenSize", "hidden_size"],
  ["numLayers", "num_hidden_layers"],
  ["numHeads", "num_attention_heads"],
  ["numKvHeads", "num_key_value_heads"],
  ["headDim", "head_dim"],
  ["intermediateSize", "intermediate_size"],
  ["vocabSize", "vocab_size"],
  ["qkNorm", "model_type (q/k norm)"],
  ["tieEmbeddings", "tie_word_embeddings"],
] as const;

function readArch(configPath: string): DecoderArch {
  let config: unknown;
  try {
    config = JSON.parse(fs.readFileSync(configPath, "utf8"));
  } catch (err) {
    throw new WeightsError("mismatch", `${configPath} is not readable JSON: ${(err as Error).message}`);
  }
  if (typeof config !== "object" || config === null) throw new WeightsError("mismatch", `${configPath} is not a JSON object`);
  return archFromConfig(config as Record<string, unknown>);
}

function checkSameArch(served: DecoderArch, candidate: DecoderArch, where: string, maxLength: number): void {
  const differing = SHAPE_FIELDS.filter(([key]) => served[key] !== candidate[key])
    .map(([key, name]) => `${name} ${candidate[key]} (served: ${served[key]})`);
  if (differing.length > 0) {
    throw new WeightsError("mismatch", `${where} has another architecture than the served model: ${differing.join(", ")}`);
  }
  if (candidate.maxPositionEmbeddings < maxLength) {
    throw new WeightsError(
      "mismatch",
      `${where} supports ${candidate.maxPositionEmbeddings} positions, less than the served context length ${maxLength}`,
    );
  }
}

/**
 * Opens an engine runner over the weights at `real` (a path from resolveWeightsPath): for onnxruntime-node, on the
 * model thread (model-thread.ts), converting and opening there while the server keeps serving.
 */
export async function openWeights(real: string, served: ServedWeights): Promise<ModelRunner> {
  const { backend, ...rest } = served;
  if (backend.offThread) {
    const args = { device: backend.device, threads: cpuThreadCount(), real, served: rest };
    const here = async () => ({ runner: await openWeights(real, { ...served, backend: { ...backend, offThread: false } }) });
    return (await openOffThread("open.weights", args, here)).runner;
  }
  const servedArch = readArch(path.join(served.dir, "config.json"));
  const stat = fs.statSync(real);
  if (stat.isDirectory()) return await openDirectory(real, servedArch, served);
  if (!stat.isFile() || !real.endsWith(".onnx")) {
    throw new WeightsError("mismatch", `${real} is neither a model directory nor an .onnx file`);
  }
  return await openGraphFile(real, servedArch, served);
}

async function openDirectory(dir: string, servedArch: DecoderArch, served: ServedWeights): Promise<ModelRunner> {
  const configPath = path.join(dir, "config.json");
  if (!fs.existsSync(configPath)) throw new WeightsError("mismatch", `model directory ${dir} has no config.json`);
  checkSameArch(servedArch, readArch(configPath), dir, served.maxLength);
  const graph = path.join(dir, ONNX_FILES[served.dtype]);
  if (!fs.existsSync(graph)) {
    if (hasCheckpoint(dir)) return await openCheckpoint(dir, servedArch, served);
    throw new WeightsError("mismatch", `model directory ${dir} lacks ${ONNX_FILES[served.dtype]} (dtype ${served.dtype}) and a safetensors checkpoint`);
  }
  try {
    const { runner } = await openModelRunner({
      dir,
      dtype: served.dtype,
      backend: served.backend,
      maxRows: served.maxRows,
      maxLength: served.maxLength,
      hostCache: served.hostCache,
    });
    return runner;
  } catch (err) {
    throw new WeightsError("mismatch", `cannot use the weights in ${dir}: ${(err as Error).message}`, { cause: err });
  }
}

/** A standard graph whose weights are not in the builder's layout, run as it is (the served config gives its shape). */
async function openLooseStandard(
  graphPath: string,
  externalData: { name: string; path: string }[],
  served: ServedWeights,
): Promise<ModelRunner> {
  const config = JSON.parse(fs.readFileSync(path.join(served.dir, "config.json"), "utf8"));
  try {
    return await openStandardRunner(served, { model: graphPath, externalData }, config);
  } catch (err) {
    throw new WeightsError("mismatch", `cannot use the weights in ${graphPath}: ${(err as Error).message}`, { cause: err });
  }
}

/** A trainer's checkpoint (safetensors): converted into a scratch folder, opened, and the folder removed. */
async function openCheckpoint(dir: string, servedArch: DecoderArch, served: ServedWeights): Promise<ModelRunner> {
  fs.mkdirSync(served.scratchDir, { recursive: true });
  const scratch = fs.mkdtempSync(path.join(served.scratchDir, "checkpoint-"));
  try {
    try {
      await convertCheckpoint({ src: dir, out: scratch, dtype: served.dtype });
    } catch (err) {
      throw new WeightsError("mismatch", `cannot use the checkpoint in ${dir}: ${(err as Error).message}`, { cause: err });
    }
    return await openDirectory(scratch, servedArch, served);
  } finally {
    fs.rmSync(scratch, { recursive: true, force: true });
  }
}

/** External data files a graph refers to, by the name the graph uses, found beside it. */
function externalDataOf(graphPath: string): { name: string; path: string }[] {
  const file = fs.readFileSync(graphPath);
  const model = decodeModel(new Uint8Array(file.buffer, file.byteOffset, file.byteLength));
  const names = new Set(model.graph.initializers.flatMap((t) => t.external ? [t.external.location] : []));
  return [...names].map((name) => {
    const located = path.resolve(path.dirname(graphPath), name);
    if (!isInside(path.dirname(graphPath), located)) throw new WeightsError("mismatch", `${graphPath} points outside its folder (${name})`);
    if (!fs.existsSync(located)) throw new WeightsError("not_found", `${graphPath} needs its external data ${name} beside it`);
    return { name, path: located };
  });
}

async function openGraphFile(graphPath: string, arch: DecoderArch, served: ServedWeights): Promise<ModelRunner> {
  let externalData: { name: string; path: string }[];
  try {
    externalData = externalDataOf(graphPath);
  } catch (err) {
    if (err instanceof WeightsError) throw err;
    throw new WeightsError("mismatch", `${graphPath} is not a readable ONNX model: ${(err as Error).message}`);
  }
  fs.mkdirSync(served.scratchDir, { recursive: true });
  const scratch = fs.mkdtempSync(path.join(served.scratchDir, "refit-"));
  try {
    const enginePath = path.join(scratch, "engine.onnx");
    try {
      writeEngineGraph(graphPath, enginePath, arch, served.dtype);
    } catch (err) {
      if (err instanceof EngineLayoutError) return await openLooseStandard(graphPath, externalData, served);
      throw new WeightsError("mismatch", `${graphPath} does not hold the served model's weights: ${(err as Error).message}`);
    }
    let session;
    try {
      session = await served.backend.openFile({ model: enginePath, externalData });
    } catch (err) {
      throw new WeightsError("mismatch", `cannot open the weights in ${graphPath}: ${(err as Error).message}`, { cause: err });
    }
    return new EngineRunner({
      session,
      Tensor: served.backend.Tensor,
      arch,
      maxRows: served.maxRows,
      maxLength: served.maxLength,
      copyInputs: served.backend.runtime === "onnxruntime-web",
      queue: served.backend.runQueue(),
    });
  } finally {
    fs.rmSync(scratch, { recursive: true, force: true });
  }
}

/** The seed of the weights a reset serves: random weights no trainer made. */
const RESET_SEED = 0x7e5e7;

/**
 * A model directory with the builder's random weights (seed RESET_SEED) in the served architecture and dtype, for
 * the weight checker's reset (vLLM overwrites the weights with random values). Written once under the scratch
 * directory, keyed by the served config, and kept; returns its path.
 */
export async function resetWeightsDir(served: ServedWeights): Promise<string> {
  const configText = fs.readFileSync(path.join(served.dir, "config.json"), "utf8");
  const key = createHash("sha256").update(configText).digest("hex").slice(0, 16);
  const dir = path.join(served.scratchDir, `reset-${served.dtype}-${key}`);
  if (fs.existsSync(path.join(dir, ENGINE_FILES[served.dtype]))) return dir;
  const arch = readArch(path.join(served.dir, "config.json"));
  fs.mkdirSync(served.scratchDir, { recursive: true });
  const staging = fs.mkdtempSync(path.join(served.scratchDir, "reset-building-"));
  try {
    fs.writeFileSync(path.join(staging, "config.json"), configText);
    fs.mkdirSync(path.join(staging, "onnx"));
    const graph = path.join(staging, ONNX_FILES[served.dtype]);
    const model = emitStandardDecoder(arch, { dtype: served.dtype, weights: randomWeights(arch, RESET_SEED) });
    await writeOnnx(graph, model, { externalData: true });
    writeEngineGraph(graph, path.join(staging, ENGINE_FILES[served.dtype]), arch, served.dtype);
    fs.rmSync(dir, { recursive: true, force: true });
    fs.renameSync(staging, dir);
  } catch (err) {
    throw new WeightsError("mismatch", `cannot write weights to reset to: ${(err as Error).message}`, { cause: err });
  } finally {
    fs.rmSync(staging, { recursive: true, force: true });
  }
  return dir;
}
