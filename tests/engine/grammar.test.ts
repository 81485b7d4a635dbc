/**
 * The engine under a grammar: the log-probabilities it reports for constrained tokens are those of the masked,
 * renormalised distribution (processed) or the model's own (raw), checked against a teacher-forced recomputation
 * through the standard graph with the grammar's masks replayed.
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import type { Engine } from "../../src/engine/engine.ts";
import { Grammars } from "../../src/engine/grammar/grammars.ts";
import { SamplingParams } from "../../src/engine/sampling-params.ts";
import type { TokenEvent } from "../../src/engine/sequence.ts";
import type { ServedModel } from "../../src/server.ts";
import { openServedTiny, tinyModelDir } from "../support/served.ts";
import { toolChoiceSpec } from "../../src/api/structured-outputs.ts";
import { HermesToolParser } from "../../src/chat/tools/hermes.ts";
import { Llama3JsonToolParser } from "../../src/chat/tools/llama3-json.ts";
import { releaseStandardRuns, standardRun } from "../support/standard-graph.ts";

const SLOW = { timeout: 240_000 };
const SCHEMA = {
  type: "object",
  properties: { kind: { enum: ["cat", "dog"] }, legs: { type: "integer", minimum: 0, maximum: 8 }, ok: { type: "boolean" } },
  required: ["kind", "legs", "ok"],
  additionalProperties: false,
};

/** log-softmax of `logits / temperature` at `id` over the tokens `allowed` keeps (all when null). */
function maskedLogprob(logits: Float32Array, temperature: number, id: number, allowed: Uint32Array | null): number {
  const ok = (t: number) => allowed === null || ((allowed[t >>> 5] >>> (t & 31)) & 1) === 1;
  let max = -Infinity;
  for (let t = 0; t < logits.length; t++) if (ok(t)) max = Math.max(max, logits[t] / temperature);
  let sum = 0;
  for (let t = 0; t < logits.length; t++) if (ok(t)) sum += Math.exp(logits[t] / temperature - max);
  return logits[id] / temperature - max - Math.log(sum);
}

describe("engine with a grammar", () => {
  let served: ServedModel;
  let engine: Engine;
  let grammars: Grammars;
  let dir: string;

  before(async () => {
    dir = await tinyModelDir();
    served = await openServedTiny({ prefixCaching: false });
    engine = served.engine;
    const { tokenizer } = served;
    grammars = new Grammars(() => ({
      tokens: tokenizer.tokenStrings(Array.from({ length: tokenizer.vocabSize }, (_, i) => i)),
      vocabSize: engine.runner.vocabSize,
      stopTokenIds: served.loaded.config.eosTokenIds,
    }));
  });
  after(async () => {
    await served?.engine.runner.dispose();
    await releaseStandardRuns();
  });

  async function run(mode: "processed" | "raw", temperature: number) {
    const compiled = await grammars.compile({ kind: "json_schema", schema: JSON.stringify(SCHEMA), anyWhitespace: false });
    const prompt = served.tokenizer.encode("A pet as JSON:");
    const params = SamplingParams.parse({ temperature, seed: 21, max_tokens: 40, logprobs: 0, logprobs_mode: mode });
    const request = engine.submit(prompt, params, 0, compiled.matcher());
    const events: TokenEvent[] = [];
    for await (const e of request.events) events.push(e);
    return { compiled, prompt, events, finish: request.finishReason };
  }

  test("processed logprobs are those of the masked distribution; raw ones the model's own", SLOW, async () => {
    const temperature = 0.8;
    const processed = await run("processed", temperature);
    const raw = await run("raw", temperature);
    const ids = processed.events.map((e) => e.tokenId);
    assert.deepEqual(raw.events.map((e) => e.tokenId), ids, "the mode changes what is reported, not what is sampled");
    assert.equal(processed.finish, "stop");
    const text = served.tokenizer.decode(ids, { skipSpecialTokens: true });
    assert.deepEqual(Object.keys(JSON.parse(text)).sort(), ["kind", "legs", "ok"], text);
    const { at } = await standardRun(dir, [...processed.prompt, ...ids]);
    // The masks the grammar gave, replayed token by token.
    const replay = processed.compiled.matcher();
    const mask = new Uint32Array(Math.ceil(engine.runner.vocabSize / 32));
    let narrowed = 0;
    ids.forEach((id, j) => {
      assert.ok(replay.fillNextMask(mask));
      const logits = at(processed.prompt.length - 1 + j);
      const expected = maskedLogprob(logits, temperature, id, mask);
      const unmasked = maskedLogprob(logits, 1, id, null);
      assert.ok(Math.abs(processed.events[j].logprob - expected) < 1e-4, `processed ${j}: ${processed.events[j].logprob} vs ${expected}`);
      assert.ok(Math.abs(raw.events[j].logprob - unmasked) < 1e-4, `raw ${j}: ${raw.events[j].logprob} vs ${unmasked}`);
      if (Math.abs(expected - maskedLogprob(logits, temperature, id, null)) > 1e-3) narrowed++;
      replay.accept(id);
    });
    replay.dispose();
    assert.ok(narrowed > ids.length / 2, "the mask changed most reported logprobs (the test would catch an unmasked sampler)");
  });

  test("every sample of a request has its own matcher: n samples all complete the grammar", SLOW, async () => {
    const compiled = await grammars.compile({ kind: "choice", choices: ["alpha", "beta gamma", "delta"] });
    const prompt = served.tokenizer.encode("Pick:");
    const params = SamplingParams.parse({ temperature: 1, seed: 5, max_tokens: 12, n: 4 });
    const requests = Array.from({ length: 4 }, (_, i) => engine.submit(prompt, params, i, compiled.matcher()));
    for (const request of requests) {
      const ids: number[] = [];
      for await (const e of request.events) ids.push(e.tokenId);
      assert.equal(request.finishReason, "stop");
      assert.ok(["alpha", "beta gamma", "delta"].includes(served.tokenizer.decode(ids, { skipSpecialTokens: true })));
    }
  });

  test("forced tool calls in both parsers' formats parse as calls of the named function with its arguments", SLOW, async () => {
    const tools = [
      { function: { name: "get_weather", parameters: { type: "object", properties: { unit: { enum: ["C", "F"] } }, required: ["unit"] } } },
      { function: { name: "bash", parameters: { type: "object", properties: { cmd: { enum: ["ls", "pwd"] } }, required: ["cmd"] } } },
    ];
    const prompt = served.tokenizer.encode("Call a tool:");
    for (const [format, parser] of [["hermes", new HermesToolParser()], ["llama3_json", new Llama3JsonToolParser()]] as const) {
      const requested = toolChoiceSpec(format, tools, { type: "function", function: { name: "bash" } }, true)!;
      const compiled = await grammars.compile(requested.spec);
      const params = SamplingParams.parse({ temperature: 1, seed: 8, max_tokens: 60, n: 3 });
      for (let i = 0; i < 3; i++) {
        const request = engine.submit(prompt, params, i, compiled.matcher());
        const ids: number[] = [];
        for await (const e of request.events) ids.push(e.tokenId);
        const text = served.tokenizer.decode(ids, { skipSpecialTokens: true });
        assert.equal(request.finishReason, "stop", `${format}: ${text}`);
        const calls = parser.extract(text).calls;
        assert.equal(calls.length, 1, `${format}: ${text}`);
        assert.equal(calls[0].name, "bash");
        assert.ok(["ls", "pwd"].includes(JSON.parse(calls[0].arguments).cmd), text);
      }
    }
  });

  test("a preempted constrained sequence keeps its grammar's state: the same tokens as alone, still valid", SLOW, async () => {
    // 512 bytes a token for the tiny model: room for two 128-token rows, not four.
    const small = await openServedTiny({ prefixCaching: false, kvCacheMemory: 160 * 1024 });
    try {
      const compiled = await grammars.compile({ kind: "json_schema", schema: JSON.stringify(SCHEMA), anyWhitespace: false });
      const prompts = [0, 1, 2, 3].map((i) => served.tokenizer.encode(`Pet number ${i} as JSON, with a long preamble ${"x ".repeat(40 + 5 * i)}:`));
      const params = (seed: number) => SamplingParams.parse({ temperature: 1, seed, max_tokens: 60 });
      const collect = async (e: Engine, p: number[], seed: number) => {
        const request = e.submit(p, params(seed), 0, compiled.matcher());
        const ids: number[] = [];
        for await (const ev of request.events) ids.push(ev.tokenId);
        return { ids, finish: request.finishReason };
      };
      const alone: { ids: number[]; finish: string | null }[] = [];
      for (const [i, p] of prompts.entries()) alone.push(await collect(engine, p, 30 + i));
      const together = await Promise.all(prompts.map((p, i) => collect(small.engine, p, 30 + i)));
      assert.ok(small.engine.stats().preemptions > 0, "the pool was too small: something was preempted");
      together.forEach((r, i) => {
        assert.deepEqual(r.ids, alone[i].ids, `request ${i}`);
        const text = served.tokenizer.decode(r.ids, { skipSpecialTokens: true });
        if (r.finish === "stop") assert.deepEqual(Object.keys(JSON.parse(text)).sort(), ["kind", "legs", "ok"], text);
      });
    } finally {
      await small.engine.runner.dispose();
    }
  });
});
