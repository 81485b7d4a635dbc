/** Loads a model (local directory or hub id) and its tokenizer onto a device, and runs its decoder graph. */
import { AutoTokenizer, type PreTrainedTokenizer } from "@huggingface/transformers";
import { existsSync, readFileSync } from "node:fs";
import * as path from "node:path";
import { createLogger, type Logger } from "../log.ts";
import { type Backend, backendFor, type Device, type DeviceChoice, type ModelSource, openOnDevice } from "./ort/backends.ts";
import { isBuiltModel } from "./builder/build.ts";
import { BUILTIN_MODEL, builtinModelDir, ensureBuiltinModel } from "./builtin.ts";
import { ModelLoadError } from "./errors.ts";
import { type ModelConfig, parseModelConfig } from "./model-config.ts";
import { conversionOf, ensureConverted } from "./builder/convert.ts";
import { checkModelDir, dtypesIn, type ModelDtype, onnxFileName, type OnnxFiles, onnxFilesIn } from "./sources/model-files.ts";
import { hasCheckpoint } from "./sources/safetensors.ts";
import { fetchHubCheckpoint, fetchHubConfig, locateModel, type ModelLocation } from "./sources/model-source.ts";
import { offThread } from "./thread/model-thread.ts";
import type { OrtTensor, OrtTensorData, OrtTensorType, OrtValueMetadata, TensorLike } from "./ort/ort-types.ts";
import { tokenizerFromParts } from "./tokenizer/tokenizer-load.ts";
import type { TokenizerParts } from "./tokenizer/tokenizer-parts.ts";

/** Options of loadModel. */
export interface LoadModelOptions {
  /** A local model directory or a hub id (owner/name); none loads the built-in tiny model. */
  model?: string;
  /** Default "auto". */
  device?: DeviceChoice;
  /** Default "fp32". */
  dtype?: ModelDtype;
  /** Holds the built-in model (models/) and hub downloads (hub/). */
  cacheDir: string;
  /** Base URL of the hub or a mirror (default https://huggingface.co/). */
  hubUrl?: string;
  /** The hub revision (branch, tag or commit) a hub id is downloaded at (default main). */
  revision?: string;
  /** Where the choice of device is reported. */
  log?: Logger;
}

/** A model found, checked and placed on a device: its config and tokenizer, and where it runs. */
export interface ModelInfo {
  /** The directory or hub id that was asked for. */
  id: string;
  /** The directory the files were read from (for a hub id, its download cache). */
  dir: string;
  config: ModelConfig;
  tokenizer: PreTrainedTokenizer;
  /** The device and dtype actually used. */
  device: Device;
  dtype: ModelDtype;
  /** The ONNX Runtime build and execution provider the model runs on (to open more graphs on it). */
  backend: Backend;
}

/** What an `open` function of openModel gets: the model before it is on a device, its files on local disk. */
export interface ModelToOpen {
  dir: string;
  config: ModelConfig;
  dtype: ModelDtype;
  source: ModelSource;
  /** The tokenizer as it loads beside the graph, for work that needs it before the model is on the device. */
  tokenizer: Promise<PreTrainedTokenizer>;
}

/** A model ready to run: its config, tokenizer and one ONNX Runtime session over its standard graph. */
export interface LoadedModel extends ModelInfo {
  inputNames: readonly string[];
  outputNames: readonly string[];
  /** Element types and shapes of the graph's inputs and outputs (the KV cache's dtype, for one). */
  inputMetadata: readonly OrtValueMetadata[];
  outputMetadata: readonly OrtValueMetadata[];
  /** A tensor of the session's own ONNX Runtime (feeds of any ORT or transformers.js Tensor work too). */
  tensor(type: OrtTensorType, data: OrtTensorData, dims: readonly number[]): OrtTensor;
  /** Runs the decoder graph on `feeds`; runs are queued and never overlap. Outputs are on the CPU. */
  forward(feeds: Record<string, TensorLike>): Promise<Record<string, OrtTensor>>;
  /** Releases the session; the model cannot run afterwards. */
  dispose(): Promise<void>;
}

/** Loads a model for the engine; a missing or malformed model is a ModelLoadError, a missing device a DeviceUnavailableError. */
export async function loadModel(options: LoadModelOptions): Promise<LoadedModel> {
  const { model, opened: session } = await openModel(options, (backend, m) => backend.open(m.source));
  const { backend } = model;
  const queue = backend.runQueue();
  const Tensor = backend.Tensor as unknown as new (t: string, d: unknown, dims: readonly number[]) => OrtTensor;
  const own = (t: TensorLike): OrtTensor => t instanceof backend.Tensor ? t : new Tensor(t.type, t.data, t.dims);
  return {
    ...model,
    inputNames: session.inputNames,
    outputNames: session.outputNames,
    inputMetadata: session.inputMetadata,
    outputMetadata: session.outputMetadata,
    tensor: (type, data, dims) => new Tensor(type, data, dims),
    forward: (feeds) =>
      queue.run(async () => {
        const outputs = await session.run(Object.fromEntries(Object.entries(feeds).map(([k, t]) => [k, own(t)])));
        const onCpu: Record<string, OrtTensor> = {};
        // transformers.js keeps present.* on the GPU for WebGPU sessions; the engine wants them on the CPU.
        for (const [name, t] of Object.entries(outputs)) {
          onCpu[name] = t.location.startsWith("cpu") ? t : new Tensor(t.type, await t.getData(true), t.dims);
        }
        return onCpu;
      }),
    dispose: () => queue.run(() => session.release()),
  };
}

/**
 * Finds, checks and tokenizes a model as loadModel does, then places it on a device with `open`, which opens what
 * the caller runs (the standard graph's session for loadModel; the server opens the engine's runner instead, and
 * so never opens the standard graph it would not use). Returns the model and what `open` gave.
 */
export async function openModel<T>(
  options: LoadModelOptions,
  open: (backend: Backend, model: ModelToOpen) => Promise<T>,
): Promise<{ model: ModelInfo; opened: T }> {
  const log = options.log ?? createLogger();
  const dtype = options.dtype ?? "fp32";
  const asked = locateModel(options.model ?? await builtinModel(options.cacheDir, log), options.cacheDir, options.revision);
  let location = asked;
  if (!asked.local) {
    await fetchHubConfig(asked, options.hubUrl);
    // A hub model published as a safetensors checkpoint only: downloaded, then converted like a local one.
    const checkpoint = await fetchHubCheckpoint(asked, `onnx/${onnxFileName(dtype)}`, options.hubUrl, log.info);
    if (checkpoint) location = { ...asked, id: asked.dir, local: true };
  }
  if (location.local) location = await convertedIfCheckpoint(location, dtype, options.cacheDir, log);
  if (location.local) checkModelDir(location.dir, dtype);
  // A local config is checked before the graph loads; a hub model's generation_config.json comes with its graph.
  const localConfig = location.local ? readModelConfig(location.dir) : undefined;
  const source: ModelSource = {
    id: location.id,
    local: location.local,
    dtype,
    cacheDir: location.cacheDir,
    revision: location.revision,
    log: log.info,
    files: () => location.local ? Promise.resolve(onnxFilesIn(location.dir, dtype)) : downloadOnnx(location, dtype, log.info),
  };
  // The tokenizer loads while the model opens; a tokenizer that fails after the model opened closes it again.
  const tokenizing = loadTokenizer(location);
  const [loadedTokenizer, placed] = await Promise.allSettled([
    tokenizing,
    (async () => {
      // A hub model's ONNX files come with its graph (see downloadOnnx), and its config with them.
      const files = location.local ? undefined : await source.files();
      const config = localConfig ?? readModelConfig(location.dir);
      const local = files ? { ...source, files: () => Promise.resolve(files) } : source;
      const toOpen: ModelToOpen = { dir: location.dir, config, dtype, source: local, tokenizer: tokenizing };
      return { ...await openOnDevice(options.device ?? "auto", (backend) => open(backend, toOpen), log), config };
    })(),
  ]);
  if (placed.status === "rejected") throw placed.reason;
  const { backend, config, opened } = placed.value;
  if (loadedTokenizer.status === "rejected") {
    await closeOpened(opened);
    throw loadedTokenizer.reason;
  }
  const tokenizer = loadedTokenizer.value;
  return { model: { id: asked.id, dir: location.dir, config, tokenizer, device: backend.device, dtype, backend }, opened };
}

/** Closes what an `open` of openModel gave, if it is a session or a runner. */
async function closeOpened(opened: unknown): Promise<void> {
  const closable = opened as { release?: () => Promise<void>; runner?: { dispose(): Promise<void> } } | undefined;
  await (closable?.release?.() ?? closable?.runner?.dispose());
}

/** The built-in model's directory, built on the model thread on first use. */
function builtinModel(cacheDir: string, log: Logger): Promise<string> {
  if (isBuiltModel(builtinModelDir(cacheDir), BUILTIN_MODEL)) return Promise.resolve(builtinModelDir(cacheDir));
  log.info(`building the built-in model (${BUILTIN_MODEL.preset}, random weights) into ${builtinModelDir(cacheDir)}: once, a few seconds`);
  return offThread("builtin.ensure", { cacheDir }, () => ensureBuiltinModel(cacheDir));
}

/**
 * A local Hugging Face checkpoint (safetensors, no ONNX graph of this dtype) is served from its conversion into the
 * builder's layout, kept in the cache directory; any other location is served as it is.
 */
async function convertedIfCheckpoint(
  location: ModelLocation,
  dtype: ModelDtype,
  cacheDir: string,
  log: Logger,
): Promise<ModelLocation> {
  if (dtypesIn(location.dir).includes(dtype) || !hasCheckpoint(location.dir)) return location;
  if (dtype !== "fp32" && dtype !== "q8" && dtype !== "q4") {
    throw new ModelLoadError(location.dir, `a safetensors checkpoint converts to fp32, q8 or q4, not ${dtype}`);
  }
  const started = performance.now();
  const { out, current } = conversionOf(location.dir, cacheDir, dtype);
  if (!current) {
    log.info(`converting checkpoint ${location.dir} to ${dtype} into ${out}: once, later starts reuse it (a minute or more for a big model)`);
  }
  let dir: string;
  try {
    const args = { src: location.dir, cacheDir, dtype };
    dir = await offThread("checkpoint.convert", args, () => ensureConverted(location.dir, cacheDir, dtype));
  } catch (err) {
    throw new ModelLoadError(location.dir, (err as Error).message, { cause: err });
  }
  log.info(`serving checkpoint ${location.dir} from its ${dtype} conversion in ${dir} (${((performance.now() - started) / 1000).toFixed(1)} s)`);
  return { ...location, id: dir, dir };
}

function readModelConfig(dir: string): ModelConfig {
  const configPath = path.join(dir, "config.json");
  const config = readJson(configPath, true);
  const generation = readJson(path.join(dir, "generation_config.json"), false);
  return parseModelConfig(config, generation, configPath);
}

function readJson(file: string, required: boolean): unknown {
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch {
    if (!required) return undefined;
    throw new ModelLoadError(file, `${file} is missing`);
  }
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new ModelLoadError(file, `${file} is not valid JSON: ${(err as Error).message}`);
  }
}

/**
 * The model's tokenizer. From local files (a directory, or a hub model's downloaded ones), a BPE tokenizer is parsed
 * on the model thread and built in slices (tokenizer-load.ts); others, and hub models not yet downloaded, are
 * loaded by transformers.js.
 */
async function loadTokenizer(location: ModelLocation): Promise<PreTrainedTokenizer> {
  try {
    const file = path.join(location.dir, "tokenizer.json");
    if (existsSync(file) && existsSync(path.join(location.dir, "tokenizer_config.json"))) {
      const parts = await offThread<TokenizerParts | null>("tokenizer.parts", { file }, () => Promise.resolve(null));
      const tokenizer = await tokenizerFromParts(location.dir, parts);
      if (tokenizer) return tokenizer;
    }
    return await AutoTokenizer.from_pretrained(location.id, {
      local_files_only: location.local,
      cache_dir: location.cacheDir,
      revision: location.revision,
    });
  } catch (err) {
    const message = err instanceof Error ? err.message : String(err);
    throw new ModelLoadError(location.id, `could not load the tokenizer of ${location.id}: ${message}`, { cause: err });
  }
}

/** A hub model's ONNX files for a backend that opens them itself: downloaded by transformers.js first. */
async function downloadOnnx(location: ModelLocation, dtype: ModelDtype, log: (message: string) => void): Promise<OnnxFiles> {
  try {
    return onnxFilesIn(location.dir, dtype);
  } catch {
    // transformers.js has no download-only call; opening (then closing) a CPU session fetches the files.
    const source = { ...location, dtype, log, files: () => Promise.reject(new Error("unused")) };
    const session = await (await backendFor("cpu")).open(source);
    await session.release();
    return onnxFilesIn(location.dir, dtype);
  }
}
