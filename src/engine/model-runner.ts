/**
 * What the engine needs from a model: batched forward passes over "rows", each row a sequence's KV cache that the
 * runner keeps in the layout its graph reads. The engine decides which sequence lives in which row.
 */

import type { RowSampling, SampledToken } from "./sampler.ts";

/** One row's work in a step: feed `tokens` at positions start.., attending to the row's cached [0, start). */
export interface RowInput {
  row: number;
  tokens: number[];
  start: number;
  /** The row wants the logits of every token it feeds (prompt log-probabilities), not only of its last. */
  allLogits?: boolean;
}

export interface ModelRunner {
  /** Vocabulary size of the logits rows returned by `step`. */
  readonly vocabSize: number;
  /** Floats one token occupies in the KV cache across all layers (K and V). */
  readonly floatsPerToken: number;
  /** Most rows the runner can hold at once. */
  readonly maxRows: number;
  /**
   * Runs the model on rows (any distinct rows, each feeding any number of tokens) and returns, per row, the
   * logits of its last fed token (vocabSize floats), or with `allLogits` those of each fed token in turn. Rows in one ascending range that feed one token each (a decode step) are the
   * cheapest: the runner reads their cache in place.
   * Afterwards each row's cache holds [0, start + tokens.length). The logits may be views of a buffer the runner
   * writes again on its next step: read them before calling step again.
   */
  step(inputs: RowInput[]): Promise<Float32Array[]>;
  /**
   * Optional: the caller has read the logits of the last step, and no longer needs them. A runner whose step
   * allocates them anew frees their memory now (the arrays step returned read as empty afterwards).
   */
  releaseLogits?(): void;
  /**
   * Optional: a step whose logits stay on the runner's device, where each row with `sampling` gets its next token
   * drawn (null for rows that only fill their cache); only tokens and log-probabilities come back. No row may
   * ask for allLogits.
   */
  stepAndSample?(inputs: RowInput[], sampling: readonly (RowSampling | null)[]): Promise<(SampledToken | null)[]>;
  /**
   * Makes every row able to hold `length` tokens (may re-lay out the cache; rows keep their contents). `rows`, when
   * given, says that rows [0, rows) are about to be used: a runner whose memory follows the rows in use lays them all
   * out in this one call rather than one re-layout per new row.
   */
  reserve(length: number, rows?: number): void;
  /** Tells the runner a row holds nothing any more (it may shrink its buffers). */
  releaseRow(row: number): void;
  /** Copies the first `length` cached tokens of row `from` into row `to`. */
  copyRow(from: number, to: number, length: number): void;
  /**
   * Copies cached tokens [start, start+length) of `row` into `out` (floatsPerToken * length floats): at once, or
   * for a runner with `flush`, by the time flush resolves (later steps do not change what it reads).
   */
  readKv(row: number, start: number, length: number, out: Float32Array): void;
  /** Optional: resolves once every readKv called so far has filled its `out` (a cache on another device). */
  flush?(): Promise<void>;
  /**
   * Writes `data` (floatsPerToken * length floats, as readKv gives) into `row` at [start, start+length). Data in
   * shared memory (a SharedArrayBuffer, as the prefix cache's blocks are) may be read only when the runner gets to
   * the call: nothing but the runner's own readKv may change it before the runner's next step or flush.
   */
  writeKv(row: number, start: number, length: number, data: Float32Array): void;
  /** Bytes the runner's row buffers hold now. */
  workingBytes(): number;
  /** Releases buffers (sleep, shutdown). */
  dispose(): Promise<void>;
}
