/**
 * The sampler pool: rows split between the calling thread and a helper thread give exactly the tokens and
 * log-probabilities one Sampler gives, on Node (through tsx), Deno and Bun alike.
 */
import { after, describe, test } from "node:test";
import assert from "node:assert/strict";
import { SamplerPool } from "../../src/engine/sampler-pool.ts";
import { Sampler, SequenceSampler } from "../../src/engine/sampler.ts";
import { SamplingParams, type SamplingParamsInput } from "../../src/engine/sampling-params.ts";

const VOCAB = 151_936;
const SLOW = { timeout: 60_000 };

/** Reproducible logits with a spread like a model's. */
function logitsRow(seed: number): Float32Array {
  let x = seed >>> 0;
  return Float32Array.from({ length: VOCAB }, () => ((x = (Math.imul(x, 1664525) + 1013904223) >>> 0) / 2 ** 32) * 12 - 6);
}

const settings: SamplingParamsInput[] = [
  { temperature: 1, logprobs: 2 },
  { temperature: 0, logprobs: 5 },
  { temperature: 0.7, top_k: 40, top_p: 0.9, logprobs: 20 },
  { temperature: 1.3, min_p: 0.05, logprobs_mode: "raw", logprobs: 3 },
  { temperature: 1, repetition_penalty: 1.2, frequency_penalty: 0.4, presence_penalty: 0.3, logit_bias: { "7": 5 } },
  { temperature: 1, min_tokens: 3, stop_token_ids: [11, 12] },
];

describe("sampler pool", () => {
  const pool = new SamplerPool(1);
  after(() => pool.close());

  test("rows shared with a helper thread sample exactly as one sampler does", SLOW, async () => {
    const rows = Array.from({ length: 12 }, (_, i) => logitsRow(i + 1));
    // Two sequences per setting, each with its own stream; the same seeds on both sides.
    const sequences = () =>
      rows.map((_, i) => new SequenceSampler(SamplingParams.parse({ ...settings[i % settings.length], seed: 100 + i }), [5, 6, 7], { eosTokenIds: [11] }));
    const [pooled, single] = [sequences(), sequences()];
    const reference = new Sampler();
    const outputs: number[][] = rows.map(() => [9, 7]);
    for (let step = 0; step < 3; step++) {
      const got = await pool.sample(rows, pooled.map((s, i) => s.next(outputs[i], VOCAB)));
      const want = single.map((s, i) => reference.sampleRow(rows[i], s.next(outputs[i], VOCAB)));
      assert.deepEqual(got, want, `step ${step}`);
      got.forEach((t, i) => outputs[i].push(t.tokenId));
    }
    assert.equal(pool.helpers, 1, "a helper thread sampled a share of the rows");
  });

  test("rows that already lie in one shared buffer are sampled there, exactly as copied rows", SLOW, async () => {
    const rows = Array.from({ length: 6 }, (_, i) => logitsRow(i + 40));
    // Out of order and with a gap, as a runner's rows may lie; the buffer holds one row more than is sampled.
    const shared = new Float32Array(new SharedArrayBuffer((rows.length + 1) * VOCAB * 4));
    const views = rows.map((row, i) => {
      const view = shared.subarray((rows.length - i) * VOCAB, (rows.length - i + 1) * VOCAB);
      view.set(row);
      return view;
    });
    const spec = (i: number) => new SequenceSampler(SamplingParams.parse({ ...settings[i % settings.length], seed: 7 + i }), [1]).next([], VOCAB);
    const want = rows.map((row, i) => new Sampler().sampleRow(row, spec(i)));
    assert.deepEqual(await pool.sample(views, rows.map((_, i) => spec(i))), want);
    assert.deepEqual(await pool.sample(rows, rows.map((_, i) => spec(i))), want);
  });

  test("allowed masks and kept sets cross to and from a helper unchanged", SLOW, async () => {
    const rows = Array.from({ length: 8 }, (_, i) => logitsRow(i + 60));
    // One buffer of masks for every row, as a grammar's memory holds them: row i allows the ids not divisible by i + 2.
    const words = Math.ceil(VOCAB / 32);
    const masks = new Uint32Array(rows.length * words);
    for (let i = 0; i < rows.length; i++) {
      for (let t = 0; t < VOCAB; t++) if (t % (i + 2) !== 0) masks[i * words + (t >>> 5)] |= 1 << (t & 31);
    }
    const spec = (i: number) => ({
      ...new SequenceSampler(SamplingParams.parse({ ...settings[i % settings.length], seed: 20 + i }), [1]).next([], VOCAB),
      allowed: masks.subarray(i * words, (i + 1) * words),
      keepSet: true,
    });
    const want = rows.map((row, i) => new Sampler().sampleRow(row, spec(i)));
    const got = await pool.sample(rows, rows.map((_, i) => spec(i)));
    assert.deepEqual(got, want);
    assert.ok(got.every((t, i) => t.tokenId % (i + 2) !== 0 && t.kept instanceof Int32Array && t.kept.includes(t.tokenId)));
    assert.ok(got.some((t) => t.kept!.length > 1000), "some rows keep a large set");
    assert.equal(masks.byteLength, rows.length * words * 4, "the caller's masks stay its own (not moved away)");
  });

  test("a batch too small to share stays on the calling thread; a closed pool starts its thread again", SLOW, async () => {
    const small = new SamplerPool(1);
    const row = logitsRow(99);
    const spec = new SequenceSampler(SamplingParams.parse({ temperature: 1, seed: 3 }), [1]).next([], VOCAB);
    const [token] = await small.sample([row], [spec]);
    assert.equal(small.helpers, 0);
    assert.deepEqual(token, new Sampler().sampleRow(row, spec));
    const many = await small.sample([row, row, row, row], [spec, spec, spec, spec]);
    assert.equal(small.helpers, 1);
    assert.deepEqual(many, [token, token, token, token]);
    await small.close();
    assert.equal(small.helpers, 0);
    assert.deepEqual(await small.sample([row, row, row, row], [spec, spec, spec, spec]), many);
    await small.close();
  });

  test("rows and settings that do not pair up are refused", async () => {
    await assert.rejects(pool.sample([logitsRow(1)], []), /1 rows of logits, 0 settings/);
  });
});
