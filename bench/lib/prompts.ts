/** Random prompts for the engine benchmarks: seeded, so a run can be repeated. */
import { Rng } from "../../src/engine/rng.ts";

/** `count` token ids drawn from a seeded stream, clear of the special tokens at the top of the vocabulary. */
export function randomTokens(rng: Rng, count: number, vocabLimit = 150_000): number[] {
  return Array.from({ length: count }, () => 300 + Math.floor(rng.nextUniform() * (vocabLimit - 300)));
}

/** `count` prompts of about `length` tokens (length +- spread/2), from `seed`. */
export function randomPrompts(seed: number, count: number, length: number, spread = 0): number[][] {
  const rng = Rng.fromSeed(seed);
  return Array.from({ length: count }, () => {
    const jitter = spread > 0 ? Math.floor(rng.nextUniform() * (spread + 1)) - Math.floor(spread / 2) : 0;
    return randomTokens(rng, length + jitter);
  });
}
