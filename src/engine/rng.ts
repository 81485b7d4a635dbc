/**
 * The random stream of one sequence: xoshiro128** on 32-bit integer math, so a seed gives the same numbers on
 * Node, Deno and Bun (no BigInt, no Math.random). A sequence owns its stream and the sampler draws exactly one
 * number per token, so a seeded request's tokens do not depend on what else the server runs.
 */

const TWO_POW_32 = 4294967296;
const GOLDEN = 0x9e3779b9;

// A bijective 32-bit finalizer (xor-shift / multiply rounds): spreads every seed bit over the state words.
function mix32(x: number): number {
  x = Math.imul(x ^ (x >>> 16), 0x7feb352d);
  x = Math.imul(x ^ (x >>> 15), 0x846ca68b);
  return (x ^ (x >>> 16)) >>> 0;
}

function rotl(x: number, k: number): number {
  return (x << k) | (x >>> (32 - k));
}

/** A seeded pseudo-random generator with 128 bits of state. */
export class Rng {
  #s0: number;
  #s1: number;
  #s2: number;
  #s3: number;

  private constructor(s0: number, s1: number, s2: number, s3: number) {
    // The all-zero state is the one state xoshiro cannot leave.
    if ((s0 | s1 | s2 | s3) === 0) s0 = GOLDEN;
    this.#s0 = s0 | 0;
    this.#s1 = s1 | 0;
    this.#s2 = s2 | 0;
    this.#s3 = s3 | 0;
  }

  /** A generator whose stream is fixed by `seed`, an integer (negative ones as 64-bit two's complement). */
  static fromSeed(seed: number): Rng {
    if (!Number.isInteger(seed)) throw new RangeError(`seed must be an integer, got ${seed}`);
    const hi = Math.floor(seed / TWO_POW_32);
    const lo = seed - hi * TWO_POW_32;
    const words: number[] = [];
    for (let j = 1; j <= 4; j++) {
      // Two independent hashes of the halves, so seeds that differ only in the high half still differ everywhere.
      words.push(mix32((lo + Math.imul(j, GOLDEN)) | 0) ^ rotl(mix32((hi ^ Math.imul(j, 0x85ebca6b)) | 0), 13));
    }
    return new Rng(words[0], words[1], words[2], words[3]);
  }

  /** A generator in a given state (four 32-bit words), e.g. one taken with `state()`. */
  static fromState(words: ArrayLike<number>): Rng {
    return new Rng(words[0], words[1], words[2], words[3]);
  }

  /** The current state, as four unsigned 32-bit words. */
  state(): Uint32Array {
    return Uint32Array.of(this.#s0, this.#s1, this.#s2, this.#s3);
  }

  /** Puts the generator back in a state taken with `state()` (a step that failed draws again). */
  restore(words: ArrayLike<number>): void {
    [this.#s0, this.#s1, this.#s2, this.#s3] = [words[0] | 0, words[1] | 0, words[2] | 0, words[3] | 0];
  }

  /** A generator seeded from the platform's cryptographic randomness, for requests without a seed. */
  static unseeded(): Rng {
    const words = new Uint32Array(4);
    globalThis.crypto.getRandomValues(words);
    return new Rng(words[0], words[1], words[2], words[3]);
  }

  /** The next 32 random bits, as an unsigned integer. */
  nextUint32(): number {
    const s1 = this.#s1;
    const result = Math.imul(rotl(Math.imul(s1, 5), 7), 9) >>> 0;
    const t = s1 << 9;
    this.#s2 ^= this.#s0;
    this.#s3 ^= s1;
    this.#s1 ^= this.#s2;
    this.#s0 ^= this.#s3;
    this.#s2 ^= t;
    this.#s3 = rotl(this.#s3, 11);
    return result;
  }

  /** A uniform number strictly inside (0, 1), from one 32-bit draw (the centre of its 2^-32 cell). */
  nextUniform(): number {
    return (this.nextUint32() + 0.5) / TWO_POW_32;
  }
}

/**
 * The stream of sample `index` of a request: seeded requests give sample i the seed `seed + i` (as vLLM seeds the
 * n samples of one request), unseeded ones a fresh random stream.
 */
export function sequenceRng(seed: number | null | undefined, index = 0): Rng {
  return seed == null ? Rng.unseeded() : Rng.fromSeed(seed + index);
}
