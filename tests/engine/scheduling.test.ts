/**
 * Scheduling and cache fields over the real tiny model: under the priority policy waiting requests are admitted by
 * priority (arrival order among equals) and preemption takes the lowest priority; under fcfs a priority is refused as
 * vLLM refuses it; a cache salt keeps requests from sharing prefix-cache blocks with other salts; teacher scoring
 * (prompt_logprob_token_ids) equals a teacher-forced recomputation from the model's full logits.
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { Engine, EngineRequestError, type SubmittedRequest } from "../../src/engine/engine.ts";
import { SamplingParams, type SamplingParamsInput } from "../../src/engine/sampling-params.ts";
import { PrefixCache } from "../../src/engine/prefix-cache.ts";
import { Scheduler } from "../../src/engine/scheduler.ts";
import { Sequence, type TokenEvent } from "../../src/engine/sequence.ts";
import type { ServedModel } from "../../src/server.ts";
import { openServedTiny } from "../support/served.ts";

const SLOW = { timeout: 180_000 };

const params = (p: SamplingParamsInput) => SamplingParams.parse(p);
const greedy = (max_tokens: number, extra: SamplingParamsInput = {}) =>
  params({ temperature: 0, max_tokens, ignore_eos: true, logprobs: 2, logprobs_mode: "raw", ...extra });

/** A deterministic prompt of `n` ordinary token ids. */
const prompt = (n: number, salt: number) => Array.from({ length: n }, (_, i) => 1000 + ((i * 7919 + salt * 104729) % 50000));

async function collect(req: SubmittedRequest): Promise<TokenEvent[]> {
  const events: TokenEvent[] = [];
  for await (const e of req.events) events.push(e);
  return events;
}

/** The model's log-softmax at each position of `ids` fed at once on an idle engine's runner, in float64. */
async function teacherForced(engine: Engine, ids: number[]): Promise<(id: number, position: number) => number> {
  const { runner } = engine;
  const vocab = runner.vocabSize;
  runner.reserve(ids.length, 1);
  const [logits] = await runner.step([{ row: 0, tokens: ids, start: 0, allLogits: true }]);
  runner.releaseRow(0);
  const logZ: number[] = [];
  for (let p = 0; p < ids.length; p++) {
    const row = logits.subarray(p * vocab, (p + 1) * vocab);
    let max = -Infinity;
    for (const v of row) max = Math.max(max, v);
    let sum = 0;
    for (const v of row) sum += Math.exp(v - max);
    logZ.push(max + Math.log(sum));
  }
  return (id, position) => logits[position * vocab + id] - logZ[position];
}

describe("priority scheduling", () => {
  let served: ServedModel;
  before(async () => {
    // One row: requests run one after another, in the order the scheduler admits them.
    served = await openServedTiny({ schedulingPolicy: "priority", maxNumSeqs: 1, prefixCaching: false });
  }, SLOW);
  after(async () => await served?.engine.runner.dispose());

  test("waiting requests are admitted by priority, lowest first, in arrival order among equals", SLOW, async () => {
    const { engine } = served;
    const priorities = [3, 1, 2, 1, 0, 3, -2, 2];
    // Submitted together: all wait before the first step.
    const handles = priorities.map((priority, i) => engine.submit(prompt(8 + i, i), greedy(2, { priority })));
    await Promise.all(handles.map(collect));
    const admitted = handles.map((h, i) => ({ i, at: h.scheduledAt! })).sort((a, b) => a.at - b.at).map((x) => x.i);
    const expected = priorities.map((priority, i) => ({ priority, i }))
      .sort((a, b) => a.priority - b.priority || a.i - b.i).map((x) => x.i);
    assert.deepEqual(admitted, expected);
    assert.deepEqual(expected, [6, 4, 1, 3, 2, 7, 0, 5], "the order written out");
  });
});

describe("preemption by priority, fcfs and cache salts", () => {
  let served: ServedModel;
  before(async () => {
    served = await openServedTiny({ prefixCaching: true });
  }, SLOW);
  after(async () => await served?.engine.runner.dispose());

  test("preemption takes the lowest priority (the largest number), not the youngest", SLOW, async () => {
    // An engine of its own over the served runner (which has rows for several sequences).
    const { engine: base } = served;
    // 512 bytes a token for the tiny model: 100 KiB holds three rows of 64 slots (20-token prompts), not three
    // of 80 (where they grow to: 20 + 60 tokens).
    const run = async (low: number, high: number) => {
      const preempted = new Map<number, number>();
      const engine: Engine = new Engine(base.runner, {
        ...base.options,
        schedulingPolicy: "priority",
        maxNumSeqs: 4,
        prefixCaching: false,
        kvCacheBytes: 100 * 1024,
        onStep: () => {
          for (const seq of [...engine.scheduler.running, ...engine.scheduler.waiting]) {
            preempted.set(seq.id, Math.max(preempted.get(seq.id) ?? 0, seq.preemptions));
          }
        },
      });
      // Two older requests of the low priority start first; a younger one of the high priority joins them.
      const older = [0, 1].map((i) => engine.submit(prompt(20, 30 + i), greedy(60, { priority: low })));
      const streams = older.map(async (h) => {
        const events: TokenEvent[] = [];
        for await (const e of h.events) events.push(e);
        return events;
      });
      while (older.some((h) => h.scheduledAt === null)) await new Promise((r) => setTimeout(r, 1));
      const younger = engine.submit(prompt(20, 32), greedy(60, { priority: high }));
      const results = await Promise.all([...streams, collect(younger)]);
      assert.ok(results.every((events) => events.length === 60), "every request completes");
      assert.equal(engine.cache.totalRefs, 0);
      return { older: older.map((h) => preempted.get(h.id) ?? 0), younger: preempted.get(younger.id) ?? 0 };
    };
    // Equal priorities: the youngest is the one preempted, as under fcfs.
    const equal = await run(0, 0);
    assert.ok(equal.younger > 0, `the youngest was preempted (${JSON.stringify(equal)})`);
    // The younger request has the higher priority (the smaller number): an older one of the lower priority goes.
    const ranked = await run(5, 0);
    assert.equal(ranked.younger, 0, `the high-priority request kept its row (${JSON.stringify(ranked)})`);
    assert.ok(ranked.older.some((n) => n > 0), "a low-priority request was preempted instead");
  });

  test("under fcfs a priority other than 0 is refused, as vLLM refuses it", () => {
    const { engine } = served;
    assert.throws(
      () => engine.submit(prompt(5, 1), greedy(1, { priority: 1 })),
      (err: unknown) =>
        err instanceof EngineRequestError && err.param === "priority" &&
        err.message === "Got priority 1 but Priority scheduling is not enabled.",
    );
    assert.equal(engine.stats().waiting, 0);
  });

  test("requests with different salts never share prefix-cache blocks; the same salt, or none, do", SLOW, async () => {
    const { engine } = served;
    const p = prompt(50, 60);
    const hits = async (salt: string | null) => {
      const before = engine.stats().cache.hitTokens;
      const events = await collect(engine.submit(p, greedy(3, { cache_salt: salt })));
      return { hit: engine.stats().cache.hitTokens - before, ids: events.map((e) => e.tokenId), logprobs: events.map((e) => e.logprob) };
    };
    const cold = await hits("alice");
    assert.equal(cold.hit, 0);
    assert.equal((await hits("bob")).hit, 0, "another salt finds nothing of alice's");
    assert.equal((await hits(null)).hit, 0, "no salt finds nothing of alice's or bob's");
    const warm = await hits("alice");
    assert.equal(warm.hit, 48, "the same salt reuses the three full blocks of the 50-token prompt");
    assert.equal((await hits(null)).hit, 48, "unsalted requests share unsalted blocks as before");
    assert.equal((await hits("bob")).hit, 48);
    assert.deepEqual(warm.ids, cold.ids, "a salt changes what is shared, not what is generated");
    warm.logprobs.forEach((lp, j) => assert.ok(Math.abs(lp - cold.logprobs[j]) < 1e-4));
    assert.equal(engine.cache.totalRefs, 0);
  });

  test("teacher scoring equals the model's log-softmax at the given ids, across prefill chunks", SLOW, async () => {
    const { engine } = served;
    const p = prompt(100, 70);
    const start = 59;
    const rows = p.length - 1 - start;
    // Row i scores position start + i + 1: the token there, a fixed id, and some -1 padding in short rows.
    const ids = Array.from({ length: rows }, (_, i) => i % 3 === 0 ? [p[start + i + 1], 17] : [p[start + i + 1], 17, 5000 + i, 0]);
    const scoring = { prompt_logprob_token_ids: ids, prompt_logprob_start: start };
    const other = engine.submit(prompt(9, 71), greedy(6));
    const events = await collect(engine.submit(p, greedy(1, scoring)));
    await collect(other);
    const scores = events[0].promptTokenScores!;
    assert.equal(scores.rows, rows);
    assert.equal(scores.columns, 4);
    const expected = await teacherForced(engine, p);
    for (let i = 0; i < rows; i++) {
      for (let j = 0; j < 4; j++) {
        const got = scores.values[i * 4 + j];
        if (j >= ids[i].length) {
          assert.equal(got, -Infinity, `row ${i} column ${j} is padding`);
          continue;
        }
        const want = expected(ids[i][j], start + i);
        assert.ok(Math.abs(got - want) < 1e-5, `row ${i} column ${j}: ${got} vs ${want}`);
      }
    }
    assert.equal(engine.cache.totalRefs, 0);
  });

  test("teacher scoring reuses a cached prefix only up to its first scored position", SLOW, async () => {
    const { engine } = served;
    const p = prompt(90, 80);
    await collect(engine.submit(p, greedy(1)));
    const start = 40;
    const ids = Array.from({ length: p.length - 1 - start }, (_, i) => [p[start + i + 1]]);
    const before = engine.stats().cache.hitTokens;
    const events = await collect(engine.submit(p, greedy(1, { prompt_logprob_token_ids: ids, prompt_logprob_start: start })));
    assert.equal(engine.stats().cache.hitTokens - before, 32, "the two full blocks before position 40, no more");
    const expected = await teacherForced(engine, p);
    const scores = events[0].promptTokenScores!;
    ids.forEach(([id], i) => assert.ok(Math.abs(scores.values[i] - expected(id, start + i)) < 1e-5, `row ${i}`));
    // With start 0 nothing can come from the cache.
    const all = Array.from({ length: p.length - 1 }, (_, i) => [p[i + 1]]);
    const before2 = engine.stats().cache.hitTokens;
    await collect(engine.submit(p, greedy(1, { prompt_logprob_token_ids: all })));
    assert.equal(engine.stats().cache.hitTokens, before2);
    assert.equal(engine.cache.totalRefs, 0);
  });

  test("teacher scoring rows must match the prompt's scored positions", () => {
    const { engine } = served;
    assert.throws(
      () => engine.submit(prompt(10, 1), greedy(1, { prompt_logprob_token_ids: [[1], [2]], prompt_logprob_start: 2 })),
      (err: unknown) => err instanceof EngineRequestError && err.param === "prompt_logprob_token_ids",
    );
  });
});

test("teacher scoring prefills the prompt before its first scored position without all logits, then the rest with", () => {
  const cache = new PrefixCache({ blockSize: 16, floatsPerToken: 4, capacityBlocks: 0 });
  const limits = { maxNumSeqs: 4, maxNumBatchedTokens: 512, kvCacheBytes: 2 ** 30, bytesPerToken: 16, rowCapacity: (n: number) => n };
  const scheduler = new Scheduler(limits, cache, true);
  const p = prompt(120, 90);
  const rows = Array.from({ length: 19 }, (_, i) => [p[101 + i]]);
  const seq = new Sequence(p, greedy(1, { prompt_logprob_token_ids: rows, prompt_logprob_start: 100 }));
  scheduler.add(seq);
  const first = scheduler.schedule().prefill;
  assert.deepEqual(first.map((c) => [c.tokens, c.allLogits]), [[100, false]], "positions 0..99 carry no logits");
  seq.numComputed += 100;
  const second = scheduler.schedule().prefill;
  assert.deepEqual(second.map((c) => [c.tokens, c.allLogits]), [[20, true]], "positions 100..119 do");
  // Prompt log-probabilities need every position's logits from the first chunk on.
  const whole = new Sequence(p, greedy(1, { prompt_logprobs: 0 }));
  scheduler.add(whole);
  const chunks = scheduler.schedule().prefill.filter((c) => c.seq === whole);
  assert.deepEqual(chunks.map((c) => [c.tokens, c.allLogits]), [[120, true]]);
});

test("the prefix cache gets what neither the running rows nor the rows the runner still holds take", () => {
  const bytesPerToken = 16;
  const cache = new PrefixCache({ blockSize: 16, floatsPerToken: bytesPerToken / 4, capacityBlocks: 0 });
  let held = 0;
  const limits = {
    maxNumSeqs: 4,
    maxNumBatchedTokens: 512,
    kvCacheBytes: 1024 * 256,
    bytesPerToken,
    rowCapacity: (n: number) => Math.ceil(n / 64) * 64,
    heldBytes: () => held,
  };
  const scheduler = new Scheduler(limits, cache, true);
  const blocks = (bytes: number) => Math.floor((limits.kvCacheBytes - bytes) / cache.bytesPerBlock);
  const seq = new Sequence(prompt(100, 91), greedy(4));
  scheduler.add(seq);
  scheduler.schedule();
  // One row of 128 slots (100 tokens + the step's): the running demand, more than the runner holds yet.
  assert.equal(cache.capacityBlocks, blocks(128 * bytesPerToken));
  // The runner holds rows laid out for more (rows kept after their sequences ended): those count instead.
  held = 4 * 256 * bytesPerToken;
  seq.numComputed = 100;
  scheduler.schedule();
  assert.equal(cache.capacityBlocks, blocks(held));
});
