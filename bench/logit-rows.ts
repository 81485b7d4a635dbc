/** Logit rows the sampler benchmarks time, and their percentiles (no model needed, so Deno runs it too). */
import { Rng } from "../src/engine/rng.ts";

/** Qwen3's vocabulary. */
export const VOCAB = 151_936;

/** Logits shaped like a language model's: a broad bulk around 0 and a few dozen candidates well above it. */
export function modelLikeRow(seed: number): Float32Array {
  const rng = Rng.fromSeed(seed);
  const row = new Float32Array(VOCAB);
  for (let i = 0; i < VOCAB; i++) {
    const gaussian = Math.sqrt(-2 * Math.log(rng.nextUniform())) * Math.cos(2 * Math.PI * rng.nextUniform());
    row[i] = 2.5 * gaussian + (rng.nextUniform() < 2e-4 ? 12 * rng.nextUniform() : 0);
  }
  return row;
}

/** A random-weight model's logits: nearly flat, the worst case for top-p (the nucleus is most of the vocabulary). */
export function flatRow(seed: number): Float32Array {
  const rng = Rng.fromSeed(seed);
  return Float32Array.from({ length: VOCAB }, () => 0.1 * (rng.nextUniform() - 0.5));
}

/** The q-quantile of ascending `sorted`. */
export function percentile(sorted: number[], q: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
}
