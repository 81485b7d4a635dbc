/**
 * The slice of the ONNX Runtime JS API the model layer uses. onnxruntime-node and onnxruntime-web ship
 * different versions of onnxruntime-common, so their classes differ while their shapes agree.
 */
import type { InferenceSession, Tensor } from "onnxruntime-common";

export type OrtTensor = Tensor;
export type OrtTensorType = Tensor.Type;
export type OrtTensorData = Tensor.DataType;
export type OrtSession = InferenceSession;
export type OrtSessionOptions = InferenceSession.SessionOptions;
export type OrtValueMetadata = InferenceSession.ValueMetadata;

/** What `import("onnxruntime-node" | "onnxruntime-web")` gives. */
export interface OrtModule {
  InferenceSession: { create(model: string | Uint8Array, options?: OrtSessionOptions): Promise<OrtSession> };
  Tensor: typeof Tensor;
  env: unknown;
}

/** Any tensor with CPU data: an ORT tensor of either package, or a transformers.js Tensor. */
export interface TensorLike {
  readonly type: Tensor.Type;
  readonly data: Tensor.DataType;
  readonly dims: readonly number[];
}
