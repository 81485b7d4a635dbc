/**
 * The engine over the real tiny model: batching must not change a request's tokens or log-probabilities, seeded
 * requests are reproducible under load, the prefix cache reuses KV without changing results, a small KV pool
 * preempts and still completes everything, and every reference is returned.
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { Engine, type SubmittedRequest } from "../../src/engine/engine.ts";
import { prefillRuns } from "../../src/engine/scheduler.ts";
import { SamplingParams, type SamplingParamsInput } from "../../src/engine/sampling-params.ts";
import type { TokenEvent } from "../../src/engine/sequence.ts";
import type { ServedModel } from "../../src/server.ts";
import { openServedTiny, tinyModelDir } from "../support/served.ts";
import { releaseStandardRuns, standardRun } from "../support/standard-graph.ts";

const SLOW = { timeout: 180_000 };

/** A request's whole result. */
interface Result {
  events: TokenEvent[];
  ids: number[];
  finishReason: string | null;
}

async function collect(req: SubmittedRequest): Promise<Result> {
  const events: TokenEvent[] = [];
  for await (const e of req.events) events.push(e);
  return { events, ids: events.map((e) => e.tokenId), finishReason: req.finishReason };
}

const params = (p: SamplingParamsInput) => SamplingParams.parse(p);
const greedy = (max_tokens: number) =>
  params({ temperature: 0, max_tokens, ignore_eos: true, logprobs: 5, logprobs_mode: "raw" });

/** A deterministic prompt of `n` ordinary token ids. */
const prompt = (n: number, salt: number) => Array.from({ length: n }, (_, i) => 1000 + ((i * 7919 + salt * 104729) % 50000));

function assertSameGeneration(actual: Result, expected: Result, what: string): void {
  assert.deepEqual(actual.ids, expected.ids, `${what}: token ids differ`);
  actual.events.forEach((e, j) => {
    const ref = expected.events[j];
    assert.ok(Math.abs(e.logprob - ref.logprob) < 1e-4, `${what}: token ${j} logprob ${e.logprob} vs ${ref.logprob}`);
    e.topLogprobs?.forEach((t, k) => {
      assert.equal(t.tokenId, ref.topLogprobs![k].tokenId, `${what}: token ${j} top ${k} id`);
      assert.ok(Math.abs(t.logprob - ref.topLogprobs![k].logprob) < 1e-4, `${what}: token ${j} top ${k} logprob`);
    });
  });
}

function logSoftmaxAt(logits: Float32Array, scale: number, id: number): number {
  let max = -Infinity;
  for (const v of logits) max = Math.max(max, v * scale);
  let sum = 0;
  for (const v of logits) sum += Math.exp(v * scale - max);
  return logits[id] * scale - max - Math.log(sum);
}

describe("engine", () => {
  let served: ServedModel;
  let engine: Engine;
  let dir: string;

  before(async () => {
    dir = await tinyModelDir();
    served = await openServedTiny({ prefixCaching: false, maxNumBatchedTokens: 64 });
    engine = served.engine;
  }, SLOW);
  after(async () => {
    await served?.engine.runner.dispose();
    await releaseStandardRuns();
  });

  test("greedy tokens and logprobs are the same alone and inside a changing batch", SLOW, async () => {
    const prompts = [prompt(5, 1), prompt(23, 2), prompt(150, 3), prompt(9, 4)];
    const lengths = [12, 6, 10, 9];
    const alone: Result[] = [];
    for (let i = 0; i < prompts.length; i++) alone.push(await collect(engine.submit(prompts[i], greedy(lengths[i]))));

    // 0 and 1 start together; 2 (a prompt longer than the 64-token step budget: chunked prefill) joins after 0's
    // third token; 3 joins after 2's first. 1 leaves early, the rest at different times.
    const results: Promise<Result>[] = [];
    let joined2 = false;
    let joined3 = false;
    const watch = (req: SubmittedRequest, onToken: (e: TokenEvent) => void): Promise<Result> =>
      (async () => {
        const events: TokenEvent[] = [];
        for await (const e of req.events) {
          events.push(e);
          onToken(e);
        }
        return { events, ids: events.map((e) => e.tokenId), finishReason: req.finishReason };
      })();
    const start3 = () => {
      if (joined3) return;
      joined3 = true;
      results[3] = collect(engine.submit(prompts[3], greedy(lengths[3])));
    };
    results[0] = watch(engine.submit(prompts[0], greedy(lengths[0])), (e) => {
      if (e.index === 2 && !joined2) {
        joined2 = true;
        results[2] = watch(engine.submit(prompts[2], greedy(lengths[2])), start3);
      }
    });
    results[1] = collect(engine.submit(prompts[1], greedy(lengths[1])));
    const first = await Promise.all([results[0], results[1]]);
    await engine.idle();
    const batched = [first[0], first[1], await results[2], await results[3]];
    batched.forEach((r, i) => {
      assertSameGeneration(r, alone[i], `request ${i}`);
      assert.equal(r.finishReason, "length");
      assert.equal(r.ids.length, lengths[i]);
    });
    assert.equal(engine.cache.totalRefs, 0);
  });

  test("a prefill chunk that leaves the prompt's last token for the next step does not sample before it", SLOW, async () => {
    // Two decoding rows take 2 of the 64-token budget: a 63-token prompt's first chunk is 62, one token short.
    const long = prompt(63, 7);
    const alone = await collect(engine.submit(long, greedy(6)));
    const decoding = [prompt(6, 8), prompt(7, 9)].map((p) => engine.submit(p, greedy(40)));
    const first = await decoding[0].events[Symbol.asyncIterator]().next();
    assert.equal(first.done, false);
    const joined = await collect(engine.submit(long, greedy(6)));
    for (const req of decoding) engine.abort(req.id);
    await engine.idle();
    assertSameGeneration(joined, alone, "the prompt chunked one token short");
  });

  test("prompts prefilled together in one padded run give the tokens and logprobs they give alone", SLOW, async () => {
    // 20, 14 and 11 tokens: one run (none shorter than half the longest), the shorter rows padded on the right.
    const lengths = [20, 14, 11];
    assert.equal(prefillRuns(lengths.map((tokens) => ({ seq: null!, tokens }))).length, 1);
    const prompts = lengths.map((n, i) => prompt(n, 30 + i));
    const alone: Result[] = [];
    for (const p of prompts) alone.push(await collect(engine.submit(p, greedy(5))));
    const together = await Promise.all(prompts.map((p) => collect(engine.submit(p, greedy(5)))));
    together.forEach((r, i) => assertSameGeneration(r, alone[i], `prompt ${i}`));
    assert.equal(engine.cache.totalRefs, 0);
  });

  test("reported logprobs equal a teacher-forced recomputation (processed and raw)", SLOW, async () => {
    const p = prompt(17, 5);
    const temperature = 0.7;
    const processed = await collect(engine.submit(p, params({ temperature, seed: 7, max_tokens: 8, ignore_eos: true })));
    const raw = await collect(
      engine.submit(p, params({ temperature, seed: 7, max_tokens: 8, ignore_eos: true, logprobs_mode: "raw" })),
    );
    assert.deepEqual(raw.ids, processed.ids, "the mode changes what is reported, not what is sampled");
    const { at: logitsAt } = await standardRun(dir, [...p, ...processed.ids]);
    processed.ids.forEach((id, j) => {
      const at = logitsAt(p.length - 1 + j);
      const expectedProcessed = logSoftmaxAt(at, 1 / temperature, id);
      const expectedRaw = logSoftmaxAt(at, 1, id);
      assert.ok(Math.abs(processed.events[j].logprob - expectedProcessed) < 1e-4, `processed ${j}`);
      assert.ok(Math.abs(raw.events[j].logprob - expectedRaw) < 1e-4, `raw ${j}`);
    });
  });

  test("prompt logprobs equal the model's log-softmax at each prompt position, across prefill chunks", SLOW, async () => {
    // 100 tokens with a 64-token step budget: two chunks, the second beside another request's decoding.
    const p = prompt(100, 40);
    const other = engine.submit(prompt(9, 41), greedy(6));
    const result = await collect(engine.submit(p, params({ temperature: 0, max_tokens: 2, prompt_logprobs: 3 })));
    await collect(other);
    const entries = result.events[0].promptLogprobs!;
    assert.equal(entries.length, p.length);
    assert.equal(entries[0], null, "the first token has nothing before it");
    assert.ok(result.events.slice(1).every((e) => e.promptLogprobs === undefined), "only the first event carries them");
    const { at: logitsAt } = await standardRun(dir, p);
    for (let i = 1; i < p.length; i++) {
      const entry = entries[i]!;
      const logits = logitsAt(i - 1);
      assert.equal(entry.tokenId, p[i]);
      assert.ok(Math.abs(entry.logprob - logSoftmaxAt(logits, 1, p[i])) < 1e-4, `position ${i}`);
      // The engine's graph and the standard one agree within float noise, not bit for bit: a logit within 1e-4 of
      // the token's may sit on either side of it.
      const above = (margin: number) => logits.filter((v) => v > logits[p[i]] + margin).length;
      assert.ok(entry.rank >= 1 + above(1e-4) && entry.rank <= 1 + above(-1e-4), `rank at ${i}: ${entry.rank}`);
      assert.equal(entry.topLogprobs.length, 3);
      const best = logits.reduce((b, v, k) => (v > logits[b] ? k : b), 0);
      assert.equal(entry.topLogprobs[0].tokenId, best, `top token at ${i}`);
      assert.ok(Math.abs(entry.topLogprobs[0].logprob - logSoftmaxAt(logits, 1, best)) < 1e-4);
    }
    assert.equal(engine.cache.totalRefs, 0);
  });

  test("a seeded request gives the same tokens alone and under concurrent load", SLOW, async () => {
    const seeded = () => params({ temperature: 1, seed: 1234, max_tokens: 10, ignore_eos: true });
    const alone = await collect(engine.submit(prompt(11, 6), seeded()));
    const noise = Array.from({ length: 5 }, (_, i) =>
      collect(engine.submit(prompt(8 + i * 13, 10 + i), params({ temperature: 1, max_tokens: 4 + i, ignore_eos: true }))));
    const loaded = await collect(engine.submit(prompt(11, 6), seeded()));
    await Promise.all(noise);
    assert.deepEqual(loaded.ids, alone.ids);
    const other = await collect(engine.submit(prompt(11, 6), params({ temperature: 1, seed: 4321, max_tokens: 10, ignore_eos: true })));
    assert.notDeepEqual(other.ids, alone.ids, "another seed samples other tokens");
  });

  test("abort ends the stream and frees the request's row and blocks at once", SLOW, async () => {
    const req = engine.submit(prompt(40, 7), greedy(500));
    const seen: TokenEvent[] = [];
    for await (const e of req.events) {
      seen.push(e);
      if (seen.length === 3) engine.abort(req.id);
    }
    assert.equal(seen.length, 3);
    assert.equal(req.finishReason, "abort");
    assert.equal(engine.stats().running, 0);
    assert.equal(engine.cache.totalRefs, 0);
  });
});

test("prefill chunks run together only with chunks at least half as long as the run's longest", () => {
  const runs = prefillRuns([30, 100, 8, 60, 49].map((tokens) => ({ seq: null!, tokens })));
  assert.deepEqual(runs.map((run) => run.map((c) => c.tokens)), [[100, 60], [49, 30], [8]]);
});

describe("engine prefix cache", () => {
  let served: ServedModel;
  before(async () => {
    served = await openServedTiny({ prefixCaching: true });
  }, SLOW);
  after(async () => await served?.engine.runner.dispose());

  test("a cache hit gives the same logprobs as a cold run, and hits are counted", SLOW, async () => {
    const { engine } = served;
    const p = prompt(50, 8);
    const cold = await collect(engine.submit(p, greedy(6)));
    const before = engine.stats().cache.hitTokens;
    const warm = await collect(engine.submit(p, greedy(6)));
    assertSameGeneration(warm, cold, "warm");
    assert.equal(engine.stats().cache.hitTokens - before, 48, "three full blocks of the 50-token prompt were reused");
    // The next turn of a conversation: prompt + what the model said + a new user turn.
    const turn2 = [...p, ...cold.ids, ...prompt(20, 9)];
    const before2 = engine.stats().cache.hitTokens;
    await collect(engine.submit(turn2, greedy(3)));
    assert.ok(engine.stats().cache.hitTokens - before2 >= 48, "the second turn reuses the first turn's blocks");
    assert.equal(engine.cache.totalRefs, 0);
  });

  test("the n samples of one prompt share one prefill", SLOW, async () => {
    const { engine } = served;
    const p = prompt(70, 11);
    const before = engine.stats().cache.hitTokens;
    const sampling = params({ temperature: 1, seed: 5, n: 4, max_tokens: 3, ignore_eos: true });
    const results = await Promise.all([0, 1, 2, 3].map((i) => collect(engine.submit(p, sampling, i))));
    assert.equal(engine.stats().cache.hitTokens - before, 3 * 64, "samples 2..4 reuse the first one's 4 blocks");
    assert.equal(new Set(results.map((r) => r.ids.join())).size, 4, "each sample has its own stream");
    assert.equal(engine.cache.totalRefs, 0);
  });

  test("a request for prompt logprobs computes its whole prompt even when the prefix is cached", SLOW, async () => {
    const { engine } = served;
    const p = prompt(40, 14);
    await collect(engine.submit(p, greedy(2)));
    const before = engine.stats().cache.hitTokens;
    const withPrompt = await collect(engine.submit(p, params({ temperature: 0, max_tokens: 2, prompt_logprobs: 0 })));
    assert.equal(engine.stats().cache.hitTokens, before, "no cached block was reused");
    const entries = withPrompt.events[0].promptLogprobs!;
    assert.ok(entries.slice(1).every((e) => e !== null && e.topLogprobs.length === 0), "every position scored");
    assert.equal(engine.cache.totalRefs, 0);
  });

  test("samples waiting for a shared prefill do not hold back the prompts queued behind them", SLOW, async () => {
    const { engine } = served;
    const [p, q] = [prompt(70, 12), prompt(40, 13)];
    const sampling = params({ temperature: 1, seed: 6, n: 2, max_tokens: 2, ignore_eos: true });
    const shared = [0, 1].map((i) => engine.submit(p, sampling, i));
    const other = engine.submit(q, greedy(2));
    await Promise.all([...shared, other].map(collect));
    // The second sample waited for the first one's prefill; the other prompt started beside that prefill.
    assert.ok(other.scheduledAt! < shared[1].scheduledAt!, "the other prompt was scheduled before the second sample");
    assert.ok(Math.abs(other.scheduledAt! - shared[0].scheduledAt!) < 1, "and in the same step as the first");
    assert.equal(engine.cache.totalRefs, 0);
  });

  test("a KV pool too small for the load preempts, recomputes and still completes every request", SLOW, async () => {
    // 512 bytes a token for the tiny model: room for two 128-token rows, not four.
    const small = await openServedTiny({ prefixCaching: true, kvCacheMemory: 160 * 1024 });
    try {
      const prompts = [0, 1, 2, 3].map((i) => prompt(30 + i * 5, 20 + i));
      const alone: Result[] = [];
      for (const p of prompts) alone.push(await collect(served.engine.submit(p, greedy(60))));
      const together = await Promise.all(prompts.map((p) => collect(small.engine.submit(p, greedy(60)))));
      together.forEach((r, i) => assertSameGeneration(r, alone[i], `request ${i}`));
      assert.ok(small.engine.stats().preemptions > 0, "the pool was too small: something was preempted");
      assert.equal(small.engine.cache.totalRefs, 0);
      assert.equal(small.engine.stats().running + small.engine.stats().waiting, 0);
    } finally {
      await small.engine.runner.dispose();
    }
  });
});
