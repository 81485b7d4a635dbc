/**
 * Deterministic random weights. Each tensor draws from its own xoshiro128** stream, seeded from the
 * model seed and the tensor's name, so any one tensor can be regenerated alone and the order of
 * generation does not matter. Only integer and exact float arithmetic is used (no Math.log/cos),
 * so Node, Deno and Bun produce the same bits.
 */
import type { DecoderArch, WeightKind } from "./arch.ts";
import { weightSpecs } from "./arch.ts";

/** Standard deviation of embeddings and linear weights (as in Hugging Face initializers). */
export const WEIGHT_STD = 0.02;

/** Returns the float values of a weight, by name. */
export type WeightSource = (name: string) => Float32Array;

function splitmix32(state: number): () => number {
  let s = state >>> 0;
  return () => {
    s = (s + 0x9e3779b9) >>> 0;
    let z = s;
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
    return (z ^ (z >>> 16)) >>> 0;
  };
}

function hashName(name: string): number {
  let h = 0x811c9dc5; // FNV-1a
  for (let i = 0; i < name.length; i++) h = Math.imul(h ^ name.charCodeAt(i), 0x01000193);
  return h >>> 0;
}

/** The four xoshiro128** state words for (seed, stream). */
function xoshiroState(seed: number, stream: number): [number, number, number, number] {
  const mix = splitmix32((seed >>> 0) ^ Math.imul(stream >>> 0, 0x9e3779b1) ^ Math.floor(seed / 2 ** 32));
  const state: [number, number, number, number] = [mix(), mix(), mix(), mix()];
  if ((state[0] | state[1] | state[2] | state[3]) === 0) state[0] = 1;
  return state;
}

/**
 * Fills `out` with approximately normal values of standard deviation `std`: the sum of four
 * 16-bit uniforms (Irwin-Hall), recentred and scaled. Bounded at 3.46 std, which keeps random
 * models far from overflow, in fp16 too. The xoshiro128** steps are inlined: this loop is most
 * of a big model's build time.
 */
export function fillNormal(out: Float32Array, seed: number, stream: number, std: number): void {
  let [a, b, c, d] = xoshiroState(seed, stream);
  const scale = (std * Math.sqrt(3)) / 65536;
  for (let i = 0; i < out.length; i++) {
    let sum = 2 - 131072; // +0.5 per uniform centres its cells; the four uniforms' mean is 2
    for (let draw = 0; draw < 2; draw++) {
      const r = Math.imul(b, 5);
      const x = Math.imul((r << 7) | (r >>> 25), 9) >>> 0;
      const t = b << 9;
      c ^= a;
      d ^= b;
      b ^= c;
      a ^= d;
      c ^= t;
      d = (d << 11) | (d >>> 21);
      sum += (x & 0xffff) + (x >>> 16);
    }
    out[i] = sum * scale;
  }
}

/** Initial values for one weight kind. */
function initialize(kind: WeightKind, size: number, seed: number, stream: number): Float32Array {
  const out = new Float32Array(size);
  if (kind === "norm") out.fill(1);
  else fillNormal(out, seed, stream, WEIGHT_STD);
  return out;
}

/** A WeightSource of random weights for `arch`, deterministic in `seed`. */
export function randomWeights(arch: DecoderArch, seed: number): WeightSource {
  const specs = new Map(weightSpecs(arch).map((s) => [s.name, s]));
  return (name) => {
    const spec = specs.get(name);
    if (!spec) throw new Error(`no weight named ${name}`);
    const size = spec.dims.reduce((a, b) => a * b, 1);
    return initialize(spec.kind, size, seed, hashName(name));
  };
}
