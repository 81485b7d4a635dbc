/**
 * What a runner over an ONNX session runs on: the session, the model's shape and the rows it holds. EngineRunner
 * takes these; GpuEngineRunner and StandardRunner take them too, less copyInputs.
 */
import type { DecoderArch } from "../builder/arch.ts";
import type { OrtModule, OrtSession } from "../ort/ort-types.ts";
import type { RunQueue } from "../ort/run-queue.ts";

/** What an EngineRunner runs on. */
export interface EngineRunnerOptions {
  /** A session over an engine graph (onnx/engine*.onnx). */
  session: OrtSession;
  /** The Tensor class of the session's ONNX Runtime. */
  Tensor: OrtModule["Tensor"];
  arch: Pick<DecoderArch, "numLayers" | "numKvHeads" | "headDim" | "vocabSize">;
  /** Rows held at once (the engine's sequences plus one for moves). */
  maxRows: number;
  /** Most tokens a row may hold (the model's context length). */
  maxLength: number;
  /**
   * The runtime copies every input (onnxruntime-web, into its heap): rows holding few of their slots are then fed
   * a copy cut to the slots they hold rather than all of them. onnxruntime-node reads views in place.
   */
  copyInputs?: boolean;
  /** The queue runs go through (share the backend's where sessions must not overlap). */
  queue?: RunQueue;
}
