import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { argmax, copyRow, isKept, LOGPROB_FLOOR, SamplingScratch, truncate } from "../../kernels/sampling.ts";
import { Rng, sequenceRng } from "../../src/engine/rng.ts";
import { type SampledToken, Sampler, type SamplerState, sampleToken, SequenceSampler } from "../../src/engine/sampler.ts";
import { SamplingParams, type SamplingParamsInput } from "../../src/engine/sampling-params.ts";

const VOCAB = 151_936;

function state(input: SamplingParamsInput, opts: { seed?: number; output?: number[]; prompt?: number[]; eos?: number[] } = {}): SamplerState {
  return {
    params: SamplingParams.parse(input),
    outputIds: opts.output ?? [],
    promptIds: opts.prompt ?? [],
    rng: Rng.fromSeed(opts.seed ?? 1),
    eosTokenIds: opts.eos,
  };
}

/** log_softmax(values / temperature) in float64, the test's own reference. */
function logSoftmax(values: ArrayLike<number>, temperature = 1): number[] {
  const x = Array.from(values, (v) => v / temperature);
  const max = x.reduce((m, v) => (v > m ? v : m), -Infinity);
  const lse = max + Math.log(x.reduce((z, v) => (Number.isNaN(v) ? z : z + Math.exp(v - max)), 0));
  return x.map((v) => v - lse);
}

/** A reproducible row of logits; `step` > 0 quantizes it so that many tokens tie. */
function randomRow(n: number, seed: number, spread = 8, step = 0): Float32Array {
  const rng = Rng.fromSeed(seed);
  const row = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    const v = (rng.nextUniform() - 0.5) * spread + (i % 997 === 0 ? spread : 0);
    row[i] = step > 0 ? Math.round(v / step) * step : v;
  }
  return row;
}

function draws(row: Float32Array, s: SamplerState, count: number): number[] {
  const sampler = new Sampler();
  return Array.from({ length: count }, () => sampler.sample(row, s).tokenId);
}

function frequencies(tokens: number[], n: number): number[] {
  const f = new Array(n).fill(0);
  for (const t of tokens) f[t] += 1 / tokens.length;
  return f;
}

function closeTo(actual: number, expected: number, tolerance: number, what = "") {
  assert.ok(Math.abs(actual - expected) <= tolerance, `${what} ${actual} is not within ${tolerance} of ${expected}`);
}

const row5 = (probs: number[]) => Float32Array.from(probs, Math.log);

describe("greedy", () => {
  test("picks the argmax, ties going to the lowest id", () => {
    const out = sampleToken(Float32Array.of(1, 5, 3, 5, -Infinity), state({ temperature: 0 }));
    assert.equal(out.tokenId, 1);
  });

  test("reports log-probs of the processed logits at temperature 1, untruncated (as vLLM)", () => {
    const row = randomRow(1000, 3);
    const out = sampleToken(row, state({ temperature: 0, top_k: 5, top_p: 0.5, logprobs: 3 }));
    const ref = logSoftmax(row);
    assert.equal(out.tokenId, argmax(row, row.length));
    closeTo(out.logprob, ref[out.tokenId], 1e-9);
    const order = ref.map((_, i) => i).sort((a, b) => ref[b] - ref[a] || a - b).slice(0, 3);
    assert.deepEqual(out.topLogprobs!.map((t) => t.tokenId), order);
    out.topLogprobs!.forEach((t) => closeTo(t.logprob, ref[t.tokenId], 1e-9));
  });
});

describe("log-probabilities", () => {
  test("processed logprob equals a float64 log-softmax of logits / temperature within 1e-5", () => {
    const row = randomRow(5000, 4);
    const ref = logSoftmax(row, 0.7);
    const s = state({ temperature: 0.7, logprobs: 5 }, { seed: 11 });
    const sampler = new Sampler();
    for (let j = 0; j < 50; j++) {
      const out = sampler.sample(row, s);
      closeTo(out.logprob, ref[out.tokenId], 1e-5, `token ${out.tokenId}`);
      const top = out.topLogprobs!;
      const order = ref.map((_, i) => i).sort((a, b) => ref[b] - ref[a] || a - b).slice(0, 5);
      assert.deepEqual(top.map((t) => t.tokenId), order);
      top.forEach((t) => closeTo(t.logprob, ref[t.tokenId], 1e-5));
    }
  });

  test("raw logprob is the log-softmax of the model's logits, before bias, penalties and truncation", () => {
    const row = randomRow(3000, 5);
    const ref = logSoftmax(row);
    const s = state({ temperature: 0.5, top_k: 3, logit_bias: { "17": 5 }, repetition_penalty: 1.3, logprobs_mode: "raw", logprobs: 4 }, {
      prompt: [1, 2, 3],
    });
    const out = sampleToken(row, s);
    closeTo(out.logprob, ref[out.tokenId], 1e-5);
    const order = ref.map((_, i) => i).sort((a, b) => ref[b] - ref[a] || a - b).slice(0, 4);
    assert.deepEqual(out.topLogprobs!.map((t) => t.tokenId), order);
    out.topLogprobs!.forEach((t) => closeTo(t.logprob, ref[t.tokenId], 1e-5));
  });

  test("top log-probs come from the distribution sampled from: tokens outside it are at the floor", () => {
    const out = sampleToken(row5([0.5, 0.3, 0.1, 0.06, 0.04]), state({ top_k: 2, logprobs: 4 }));
    assert.deepEqual(out.topLogprobs!.map((t) => t.tokenId), [0, 1, 2, 3]);
    closeTo(out.topLogprobs![0].logprob, Math.log(0.5 / 0.8), 1e-6);
    closeTo(out.topLogprobs![1].logprob, Math.log(0.3 / 0.8), 1e-6);
    assert.deepEqual(out.topLogprobs!.slice(2).map((t) => t.logprob), [LOGPROB_FLOOR, LOGPROB_FLOOR]);
  });

  test("-inf and NaN logits are never chosen, and their log-probs are floored at -9999, never NaN", () => {
    const row = Float32Array.of(-Infinity, 2, NaN, 1, -Infinity, 0.5);
    const tokens = draws(row, state({ logprobs: 6 }, { seed: 5 }), 3000);
    assert.ok(tokens.every((t) => t === 1 || t === 3 || t === 5));
    const out = sampleToken(row, state({ logprobs: 6 }));
    for (const t of out.topLogprobs!) {
      assert.ok(!Number.isNaN(t.logprob));
      if ([0, 2, 4].includes(t.tokenId)) assert.equal(t.logprob, LOGPROB_FLOOR);
    }
    const raw = sampleToken(row, state({ logprobs: 6, logprobs_mode: "raw" }));
    assert.ok(raw.topLogprobs!.every((t) => !Number.isNaN(t.logprob) && t.logprob >= LOGPROB_FLOOR));
  });

  test("one top log-prob is the first of the longer list, ties, NaN, +inf, bias and raw mode included", () => {
    const rows = [
      Float32Array.of(1, 5, 3, 5, -Infinity),
      Float32Array.of(NaN, 2, Infinity, 1, Infinity),
      Float32Array.of(-Infinity, -Infinity, NaN),
      randomRow(4000, 11, 8, 0.5),
    ];
    const cases: SamplingParamsInput[] = [
      { temperature: 1 },
      { temperature: 0 },
      { temperature: 0.7, logit_bias: { 3: 4 } },
      { temperature: 1, logprobs_mode: "raw" },
    ];
    for (const row of rows) {
      for (const input of cases) {
        const one = sampleToken(row, state({ ...input, logprobs: 1 }, { seed: 3 }));
        const four = sampleToken(row, state({ ...input, logprobs: 4 }, { seed: 3 }));
        assert.equal(one.tokenId, four.tokenId);
        assert.deepEqual(one.topLogprobs, four.topLogprobs!.slice(0, 1), `${JSON.stringify(input)} on [${row.slice(0, 5)}]`);
      }
    }
  });

  test("a row with every token masked still answers the lowest id, at the floor", () => {
    const out = sampleToken(Float32Array.of(-Infinity, -Infinity, NaN), state({ logprobs: 2 }));
    assert.equal(out.tokenId, 0);
    assert.equal(out.logprob, LOGPROB_FLOOR);
    assert.ok(out.topLogprobs!.every((t) => t.logprob === LOGPROB_FLOOR));
  });
});

describe("truncation", () => {
  test("top_k=1 is greedy with logprob 0", () => {
    const row = randomRow(2000, 6);
    const s = state({ top_k: 1, temperature: 1.5 }, { seed: 9 });
    for (const out of Array.from({ length: 20 }, () => sampleToken(row, s))) {
      assert.equal(out.tokenId, argmax(row, row.length));
      assert.equal(out.logprob, 0);
    }
  });

  test("top_k keeps exactly k tokens, ties at the boundary going to the lowest ids", () => {
    const tokens = draws(Float32Array.of(1, 2, 2, 2, 3), state({ top_k: 2 }, { seed: 3 }), 2000);
    assert.deepEqual([...new Set(tokens)].sort(), [1, 4]);
  });

  test("top_p keeps the smallest nucleus reaching p, and samples it in proportion", () => {
    const row = row5([0.5, 0.3, 0.1, 0.06, 0.04]);
    const tokens = draws(row, state({ top_p: 0.85 }, { seed: 21 }), 20000);
    const f = frequencies(tokens, 5);
    [0.5 / 0.9, 0.3 / 0.9, 0.1 / 0.9, 0, 0].forEach((p, i) => closeTo(f[i], p, 0.015, `token ${i}`));
    const out = sampleToken(row, state({ top_p: 0.85 }));
    closeTo(out.logprob, Math.log([0.5, 0.3, 0.1][out.tokenId] / 0.9), 1e-6);
  });

  test("min_p drops tokens below min_p times the top probability", () => {
    const tokens = draws(row5([0.4, 0.3, 0.2, 0.06, 0.04]), state({ min_p: 0.2 }, { seed: 22 }), 20000);
    const f = frequencies(tokens, 5);
    [0.4 / 0.9, 0.3 / 0.9, 0.2 / 0.9, 0, 0].forEach((p, i) => closeTo(f[i], p, 0.015, `token ${i}`));
  });

  // The kernel against a brute-force sort of the whole vocabulary, on the heap (k <= 1024) and histogram paths.
  const cases: [number, number, number, number][] = [
    // temperature, top_k, top_p, min_p
    [1, 50, 1, 0], [0.8, 1024, 1, 0], [1, 1025, 1, 0], [1.2, 5000, 1, 0], [1, 0, 0.9, 0], [0.6, 3000, 0.3, 0],
    [1, 20, 0.95, 0], [1, 0, 1, 0.05], [0.9, 0, 0.8, 0.01], [1, 2000, 0.7, 0.01], [1, 700, 0.5, 0.02],
  ];
  for (const [name, row] of [["distinct", randomRow(VOCAB, 7)], ["tied (quantized)", randomRow(VOCAB, 8, 8, 1 / 16)]] as const) {
    test(`keeps the same tokens as a brute-force sort of ${VOCAB} ${name} logits`, () => {
      const order = Array.from({ length: VOCAB }, (_, i) => i).sort((a, b) => row[b] - row[a] || a - b);
      const s = new SamplingScratch(VOCAB);
      copyRow(row, s);
      s.argmax = argmax(s.logits, VOCAB);
      s.max = s.logits[s.argmax];
      for (const [temperature, k, p, minP] of cases) {
        const weights = order.map((i) => Math.exp((row[i] - s.max) * (1 / temperature)));
        let kept = minP > 0 ? weights.findIndex((w) => w < minP) : VOCAB;
        if (kept < 0) kept = VOCAB;
        if (k > 0) kept = Math.min(kept, k);
        const mass = (count: number) => weights.slice(0, count).reduce((a, b) => a + b, 0);
        if (p < 1) {
          let acc = 0;
          const target = p * mass(kept);
          kept = weights.findIndex((w, j) => j < kept && (acc += w) >= target) + 1 || kept;
        }
        const z = truncate(s, VOCAB, temperature, k, p, minP);
        const what = `T=${temperature} k=${k} p=${p} min_p=${minP}`;
        assert.equal(order.filter((i) => isKept(s, i)).length, kept, what);
        assert.ok(isKept(s, order[kept - 1]) && (kept === VOCAB || !isKept(s, order[kept])), what);
        closeTo(z / mass(kept), 1, 1e-9, what);
      }
    });
  }
});

describe("logits processors", () => {
  test("logit_bias can force a token, and ban one", () => {
    const row = randomRow(5000, 12);
    assert.equal(sampleToken(row, state({ temperature: 0, logit_bias: { "4321": 100 } })).tokenId, 4321);
    assert.ok(draws(row, state({ logit_bias: { "4321": 100 } }, { seed: 2 }), 50).every((t) => t === 4321));
    const top = argmax(row, row.length);
    assert.notEqual(sampleToken(row, state({ temperature: 0, logit_bias: { [top]: -100 } })).tokenId, top);
  });

  test("repetition penalty divides positive and multiplies negative logits of prompt and output tokens", () => {
    const out = sampleToken(Float32Array.of(2, -1, 0.5, 3), state({ temperature: 0, repetition_penalty: 2, logprobs: 4 }, {
      prompt: [0, 0],
      output: [1, 1],
    }));
    const ref = logSoftmax([1, -2, 0.5, 3]);
    out.topLogprobs!.forEach((t) => closeTo(t.logprob, ref[t.tokenId], 1e-6, `token ${t.tokenId}`));
  });

  test("frequency and presence penalties subtract per generated occurrence", () => {
    const out = sampleToken(Float32Array.of(2, 2, 2, 2), state({ temperature: 0, frequency_penalty: 0.5, presence_penalty: 0.25, logprobs: 4 }, {
      prompt: [3],
      output: [1, 1, 2],
    }));
    const ref = logSoftmax([2, 0.75, 1.25, 2]);
    assert.equal(out.tokenId, 0);
    out.topLogprobs!.forEach((t) => closeTo(t.logprob, ref[t.tokenId], 1e-6, `token ${t.tokenId}`));
  });

  test("min_tokens blocks eos and stop_token_ids until enough tokens are generated", () => {
    const row = Float32Array.of(1, 2, 3, 4); // eos 3 first, stop id 2 second
    const early = state({ temperature: 0, min_tokens: 2, stop_token_ids: [2] }, { eos: [3], output: [0] });
    assert.equal(sampleToken(row, early).tokenId, 1);
    assert.equal(sampleToken(row, { ...early, outputIds: [0, 0] }).tokenId, 3);
    assert.ok(draws(row, { ...early, params: SamplingParams.parse({ min_tokens: 2 }) }, 500).every((t) => t !== 3));
  });
});

describe("seeded streams", () => {
  const row = randomRow(1000, 13, 4);
  const run = (seed: number) => draws(row, state({}, { seed }), 64);

  test("the same seed gives the same tokens; another seed gives others", () => {
    assert.deepEqual(run(7), run(7));
    assert.notDeepEqual(run(7), run(8));
  });

  test("a seeded sequence's tokens do not depend on other sequences sampled in between", () => {
    const mine = state({}, { seed: 7 });
    const other = state({ top_p: 0.5 }, { seed: 99 });
    const sampler = new Sampler();
    const interleaved = Array.from({ length: 64 }, () => {
      sampler.sample(randomRow(77, 1), other);
      return sampler.sample(row, mine).tokenId;
    });
    assert.deepEqual(interleaved, run(7));
  });

  test("each token draws exactly one number from the stream, greedy included", () => {
    for (const input of [{ temperature: 0 }, { top_k: 5 }, { top_p: 0.9 }, {}, { logprobs_mode: "raw" as const }]) {
      const s = state(input, { seed: 5 });
      for (let j = 0; j < 3; j++) sampleToken(row, s);
      const expected = Rng.fromSeed(5);
      for (let j = 0; j < 3; j++) expected.nextUint32();
      assert.deepEqual(s.rng.state(), expected.state(), JSON.stringify(input));
    }
  });
});

describe("SequenceSampler", () => {
  test("owns its stream: sample i of a seeded request draws as seed + i", () => {
    const row = randomRow(500, 15, 4);
    const params = SamplingParams.parse({ seed: 40 });
    const second = new SequenceSampler(params, [], { index: 1 });
    const tokens = Array.from({ length: 32 }, () => second.sample(row, []).tokenId);
    assert.deepEqual(tokens, draws(row, state({}, { seed: 41 }), 32));
  });

  test("masks the model's eos until min_tokens are generated", () => {
    const sampler = new SequenceSampler(SamplingParams.parse({ temperature: 0, min_tokens: 1 }), [5], { eosTokenIds: [2] });
    assert.equal(sampler.sample(Float32Array.of(0, 1, 9), []).tokenId, 1);
    assert.equal(sampler.sample(Float32Array.of(0, 1, 9), [1]).tokenId, 2);
  });
});

describe("the Qwen vocabulary of 151,936 tokens", () => {
  const row = randomRow(VOCAB, 14, 16);
  const variants: SamplingParamsInput[] = [
    { temperature: 0 }, {}, { top_k: 50 }, { top_p: 0.9 }, { min_p: 0.05 }, { top_k: 5000, top_p: 0.95 }, { temperature: 0.01 },
  ];
  for (const input of variants) {
    test(`samples with ${JSON.stringify(input)}`, () => {
      const out: SampledToken = sampleToken(row, state({ ...input, logprobs: 20 }, { seed: 3 }));
      assert.ok(out.tokenId >= 0 && out.tokenId < VOCAB);
      assert.ok(out.logprob <= 0 && out.logprob > LOGPROB_FLOOR);
      assert.equal(out.topLogprobs!.length, 20);
      if (input.top_k === undefined && input.top_p === undefined && input.min_p === undefined) {
        const t = input.temperature === 0 ? 1 : input.temperature ?? 1;
        closeTo(out.logprob, logSoftmax(row, t)[out.tokenId], 1e-5);
      }
    });
  }
});

describe("rng", () => {
  test("is xoshiro128**: the reference stream from state 1, 2, 3, 4", () => {
    const rng = Rng.fromState([1, 2, 3, 4]);
    assert.deepEqual(Array.from({ length: 6 }, () => rng.nextUint32()), [11520, 0, 5927040, 70819200, 2031721883, 1637235492]);
  });

  test("a seed gives the same numbers on every runtime (pinned values)", () => {
    const first = (seed: number) => {
      const rng = Rng.fromSeed(seed);
      return Array.from({ length: 3 }, () => rng.nextUint32());
    };
    assert.deepEqual(first(0), [931629841, 3429633228, 133088402]);
    assert.deepEqual(first(42), [738202978, 3434193943, 4111927739]);
    assert.deepEqual(first(-1), [2577127593, 2760734934, 2236416143]);
    assert.deepEqual(first(2 ** 40 + 7), [1970061460, 1391462757, 447437013]);
    assert.notDeepEqual(first(2 ** 40 + 7), first(7));
  });

  test("uniforms lie strictly inside (0, 1) and average one half", () => {
    const rng = Rng.fromSeed(123);
    let sum = 0;
    for (let j = 0; j < 100_000; j++) {
      const u = rng.nextUniform();
      assert.ok(u > 0 && u < 1);
      sum += u;
    }
    closeTo(sum / 100_000, 0.5, 0.005);
  });

  test("sample i of a seeded request uses seed + i, as vLLM; unseeded streams differ", () => {
    assert.deepEqual(sequenceRng(10, 2).state(), Rng.fromSeed(12).state());
    assert.notDeepEqual(sequenceRng(null).state(), sequenceRng(undefined).state());
  });
});
