/** What the runner tests share: deterministic prompts, logits comparisons, and chunked prefill through any runner. */
import assert from "node:assert/strict";
import type { ModelRunner } from "../../src/engine/model-runner.ts";

/** Deterministic token ids spread over the vocabulary. */
export const tokens = (n: number, seed: number) => Array.from({ length: n }, (_, i) => (seed * 7919 + i * 104729) % 150000);

export function maxDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  assert.equal(a.length, b.length);
  let max = 0;
  for (let i = 0; i < a.length; i++) max = Math.max(max, Math.abs(a[i] - b[i]));
  return max;
}

/** Logits agree within 1e-4. */
export function assertClose(actual: Float32Array, expected: Float32Array, what: string): void {
  const diff = maxDiff(actual, expected);
  assert.ok(diff < 1e-4, `${what}: logits differ by ${diff}`);
}

/** Prefills `ids` into `row` in chunks of `chunk` tokens; returns the last chunk's logits (copied). */
export async function prefill(runner: ModelRunner, row: number, ids: number[], chunk = ids.length, from = 0) {
  let logits = new Float32Array(0);
  for (let start = from; start < ids.length; start += chunk) {
    const [out] = await runner.step([{ row, tokens: ids.slice(start, start + chunk), start }]);
    logits = out.slice();
  }
  return logits;
}
