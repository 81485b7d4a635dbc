/**
 * The token inputs and logit outputs of a run of the engine graph, as its runners (EngineRunner: cache in host
 * memory; GpuEngineRunner: cache in GPU buffers) feed and read them.
 */
import type { RowInput } from "../../engine/model-runner.ts";
import type { OrtModule, OrtTensor } from "../ort/ort-types.ts";

export type TensorClass = new (type: string, data: unknown, dims: readonly number[]) => OrtTensor;

/** The Tensor constructor of an ONNX Runtime module, typed for plain (CPU) tensors. */
export function tensorClass(Tensor: OrtModule["Tensor"]): TensorClass {
  return Tensor as unknown as TensorClass;
}

/** Logit positions each row of a run picks: 1, or the most tokens a row asking for all logits feeds. */
export function logitPicks(inputs: readonly RowInput[]): number {
  return Math.max(...inputs.map((r) => (r.allLogits ? r.tokens.length : 1)));
}

/**
 * The token inputs of a run: rows shorter than `seq` are padded on the right (their last token, at its position);
 * each row picks `picks` positions for logits (its last token's, repeated, or each of its tokens' then the last's).
 */
export function tokenFeeds(Tensor: TensorClass, inputs: readonly RowInput[], seq: number, picks: number): Record<string, OrtTensor> {
  const count = inputs.length;
  const ids = new BigInt64Array(count * seq);
  const positions = new BigInt64Array(count * seq);
  const logitIndex = new BigInt64Array(count * picks);
  inputs.forEach((r, b) => {
    const last = r.tokens.length - 1;
    for (let s = 0; s < seq; s++) {
      ids[b * seq + s] = BigInt(r.tokens[Math.min(s, last)]);
      positions[b * seq + s] = BigInt(r.start + Math.min(s, last));
    }
    for (let p = 0; p < picks; p++) logitIndex[b * picks + p] = BigInt(r.allLogits ? Math.min(p, last) : last);
  });
  return {
    input_ids: new Tensor("int64", ids, [count, seq]),
    position_ids: new Tensor("int64", positions, [count, seq]),
    past_lengths: new Tensor("int64", BigInt64Array.from(inputs, (r) => BigInt(r.start)), [count]),
    logit_index: new Tensor("int64", logitIndex, [count, picks]),
  };
}

/** Each row's logits out of a run's [rows * picks, vocab] output: its last position's, or all it fed. */
export function rowLogits(logits: Float32Array, inputs: readonly RowInput[], picks: number, vocab: number): Float32Array[] {
  return inputs.map((r, b) => logits.subarray(b * picks * vocab, (b * picks + (r.allLogits ? r.tokens.length : 1)) * vocab));
}
