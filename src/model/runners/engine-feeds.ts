/**
 * What the engine graph's runners (EngineRunner: cache in host memory; GpuEngineRunner: cache in GPU buffers)
 * share: the checks of a step's rows and the token inputs of a run.
 */
import type { RowInput } from "../../engine/model-runner.ts";
import type { OrtModule, OrtTensor } from "../ort/ort-types.ts";

export type TensorClass = new (type: string, data: unknown, dims: readonly number[]) => OrtTensor;

/** The Tensor constructor of an ONNX Runtime module, typed for plain (CPU) tensors. */
export function tensorClass(Tensor: OrtModule["Tensor"]): TensorClass {
  return Tensor as unknown as TensorClass;
}

/** Checks a step's rows and returns the tokens its longest row feeds (the run's sequence length). */
export function checkStep(inputs: readonly RowInput[], maxRows: number, maxLength: number): number {
  if (inputs.length === 0) throw new Error("step: no rows");
  const seen = new Set<number>();
  for (const r of inputs) {
    checkRow(r.row, maxRows);
    if (seen.has(r.row)) throw new Error(`step: row ${r.row} appears twice`);
    seen.add(r.row);
    if (r.tokens.length === 0) throw new Error(`step: row ${r.row} has no tokens`);
    if (!Number.isInteger(r.start) || r.start < 0 || r.start + r.tokens.length > maxLength) {
      throw new Error(`step: row ${r.row} feeds [${r.start}, ${r.start + r.tokens.length}), past the maximum ${maxLength}`);
    }
  }
  return Math.max(...inputs.map((r) => r.tokens.length));
}

/** Throws unless `row` is one of `maxRows` rows. */
export function checkRow(row: number, maxRows: number): void {
  if (!Number.isInteger(row) || row < 0 || row >= maxRows) throw new Error(`row ${row} is outside [0, ${maxRows})`);
}

/** Throws unless tokens [start, start + length) of `row` are inside rows of `capacity` slots. */
export function checkRange(row: number, start: number, length: number, maxRows: number, capacity: number): void {
  checkRow(row, maxRows);
  if (start < 0 || length < 0 || start + length > capacity) {
    throw new Error(`tokens [${start}, ${start + length}) are outside row capacity ${capacity}`);
  }
}

/** Throws unless `data` holds `length` tokens of the canonical KV layout. */
export function checkCanonical(length: number, data: Float32Array, floatsPerToken: number): void {
  if (data.length < length * floatsPerToken) {
    throw new Error(`${length} tokens need ${length * floatsPerToken} floats, got ${data.length}`);
  }
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
