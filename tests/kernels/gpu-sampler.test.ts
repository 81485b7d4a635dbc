import { after, describe, test } from "node:test";
import assert from "node:assert/strict";
import { GPU_MAX_TOP, type GpuSampleRow, GpuSampler } from "../../kernels/gpu-sampler.ts";
import { logitEdits, type SampledToken as GpuSampledToken } from "../../kernels/row-sampling.ts";
import { LOGPROB_FLOOR } from "../../kernels/sampling.ts";
import { Rng } from "../../src/engine/rng.ts";
import { type SampledToken, Sampler, type SamplerState } from "../../src/engine/sampler.ts";
import { SamplingParams, type SamplingParamsInput } from "../../src/engine/sampling-params.ts";
import { COPY_DST, STORAGE, testDevice } from "../support/gpu-device.ts";

const VOCAB = 151_936;
const EOS = 151_645;
const TOLERANCE = 1e-5;
// lavapipe compiles each kernel on first use, and runs one workgroup (one row) per CPU core.
const SLOW = { timeout: 120_000 };

const { device, noGpu, release } = await testDevice();
const samplers = new Map<number, Promise<GpuSampler>>();
after(async () => {
  for (const sampler of samplers.values()) (await sampler).destroy();
  await release();
});

function gpuSampler(vocabSize: number): Promise<GpuSampler> {
  let sampler = samplers.get(vocabSize);
  if (!sampler) samplers.set(vocabSize, sampler = GpuSampler.create(device!, { vocabSize }));
  return sampler;
}

/** One row's request, as a test writes it. */
interface Case {
  params: SamplingParamsInput;
  seed: number;
  output?: number[];
  prompt?: number[];
}

function stateOf(c: Case): SamplerState {
  return {
    params: SamplingParams.parse(c.params),
    outputIds: c.output ?? [],
    promptIds: c.prompt ?? [],
    rng: Rng.fromSeed(c.seed),
    eosTokenIds: [EOS],
  };
}

/** What the engine would upload for a sequence: its parameters, its processors' edits and its next uniform. */
function gpuRow(state: SamplerState, vocab: number, logitsRow?: number): GpuSampleRow {
  const { params, outputIds, promptIds } = state;
  const masked = outputIds.length < params.min_tokens ? [...(state.eosTokenIds ?? []), ...params.stop_token_ids] : [];
  return {
    logitsRow,
    temperature: params.temperature,
    topK: params.top_k,
    topP: params.top_p,
    minP: params.min_p,
    uniform: state.rng.nextUniform(),
    topLogprobs: params.logprobs,
    logprobsMode: params.logprobs_mode,
    edits: logitEdits({
      logitBias: params.logit_bias,
      maskedIds: masked,
      repetitionPenalty: params.repetition_penalty,
      promptIds,
      outputIds,
      frequencyPenalty: params.frequency_penalty,
      presencePenalty: params.presence_penalty,
    }, vocab),
  };
}

function assertSame(actual: GpuSampledToken, expected: SampledToken, what: string): void {
  assert.equal(actual.tokenId, expected.tokenId, `${what}: token`);
  const close = (a: number, e: number, which: string) =>
    assert.ok(Math.abs(a - e) <= TOLERANCE, `${what}: ${which} log-prob ${a} is not within ${TOLERANCE} of ${e}`);
  close(actual.logprob, expected.logprob, "sampled");
  assert.equal(actual.topLogprobs === undefined, expected.topLogprobs === undefined, `${what}: top log-probs present`);
  if (!expected.topLogprobs) return;
  assert.deepEqual(actual.topLogprobs!.map((t) => t.tokenId), expected.topLogprobs.map((t) => t.tokenId), `${what}: top ids`);
  expected.topLogprobs.forEach((t, j) => close(actual.topLogprobs![j].logprob, t.logprob, `top ${j}`));
}

/** Samples every row on the CPU twin and, all in one call, on the GPU, and asserts they agree. */
async function agree(rows: Float32Array[], cases: Case[], label = ""): Promise<GpuSampledToken[]> {
  const vocab = rows[0].length;
  const cpu = new Sampler();
  const expected = cases.map((c, r) => cpu.sample(rows[r], stateOf(c)));
  const actual = await (await gpuSampler(vocab)).sampleArrays(rows, cases.map((c) => gpuRow(stateOf(c), vocab)));
  cases.forEach((c, r) => assertSame(actual[r], expected[r], `${label} row ${r} ${JSON.stringify(c.params)} seed ${c.seed}`));
  return actual;
}

// Logits shaped like a language model's: a broad bulk and a few dozen tokens well above it.
function modelLikeRow(n: number, seed: number): Float32Array {
  const rng = Rng.fromSeed(seed);
  const row = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    const gaussian = Math.sqrt(-2 * Math.log(rng.nextUniform())) * Math.cos(2 * Math.PI * rng.nextUniform());
    row[i] = 2.5 * gaussian + (rng.nextUniform() < 3e-4 ? 12 * rng.nextUniform() : 0);
  }
  return row;
}

/** Uniform logits in [-spread/2, spread/2); `step` > 0 rounds them so that many tokens tie. */
function uniformRow(n: number, seed: number, spread: number, step = 0): Float32Array {
  const rng = Rng.fromSeed(seed);
  return Float32Array.from({ length: n }, () => {
    const v = (rng.nextUniform() - 0.5) * spread;
    return step > 0 ? Math.round(v / step) * step : v;
  });
}

describe("GPU sampler against its CPU twin", () => {
  test("greedy picks the argmax, ties to the lowest id, with log-probs at temperature 1 untruncated", { ...SLOW, skip: noGpu }, async () => {
    const row = modelLikeRow(VOCAB, 1);
    for (const id of [150_000, 90_001, 17]) row[id] = 40;
    const [greedy, topK1] = await agree([row, row], [
      { params: { temperature: 0, logprobs: 5 }, seed: 1 },
      { params: { temperature: 1, top_k: 1, logprobs: 3 }, seed: 2 },
    ]);
    assert.equal(greedy.tokenId, 17);
    assert.deepEqual(greedy.topLogprobs!.slice(0, 3).map((t) => t.tokenId), [17, 90_001, 150_000]);
    assert.equal(topK1.tokenId, 17);
    assert.equal(topK1.logprob, 0, "top_k 1 keeps one token, of probability 1");
    assert.deepEqual(topK1.topLogprobs!.map((t) => t.logprob).slice(1), [LOGPROB_FLOOR, LOGPROB_FLOOR]);
  });

  test("temperature, top-k, top-p and min-p over 151,936 logits: same tokens and log-probs, eight rows in one call", { ...SLOW, skip: noGpu }, async () => {
    const cases: SamplingParamsInput[] = [
      { temperature: 1, logprobs: 5 },
      { temperature: 0.7, top_k: 50, logprobs: 5 },
      { temperature: 1, top_p: 0.9, logprobs: 2 },
      { temperature: 1, min_p: 0.05, logprobs: 1 },
      { temperature: 0.6, top_k: 40, top_p: 0.8, min_p: 0.02, logprobs: 20 },
      // Past the CPU's heap limit: the CPU takes its histogram path.
      { temperature: 1.3, top_k: 5000, top_p: 0.95, logprobs: 0 },
      { temperature: 0.05, top_p: 0.99 },
      { temperature: 1, top_k: 1, logprobs: 4 },
    ];
    const rows = cases.map((_, r) => (r % 3 === 2 ? uniformRow(VOCAB, 10 + r, 2) : modelLikeRow(VOCAB, 10 + r)));
    const out = await agree(rows, cases.map((params, r) => ({ params, seed: 100 + r })));
    assert.equal(out[5].topLogprobs!.length, 0, "logprobs 0 gives an empty list");
    assert.equal(out[6].topLogprobs, undefined, "no logprobs asked, none given");
    assert.equal(out[4].topLogprobs!.length, 20);
  });

  test("ties: cuts and top log-probs inside groups of equal logits take the lowest ids", { ...SLOW, skip: noGpu }, async () => {
    const cases: Case[] = [];
    const rows: Float32Array[] = [];
    const kinds: SamplingParamsInput[] = [
      { temperature: 1, top_k: 7, logprobs: GPU_MAX_TOP },
      { temperature: 1, top_p: 0.3, logprobs: 10 },
      { temperature: 0.8, top_k: 30, top_p: 0.1, min_p: 0.3, logprobs: 5 },
      { temperature: 0, logprobs: GPU_MAX_TOP },
    ];
    for (let r = 0; r < 32; r++) {
      rows.push(uniformRow(3000, 200 + r, 6, r % 2 === 0 ? 1 : 0.25));
      cases.push({ params: kinds[r % kinds.length], seed: 300 + r });
    }
    await agree(rows, cases);
  });

  test("-inf, NaN and +inf logits rank as on the CPU: NaN as -inf, +inf as the largest float", { ...SLOW, skip: noGpu }, async () => {
    const row = new Float32Array(VOCAB).fill(-Infinity);
    const rng = Rng.fromSeed(4);
    for (let j = 0; j < 300; j++) row[Math.floor(rng.nextUniform() * VOCAB)] = (rng.nextUniform() - 0.5) * 10;
    row[5] = NaN;
    const withInf = row.slice();
    withInf[70_000] = Infinity;
    withInf[60_000] = Infinity;
    const out = await agree([row, row, row, withInf, withInf], [
      { params: { temperature: 1, logprobs: 5 }, seed: 1 },
      { params: { temperature: 0.5, top_k: 500, logprobs: 20 }, seed: 2 },
      { params: { temperature: 1, top_p: 0.5, min_p: 0.1, logprobs: 3 }, seed: 3 },
      { params: { temperature: 0, logprobs: 3 }, seed: 4 },
      { params: { temperature: 1, logprobs: 3 }, seed: 5 },
    ]);
    assert.equal(out[3].tokenId, 60_000, "two +inf tie: the lower id wins");
  });

  test("a row with every token masked gives the lowest id at the log-prob floor", { ...SLOW, skip: noGpu }, async () => {
    const row = new Float32Array(1000).fill(-Infinity);
    row[3] = 2;
    // min_tokens masks the only finite token (the EOS of this small vocabulary is id 3).
    const cases: Case[] = [{ params: { temperature: 1, logprobs: 3, stop_token_ids: [3], min_tokens: 1 }, seed: 1 }];
    const [out] = await agree([row], cases);
    assert.deepEqual(out, {
      tokenId: 0,
      logprob: LOGPROB_FLOOR,
      topLogprobs: [0, 1, 2].map((tokenId) => ({ tokenId, logprob: LOGPROB_FLOOR })),
    });
  });

  test("logit_bias, the min_tokens mask and the penalties are applied on the GPU as the CPU applies them", { ...SLOW, skip: noGpu }, async () => {
    const rng = Rng.fromSeed(9);
    const prompt = Array.from({ length: 400 }, () => Math.floor(rng.nextUniform() * VOCAB));
    const output = Array.from({ length: 60 }, (_, j) => (j % 3 === 0 ? 42 : Math.floor(rng.nextUniform() * VOCAB)));
    const row = modelLikeRow(VOCAB, 7);
    // The row's favourites, so that every processor changes what gets sampled.
    const favourites = Array.from(row.keys()).sort((a, b) => row[b] - row[a]).slice(0, 4);
    row[EOS] = row[42] = row[favourites[0]] + 1;
    const cases: Case[] = [
      { params: { temperature: 1, logit_bias: { [favourites[1]]: -100, 7: 30 }, logprobs: 3 }, seed: 1 },
      { params: { temperature: 1, min_tokens: 100, max_tokens: 200, logprobs: 3 }, seed: 2, output },
      { params: { temperature: 0.8, repetition_penalty: 1.7, top_k: 20, logprobs: 5 }, seed: 3, prompt, output },
      { params: { temperature: 1, frequency_penalty: 1.5, presence_penalty: 0.5, top_p: 0.9, logprobs: 5 }, seed: 4, output },
      {
        params: {
          temperature: 0.9,
          logit_bias: { 42: 3, [favourites[2]]: 5 },
          min_tokens: 100,
          max_tokens: 200,
          stop_token_ids: [favourites[3]],
          repetition_penalty: 0.8,
          frequency_penalty: -0.5,
          presence_penalty: 1,
          min_p: 0.01,
          logprobs: 8,
        },
        seed: 5,
        prompt,
        output,
      },
    ];
    const out = await agree(cases.map(() => row), cases);
    assert.notEqual(out[1].tokenId, EOS, "min_tokens masks EOS");
  });

  test("raw log-probs are the model's log-softmax before the processors, mixed with processed rows", { ...SLOW, skip: noGpu }, async () => {
    const row = modelLikeRow(VOCAB, 11);
    const base: SamplingParamsInput = { temperature: 0.7, top_k: 30, logit_bias: { 1: 20, 2: -5 }, logprobs: 6 };
    const cases: Case[] = [
      { params: { ...base, logprobs_mode: "raw" }, seed: 1 },
      { params: base, seed: 1 },
      { params: { temperature: 0, repetition_penalty: 2, logprobs_mode: "raw_logprobs", logprobs: 2 }, seed: 2, prompt: [1, 2, 3] },
      { params: { temperature: 1, logprobs_mode: "raw" }, seed: 3 },
    ];
    const out = await agree(cases.map(() => row), cases);
    assert.equal(out[0].tokenId, out[1].tokenId, "the mode changes the log-probs, not the token");
    assert.notEqual(out[0].logprob, out[1].logprob);
  });

  test("rows read any row of a logits buffer that stays on the GPU", { ...SLOW, skip: noGpu }, async () => {
    const vocab = 5000;
    const rows = [0, 1, 2].map((r) => modelLikeRow(vocab, 20 + r));
    const buffer = device!.createBuffer({ size: 3 * vocab * 4, usage: STORAGE | COPY_DST });
    rows.forEach((row, r) => device!.queue.writeBuffer(buffer, r * vocab * 4, row));
    // Four samples of row 2 and one of row 0: n samples of one prompt can share its logits.
    const picks = [2, 2, 0, 2, 2];
    const cases = picks.map((_, j): Case => ({ params: { temperature: 1.2, top_p: 0.95, logprobs: 2 }, seed: 40 + j }));
    const sampler = await gpuSampler(vocab);
    const actual = await sampler.sample(buffer, cases.map((c, j) => gpuRow(stateOf(c), vocab, picks[j])));
    const cpu = new Sampler();
    picks.forEach((p, j) => assertSame(actual[j], cpu.sample(rows[p], stateOf(cases[j])), `sample ${j} of row ${p}`));
    buffer.destroy();
  });

  test("allowed masks: masked rows, mixed with unmasked ones, agree token for token and log-prob for log-prob", { ...SLOW, skip: noGpu }, async () => {
    const words = Math.ceil(VOCAB / 32);
    const rng = Rng.fromSeed(77);
    // A grammar's masks: a few dozen tokens, a third of the vocabulary, all but the row's favourites, none at all.
    const few = new Uint32Array(words);
    for (let j = 0; j < 40; j++) {
      const t = Math.floor(rng.nextUniform() * VOCAB);
      few[t >>> 5] |= 1 << (t & 31);
    }
    const third = Uint32Array.from({ length: words }, () => Math.floor(rng.nextUniform() * 2 ** 32) & Math.floor(rng.nextUniform() * 2 ** 32) | 0x11111111);
    const row = modelLikeRow(VOCAB, 78);
    const favourites = Array.from(row.keys()).sort((a, b) => row[b] - row[a]).slice(0, 30);
    const most = new Uint32Array(words).fill(0xffffffff);
    for (const t of favourites) most[t >>> 5] &= ~(1 << (t & 31));
    const none = new Uint32Array(words);
    const cases: [SamplingParamsInput, Uint32Array | null][] = [
      [{ temperature: 1, logprobs: 5 }, few],
      [{ temperature: 0.7, top_k: 50, logprobs: 20 }, third],
      [{ temperature: 1, top_p: 0.9, logprobs: 3 }, most],
      [{ temperature: 1, min_p: 0.05, logprobs: 2 }, third],
      [{ temperature: 0.6, top_k: 40, top_p: 0.8, min_p: 0.02, logprobs: 20 }, most],
      [{ temperature: 0, logprobs: 4 }, most],
      [{ temperature: 1, top_p: 0.95, logprobs: 6, logprobs_mode: "raw", logit_bias: { [favourites[0]]: 5 } }, few],
      [{ temperature: 1, top_k: 5000, logprobs: 3 }, few],
      [{ temperature: 1, logprobs: 3 }, none],
      [{ temperature: 0.8, top_p: 0.9, logprobs: 5 }, null],
    ];
    const cpu = new Sampler();
    for (let call = 0; call < 3; call++) {
      const rows = cases.map(([params, allowed], r): GpuSampleRow => ({
        ...gpuRow(stateOf({ params, seed: 1000 * call + r }), VOCAB),
        allowed,
      }));
      const expected = rows.map((settings) => cpu.sampleRow(row, settings));
      const actual = await (await gpuSampler(VOCAB)).sampleArrays(cases.map(() => row), rows);
      rows.forEach((settings, r) => {
        const what = `call ${call} row ${r} ${JSON.stringify(cases[r][0])}`;
        assertSame(actual[r], expected[r], what);
        const allowed = settings.allowed;
        if (allowed && r !== 8) assert.ok((allowed[actual[r].tokenId >>> 5] >>> (actual[r].tokenId & 31)) & 1, `${what}: allowed`);
      });
      assert.ok(!favourites.includes(actual[2].tokenId), "the favourites are forbidden");
      assert.equal(actual[8].tokenId, 0, "nothing allowed: the lowest id");
      assert.equal(actual[8].logprob, LOGPROB_FLOOR);
    }
    // A call without masks afterwards still samples with every token allowed.
    await agree([row], [{ params: { temperature: 0 }, seed: 1 }]);
    assert.equal((await agree([row], [{ params: { temperature: 0 }, seed: 1 }]))[0].tokenId, favourites[0]);
  });

  test("kept sets (sampling masks) agree with the CPU twin's, with and without allowed masks", { ...SLOW, skip: noGpu }, async () => {
    const words = Math.ceil(VOCAB / 32);
    const rng = Rng.fromSeed(91);
    const half = Uint32Array.from({ length: words }, () => Math.floor(rng.nextUniform() * 2 ** 32));
    const row = modelLikeRow(VOCAB, 92);
    const flat = uniformRow(VOCAB, 93, 2, 0.25);
    const cases: [SamplingParamsInput, Uint32Array | null, Float32Array, boolean][] = [
      [{ temperature: 1, top_k: 50 }, null, row, true],
      [{ temperature: 0.9, top_p: 0.95, logprobs: 2 }, null, row, true],
      [{ temperature: 1, min_p: 0.05 }, half, row, true],
      [{ temperature: 0.7, top_k: 2000, top_p: 0.9, min_p: 0.01 }, half, flat, true],
      [{ temperature: 1, top_p: 0.3 }, null, flat, true],
      [{ temperature: 1 }, null, row, true],
      [{ temperature: 0, logprobs: 1 }, half, row, true],
      [{ temperature: 1, top_p: 0.9, logprobs_mode: "raw", logprobs: 3 }, half, row, true],
      [{ temperature: 1, top_k: 10 }, null, row, false],
      [{ temperature: 1, top_k: 10 }, new Uint32Array(words), row, true],
    ];
    const rows = cases.map(([params, allowed, , keepSet], r): GpuSampleRow => ({
      ...gpuRow(stateOf({ params, seed: 60 + r }), VOCAB),
      allowed,
      keepSet,
    }));
    const cpu = new Sampler();
    const expected = rows.map((settings, r) => cpu.sampleRow(cases[r][2], settings));
    const actual = await (await gpuSampler(VOCAB)).sampleArrays(cases.map((c) => c[2]), rows);
    rows.forEach((settings, r) => {
      const what = `row ${r} ${JSON.stringify(cases[r][0])}`;
      assertSame(actual[r], expected[r], what);
      assert.equal(actual[r].kept === undefined, !settings.keepSet, `${what}: a kept set exactly when asked`);
      if (!settings.keepSet) return;
      assert.ok(actual[r].kept!.includes(actual[r].tokenId), `${what}: the token is in its set`);
      assert.deepEqual([...actual[r].kept!], [...expected[r].kept!], `${what}: kept set`);
    });
    assert.equal(actual[0].kept!.length, 50);
    assert.equal(actual[5].kept!.length, VOCAB, "no cut: every token");
    assert.deepEqual([...actual[6].kept!], [actual[6].tokenId], "greedy: the argmax alone");
    assert.deepEqual([...actual[9].kept!], [0], "nothing allowed: the lowest id");
    // A call whose only set is a greedy row's: nothing for the kernel to write, the argmax alone all the same.
    const [greedy] = await (await gpuSampler(VOCAB)).sampleArrays([row], [{ ...rows[6], allowed: null }]);
    assert.deepEqual([...greedy.kept!], [greedy.tokenId]);
  });

  test("many draws with mixed parameters agree token for token", { ...SLOW, skip: noGpu }, async () => {
    const pick = <T>(rng: Rng, xs: T[]) => xs[Math.floor(rng.nextUniform() * xs.length)];
    for (let call = 0; call < 4; call++) {
      const rng = Rng.fromSeed(500 + call);
      const rows: Float32Array[] = [];
      const cases: Case[] = [];
      for (let r = 0; r < 48; r++) {
        rows.push(uniformRow(700, call * 100 + r, pick(rng, [1, 8, 30]), pick(rng, [0, 0, 0.5])));
        const temperature = pick(rng, [0, 0.4, 1, 1.5]);
        cases.push({
          params: {
            temperature,
            top_k: temperature === 0 ? 0 : pick(rng, [0, 1, 3, 60]),
            top_p: pick(rng, [1, 0.9, 0.4]),
            min_p: pick(rng, [0, 0.1]),
            logprobs: pick(rng, [null, 0, 4, 20]),
            logprobs_mode: pick(rng, ["processed", "raw"]),
            presence_penalty: pick(rng, [0, 0.8]),
          },
          seed: call * 1000 + r,
          output: [1, 2, 2, 600],
        });
      }
      await agree(rows, cases, `call ${call}`);
    }
  });
});

describe("GPU sampling rows", () => {
  test("logitEdits folds the processors into one edit per token, skipping ids outside the vocabulary", () => {
    const edits = logitEdits({
      logitBias: [[5, 1.5], [99, 3]],
      maskedIds: [7],
      repetitionPenalty: 1.2,
      promptIds: [5, 6],
      outputIds: [6, 6, 7],
      frequencyPenalty: 0.5,
      presencePenalty: 0.25,
    }, 10);
    const byId = Object.fromEntries(edits.map((e) => [e.tokenId, e]));
    assert.deepEqual(Object.keys(byId).map(Number).sort(), [5, 6, 7]);
    assert.deepEqual(byId[5], { tokenId: 5, bias: 1.5, mask: false, repetition: 1.2, subtract: 0 });
    assert.deepEqual(byId[6], { tokenId: 6, bias: 0, mask: false, repetition: 1.2, subtract: 1.25 });
    assert.deepEqual(byId[7], { tokenId: 7, bias: 0, mask: true, repetition: 1.2, subtract: 0.75 });
    assert.deepEqual(logitEdits({ repetitionPenalty: 1, frequencyPenalty: 0, promptIds: [1] }, 10), []);
  });

  test("a row that asks the impossible is refused before anything runs", { skip: noGpu }, async () => {
    const sampler = await gpuSampler(700);
    const ok: GpuSampleRow = { temperature: 1, topK: 0, topP: 1, minP: 0, uniform: 0.5, topLogprobs: null, logprobsMode: "processed" };
    const logits = new Float32Array(700);
    for (const bad of [{ uniform: 1 }, { topLogprobs: 21 }, { topP: 0 }, { logitsRow: 1 }, { edits: [{ tokenId: 700, bias: 1, mask: false, repetition: 1, subtract: 0 }] }]) {
      await assert.rejects(sampler.sampleArrays(logits, [{ ...ok, ...bad }]), RangeError, JSON.stringify(bad));
    }
    assert.equal((await sampler.sampleArrays(logits, [ok]))[0].tokenId >= 0, true, "the sampler still works");
  });
});
