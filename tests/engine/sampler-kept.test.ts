/**
 * The sampling mask (RowSampling.keepSet -> SampledToken.kept) on the CPU sampler: the ids a token was drawn from,
 * held to a reference written from the definition over the same logits, through the sampler pool too.
 */
import { after, describe, test } from "node:test";
import assert from "node:assert/strict";
import { Rng } from "../../src/engine/rng.ts";
import { SamplerPool } from "../../src/engine/sampler-pool.ts";
import { type RowSampling, Sampler, SequenceSampler } from "../../src/engine/sampler.ts";
import { SamplingParams, type SamplingParamsInput } from "../../src/engine/sampling-params.ts";
import { referenceLogprobs } from "../support/sampling-reference.ts";

function logitsRow(n: number, seed: number): Float32Array {
  const rng = Rng.fromSeed(seed);
  return Float32Array.from({ length: n }, (_, i) => (rng.nextUniform() - 0.5) * 8 + (i % 41 === 0 ? 6 : 0));
}

function settings(input: SamplingParamsInput, uniform: number, allowed: Uint32Array | null = null): RowSampling {
  const p = SamplingParams.parse(input);
  return {
    temperature: p.temperature,
    topK: p.top_k,
    topP: p.top_p,
    minP: p.min_p,
    uniform,
    topLogprobs: p.logprobs,
    logprobsMode: p.logprobs_mode,
    allowed,
    keepSet: true,
  };
}

/** The reference's kept ids, ascending. */
function referenceSet(logits: Float32Array, row: RowSampling): number[] {
  return [...referenceLogprobs(logits, row.allowed ?? null, row).keys()].sort((a, b) => a - b);
}

const cuts: SamplingParamsInput[] = [
  { temperature: 1 },
  { temperature: 1, top_k: 20 },
  { temperature: 0.8, top_p: 0.9 },
  { temperature: 1, min_p: 0.1 },
  { temperature: 0.7, top_k: 50, top_p: 0.8, min_p: 0.02 },
  // Past the heap's limit: the histogram path.
  { temperature: 1.2, top_k: 2000, top_p: 0.95 },
  { temperature: 1, top_k: 3000 },
  { temperature: 1, top_p: 0.5, logprobs_mode: "raw", logprobs: 2 },
];

describe("sampling mask on the CPU sampler", () => {
  test("the kept set is the reference's over the same logits, and holds the sampled token", () => {
    const n = 5000;
    const sampler = new Sampler();
    cuts.forEach((input, c) => {
      const logits = logitsRow(n, 10 + c);
      const rng = Rng.fromSeed(20 + c);
      for (let d = 0; d < 10; d++) {
        const row = settings(input, rng.nextUniform());
        const got = sampler.sampleRow(logits, row);
        const what = `${JSON.stringify(input)} draw ${d}`;
        assert.ok(got.kept instanceof Int32Array, `${what}: a kept set`);
        assert.ok(got.kept!.includes(got.tokenId), `${what}: token ${got.tokenId} is in its set`);
        assert.deepEqual([...got.kept!], referenceSet(logits, row), what);
      }
    });
  });

  test("its size is the cut's: k for top-k, the nucleus for top-p, the tokens above min_p x p_max for min-p", () => {
    const n = 3000;
    const logits = logitsRow(n, 30);
    const sampler = new Sampler();
    assert.equal(sampler.sampleRow(logits, settings({ temperature: 1 }, 0.5)).kept!.length, n, "no cut: every token");
    for (const k of [1, 7, 1024, 1025, 2999]) {
      assert.equal(
        sampler.sampleRow(logits, settings({ temperature: 1, top_k: k }, 0.5)).kept!.length,
        k,
        `top_k ${k}`,
      );
    }
    // The nucleus by hand: the fewest best tokens whose probability reaches top_p.
    const probs = Array.from(logits, (l) => Math.exp(l));
    const total = probs.reduce((a, b) => a + b, 0);
    const sorted = [...probs].sort((a, b) => b - a);
    for (const p of [0.3, 0.9, 0.99]) {
      let mass = 0;
      let size = 0;
      while (mass < p * total) mass += sorted[size++];
      assert.equal(
        sampler.sampleRow(logits, settings({ temperature: 1, top_p: p }, 0.5)).kept!.length,
        size,
        `top_p ${p}`,
      );
    }
    const pMax = sorted[0];
    for (const m of [0.05, 0.5]) {
      const above = probs.filter((q) => q >= m * pMax).length;
      assert.equal(
        sampler.sampleRow(logits, settings({ temperature: 1, min_p: m }, 0.5)).kept!.length,
        above,
        `min_p ${m}`,
      );
    }
  });

  test("greedy keeps the argmax alone; without keepSet there is no set", () => {
    const logits = logitsRow(1000, 40);
    const sampler = new Sampler();
    const greedy = sampler.sampleRow(logits, settings({ temperature: 0 }, 0.5));
    assert.deepEqual([...greedy.kept!], [greedy.tokenId]);
    assert.equal(sampler.sampleRow(logits, { ...settings({ temperature: 1 }, 0.5), keepSet: false }).kept, undefined);
  });

  test("a request's return_sampling_mask asks its rows for the set", () => {
    const logits = logitsRow(500, 60);
    const asked = new SequenceSampler(SamplingParams.parse({ top_k: 5, return_sampling_mask: true, seed: 1 }), []);
    const row = asked.next([], 500);
    assert.equal(row.keepSet, true);
    assert.equal(new Sampler().sampleRow(logits, row).kept!.length, 5);
    const plain = new SequenceSampler(SamplingParams.parse({ top_k: 5, seed: 1 }), []).sample(logits, []);
    assert.equal(plain.kept, undefined, "not asked: no set");
  });

  test("tokens the allowed mask or min_tokens set to -inf are not in the set", () => {
    const n = 640;
    const logits = logitsRow(n, 50);
    const allowed = new Uint32Array(n / 32).fill(0x0f0f0f0f);
    const sampler = new Sampler();
    const row = settings({ temperature: 1, top_k: 300 }, 0.7, allowed);
    const got = sampler.sampleRow(logits, row);
    assert.ok(got.kept!.every((t) => (t & 7) < 4), "only allowed ids");
    assert.equal(got.kept!.length, 300, "300 of the 320 allowed");
    assert.deepEqual([...got.kept!], referenceSet(logits, row));
    // min_tokens masks EOS and the stop ids through the processors' edits.
    const params = SamplingParams.parse({ temperature: 1, min_tokens: 5, stop_token_ids: [0, 41], seed: 3 });
    const next = new SequenceSampler(params, [], { eosTokenIds: [82] }).next([], n);
    const masked = sampler.sampleRow(logits, { ...next, keepSet: true });
    assert.equal(masked.kept!.length, n - 3);
    for (const id of [0, 41, 82]) assert.ok(!masked.kept!.includes(id), `${id} is masked`);
  });
});

describe("sampling mask through the sampler pool", () => {
  const pool = new SamplerPool(1);
  after(() => pool.close());

  test("kept sets come back from the helper thread as one sampler gives them", { timeout: 60_000 }, async () => {
    const n = 4096;
    const rows = Array.from({ length: 8 }, (_, i) => logitsRow(n, 100 + i));
    const rng = Rng.fromSeed(7);
    const rowSettings = rows.map((_, i) => ({
      ...settings(cuts[i % cuts.length], rng.nextUniform()),
      keepSet: i % 3 !== 1,
    }));
    const got = await pool.sample(rows, rowSettings);
    const want = rows.map((logits, i) => new Sampler().sampleRow(logits, rowSettings[i]));
    assert.deepEqual(got, want);
    assert.equal(pool.helpers, 1);
    got.forEach((t, i) => assert.equal(t.kept instanceof Int32Array, i % 3 !== 1, `row ${i}`));
  });
});
