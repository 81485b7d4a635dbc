/**
 * Which runner serves a model folder. The engine graph (builder/engine-decoder.ts) when the folder's architecture
 * is one the builder writes and its standard graph carries the builder's weights: its step time stays nearly flat
 * as contexts grow. Otherwise the folder's own standard graph through the StandardRunner, which feeds every row's
 * whole past each step: correct for any decoder with the standard inputs, slower as contexts grow.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import type { ModelRunner } from "../../engine/model-runner.ts";
import { unsupportedFeatures } from "../builder/architectures/registry.ts";
import { EngineLayoutError } from "../builder/engine-decoder.ts";
import { decodeModel } from "../builder/onnx-read.ts";
import { cpuThreadCount } from "../ort/backends.ts";
import { type OpenEngineRunnerOptions, openEngineRunner } from "./engine-runner.ts";
import { onnxFilesIn, type OnnxFiles } from "../sources/model-files.ts";
import type { OrtSession } from "../ort/ort-types.ts";
import { StandardRunner } from "./standard-runner.ts";
import { openOffThread } from "../thread/threaded-runner.ts";

/** The graph a runner runs: the engine's own, or the model's standard one. */
export type RunnerLayout = "engine" | "standard";

export interface OpenedRunner {
  runner: ModelRunner;
  layout: RunnerLayout;
  /** Why the standard graph serves, when it does. */
  reason?: string;
}

/**
 * Opens the fastest runner the folder allows, on the given backend: for onnxruntime-node, on the model thread
 * (model-thread.ts), so that opening and running it never holds the calling thread.
 */
export async function openModelRunner(options: OpenEngineRunnerOptions): Promise<OpenedRunner> {
  const { backend, ...rest } = options;
  if (backend.offThread) {
    const args = { device: backend.device, threads: cpuThreadCount(), options: rest };
    const here = () => openModelRunner({ ...options, backend: { ...backend, offThread: false } });
    const { runner, layout = "engine", reason } = await openOffThread<Omit<OpenedRunner, "runner">>("open.model", args, here);
    return { runner, layout, reason };
  }
  const config = readConfig(options.dir);
  const unsupported = unsupportedFeatures(config);
  let reason = `the engine layout does not cover ${unsupported.join(", ")}`;
  if (unsupported.length === 0) {
    try {
      return { runner: await openEngineRunner(options), layout: "engine" };
    } catch (err) {
      if (!(err instanceof EngineLayoutError)) throw err;
      reason = `its weights are not in the builder's layout (${err.message})`;
    }
  }
  const files = onnxFilesIn(options.dir, options.dtype ?? "fp32");
  return { runner: await openStandardRunner(options, files, config), layout: "standard", reason };
}

/** A StandardRunner over the standard graph `files` (a model folder's, or a loose file with `config`). */
export async function openStandardRunner(
  options: Omit<OpenEngineRunnerOptions, "dir">,
  files: OnnxFiles,
  config: Record<string, unknown>,
): Promise<StandardRunner> {
  const { backend } = options;
  const session = await backend.openFile(files, options.sessionOptions);
  try {
    return new StandardRunner({
      session,
      Tensor: backend.Tensor,
      arch: standardArch(session, config),
      maxRows: options.maxRows,
      maxLength: options.maxLength ?? Number(config.max_position_embeddings ?? 2048),
      queue: backend.runQueue(),
      padded: !opTypesOf(files.model).has("GroupQueryAttention"),
    });
  } catch (err) {
    await session.release();
    throw err;
  }
}

/** The cache shape of a standard graph: layers from its inputs, heads and head size from its metadata or config. */
function standardArch(session: OrtSession, config: Record<string, unknown>) {
  const numLayers = session.inputNames.filter((n) => /^past_key_values\.\d+\.key$/.test(n)).length;
  const heads = Number(config.num_attention_heads);
  const metadata = session.inputMetadata?.find((m) => m.name === "past_key_values.0.key");
  const shape = metadata && "shape" in metadata ? (metadata.shape as unknown[]) : [];
  const fixed = (i: number) => (typeof shape[i] === "number" ? shape[i] as number : undefined);
  const numKvHeads = fixed(1) ?? Number(config.num_key_value_heads ?? heads);
  const headDim = fixed(3) ?? Number(config.head_dim ?? Number(config.hidden_size) / heads);
  const vocabSize = Number(config.vocab_size);
  if (!(numLayers > 0 && numKvHeads > 0 && headDim > 0 && vocabSize > 0)) {
    throw new Error(`cannot tell the KV cache shape of this graph (layers ${numLayers}, kv heads ${numKvHeads}, head size ${headDim})`);
  }
  return { numLayers, numKvHeads, headDim, vocabSize };
}

/** The operator types of an ONNX graph file. */
function opTypesOf(file: string): Set<string> {
  const bytes = fs.readFileSync(file);
  const model = decodeModel(new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength));
  return new Set(model.graph.nodes.map((n) => n.opType));
}

function readConfig(dir: string): Record<string, unknown> {
  return JSON.parse(fs.readFileSync(path.join(dir, "config.json"), "utf8"));
}
