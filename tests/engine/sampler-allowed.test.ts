/**
 * The allowed-token mask (RowSampling.allowed, a grammar's next-token bitmask) on the CPU sampler: forbidden tokens
 * are never drawn, processed log-probabilities are those of the masked and renormalised distribution (checked
 * against a reference written here from the definition), raw ones the model's own, and the mask reaches the
 * sampler pool's helper threads.
 */
import { after, describe, test } from "node:test";
import assert from "node:assert/strict";
import { LOGPROB_FLOOR } from "../../kernels/sampling.ts";
import { Rng } from "../../src/engine/rng.ts";
import { SamplerPool } from "../../src/engine/sampler-pool.ts";
import { type RowSampling, Sampler, SequenceSampler } from "../../src/engine/sampler.ts";
import { SamplingParams, type SamplingParamsInput } from "../../src/engine/sampling-params.ts";
import { isAllowed, referenceLogprobs } from "../support/sampling-reference.ts";

const TOLERANCE = 1e-5;

/** Logits with a few tokens far above the bulk, so that a mask that forbids them changes the answer. */
function logitsRow(n: number, seed: number): Float32Array {
  const rng = Rng.fromSeed(seed);
  return Float32Array.from({ length: n }, (_, i) => (rng.nextUniform() - 0.5) * 8 + (i % 37 === 0 ? 9 : 0));
}

/** A bitmask allowing each token with probability `share`, and forbidding every token whose id is a multiple of 37. */
function randomMask(n: number, seed: number, share: number): Uint32Array {
  const rng = Rng.fromSeed(seed);
  const mask = new Uint32Array(Math.ceil(n / 32));
  for (let t = 0; t < n; t++) {
    if (t % 37 !== 0 && rng.nextUniform() < share) mask[t >>> 5] |= 1 << (t & 31);
  }
  return mask;
}

/** The model's log-softmax, in float64. */
function logSoftmax(logits: Float32Array): number[] {
  const max = logits.reduce((m, v) => Math.max(m, v), -Infinity);
  const lse = max + Math.log(logits.reduce((z, v) => z + Math.exp(v - max), 0));
  return Array.from(logits, (v) => v - lse);
}

function settings(input: SamplingParamsInput, uniform: number, allowed: Uint32Array | null): RowSampling {
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
  };
}

const cuts: SamplingParamsInput[] = [
  { temperature: 1, logprobs: 5 },
  { temperature: 1, top_k: 20, logprobs: 5 },
  { temperature: 1, top_p: 0.9, logprobs: 5 },
  { temperature: 1, min_p: 0.1, logprobs: 5 },
  { temperature: 0.7, top_k: 50, top_p: 0.8, min_p: 0.02, logprobs: 20 },
  // Past the heap's limit: the histogram path.
  { temperature: 1.2, top_k: 2000, top_p: 0.95, logprobs: 3 },
];

describe("allowed-token mask on the CPU sampler", () => {
  test("a masked row never samples a forbidden token, with top-k, top-p and min-p", () => {
    const n = 5000;
    const sampler = new Sampler();
    cuts.forEach((input, c) => {
      const logits = logitsRow(n, 10 + c);
      const mask = randomMask(n, 20 + c, 0.3);
      const rng = Rng.fromSeed(30 + c);
      const seen = new Set<number>();
      for (let d = 0; d < 2000; d++) {
        const { tokenId } = sampler.sampleRow(logits, settings(input, rng.nextUniform(), mask));
        assert.ok(isAllowed(mask, tokenId), `${JSON.stringify(input)} draw ${d}: token ${tokenId} is forbidden`);
        seen.add(tokenId);
      }
      assert.ok(seen.size > 1, `${JSON.stringify(input)}: draws vary`);
      // Without the mask the forbidden high tokens dominate: the mask is what keeps them out.
      const free = sampler.sampleRow(logits, settings(input, 0.5, null));
      assert.equal(free.tokenId % 37, 0, "unmasked, a token far above the bulk is drawn");
    });
  });

  test("processed log-probabilities are the masked, renormalised distribution's (top logprobs too)", () => {
    const n = 3000;
    const sampler = new Sampler();
    cuts.forEach((input, c) => {
      const logits = logitsRow(n, 40 + c);
      const mask = randomMask(n, 50 + c, 0.5);
      const rng = Rng.fromSeed(60 + c);
      for (let d = 0; d < 20; d++) {
        const row = settings(input, rng.nextUniform(), mask);
        const want = referenceLogprobs(logits, mask, row);
        const got = sampler.sampleRow(logits, row);
        const what = `${JSON.stringify(input)} draw ${d}`;
        assert.ok(want.has(got.tokenId), `${what}: token ${got.tokenId} is in the reference's kept set`);
        assert.ok(
          Math.abs(got.logprob - want.get(got.tokenId)!) <= TOLERANCE,
          `${what}: ${got.logprob} vs ${want.get(got.tokenId)}`,
        );
        // The top tokens are the best allowed ones, at their kept log-probability (the floor past the cut).
        const ranked = [...logits.keys()].filter((t) => isAllowed(mask, t)).sort((a, b) =>
          logits[b] - logits[a] || a - b
        );
        assert.deepEqual(got.topLogprobs!.map((t) => t.tokenId), ranked.slice(0, row.topLogprobs!), `${what}: top ids`);
        for (const t of got.topLogprobs!) {
          const expected = want.get(t.tokenId) ?? LOGPROB_FLOOR;
          assert.ok(
            Math.abs(t.logprob - expected) <= TOLERANCE,
            `${what}: top ${t.tokenId} ${t.logprob} vs ${expected}`,
          );
        }
      }
    });
  });

  test("greedy takes the best allowed token, with log-probs over the allowed ones at temperature 1", () => {
    const n = 1000;
    const logits = logitsRow(n, 70);
    const mask = randomMask(n, 71, 0.4);
    const got = new Sampler().sampleRow(logits, { ...settings({ temperature: 0, logprobs: 2 }, 0.5, mask) });
    const want = referenceLogprobs(logits, mask, { ...settings({ temperature: 1 }, 0.5, mask) });
    const best = [...want.entries()].reduce((a, b) => (b[1] > a[1] ? b : a));
    assert.equal(got.tokenId, best[0]);
    assert.ok(Math.abs(got.logprob - best[1]) <= TOLERANCE);
  });

  test("raw mode reports the model's unmasked log-softmax", () => {
    const n = 2000;
    const logits = logitsRow(n, 80);
    const mask = randomMask(n, 81, 0.3);
    const raw = logSoftmax(logits);
    const sampler = new Sampler();
    const rng = Rng.fromSeed(82);
    for (let d = 0; d < 50; d++) {
      const got = sampler.sampleRow(
        logits,
        settings({ temperature: 0.9, top_p: 0.9, logprobs: 4, logprobs_mode: "raw" }, rng.nextUniform(), mask),
      );
      assert.ok(isAllowed(mask, got.tokenId), "raw mode samples under the mask too");
      assert.ok(Math.abs(got.logprob - raw[got.tokenId]) <= TOLERANCE, `${got.logprob} vs ${raw[got.tokenId]}`);
      // The model's own top tokens, forbidden ones among them.
      const ranked = [...logits.keys()].sort((a, b) => logits[b] - logits[a] || a - b).slice(0, 4);
      assert.deepEqual(got.topLogprobs!.map((t) => t.tokenId), ranked);
      got.topLogprobs!.forEach((t) => assert.ok(Math.abs(t.logprob - raw[t.tokenId]) <= TOLERANCE));
    }
  });

  test("a mask with no allowed token answers as a row with every token masked does", () => {
    const n = 500;
    const logits = logitsRow(n, 90);
    const sampler = new Sampler();
    for (const input of [{ temperature: 1, top_p: 0.9, logprobs: 3 }, { temperature: 0, logprobs: 2 }]) {
      const everyId = Array.from({ length: n }, (_, t) => t);
      const params = SamplingParams.parse({ ...input, min_tokens: 1, stop_token_ids: everyId });
      const today = new SequenceSampler(params, [], {}).sample(logits, []);
      const masked = sampler.sampleRow(logits, settings(input, 0.3, new Uint32Array(Math.ceil(n / 32))));
      assert.deepEqual(masked, today);
      assert.equal(masked.tokenId, 0);
      assert.equal(masked.logprob, LOGPROB_FLOOR);
    }
  });

  test("bits past the vocabulary are ignored; a short mask allows nothing past its words", () => {
    const n = 70; // 3 words, the last one 6 bits
    const logits = Float32Array.from({ length: n }, (_, t) => t / 10);
    const full = new Uint32Array(3).fill(0xffffffff);
    assert.equal(new Sampler().sampleRow(logits, settings({ temperature: 0 }, 0.5, full)).tokenId, n - 1);
    const short = Uint32Array.of(0xffffffff);
    assert.equal(new Sampler().sampleRow(logits, settings({ temperature: 0 }, 0.5, short)).tokenId, 31);
  });

  test("edits never bring a forbidden token back", () => {
    const n = 100;
    const logits = new Float32Array(n);
    const mask = new Uint32Array(4);
    mask[0] = 1 << 5;
    const row = {
      ...settings({ temperature: 1 }, 0.99, mask),
      edits: [{ tokenId: 9, bias: 100, mask: false, repetition: 1.5, subtract: -3 }],
    };
    const got = new Sampler().sampleRow(logits, row);
    assert.equal(got.tokenId, 5);
    assert.equal(got.logprob, 0);
  });
});

describe("allowed-token mask through the sampler pool", () => {
  const pool = new SamplerPool(1);
  after(() => pool.close());

  test("masks reach the helper thread (views into one larger buffer included) and sample as one sampler does", {
    timeout: 60_000,
  }, async () => {
    const n = 4096;
    const rows = Array.from({ length: 8 }, (_, i) => logitsRow(n, 100 + i));
    // One buffer for every row's mask, as a grammar might keep them; odd rows have none.
    const words = Math.ceil(n / 32);
    const masks = new Uint32Array(rows.length * words);
    rows.forEach((_, i) => masks.set(randomMask(n, 200 + i, 0.2), i * words));
    const rng = Rng.fromSeed(300);
    const settingsOf = rows.map((_, i) =>
      settings(
        cuts[i % cuts.length],
        rng.nextUniform(),
        i % 2 === 0 ? masks.subarray(i * words, (i + 1) * words) : null,
      )
    );
    const got = await pool.sample(rows, settingsOf);
    const want = rows.map((logits, i) => new Sampler().sampleRow(logits, settingsOf[i]));
    assert.deepEqual(got, want);
    assert.equal(pool.helpers, 1, "a helper thread sampled a share of the rows");
    got.forEach((t, i) => {
      if (i % 2 === 0) {
        assert.ok(isAllowed(settingsOf[i].allowed!, t.tokenId), `row ${i}: token ${t.tokenId} is forbidden`);
      }
    });
    // The masked rows the helper sampled would have drawn differently without their mask.
    const unmasked = rows.map((logits, i) => new Sampler().sampleRow(logits, { ...settingsOf[i], allowed: null }));
    assert.ok(
      got.some((t, i) => i >= 4 && i % 2 === 0 && t.tokenId !== unmasked[i].tokenId),
      "the helper applied a mask",
    );
  });
});
