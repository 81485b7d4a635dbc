import { test } from "node:test";
import assert from "node:assert/strict";
import { meteredEngine } from "../../src/api/metrics.ts";
import { formatRequestLine, type RequestRecord, requestLogFields } from "../../src/api/operations.ts";
import { Completion } from "../../src/api/protocol.ts";
import { ServingMetrics } from "../../src/metrics/serving.ts";
import { errorOf, postJson, servedTinyApp, qwen3 } from "./app-fixture.ts";

const { engine, servedApp } = await servedTinyApp();

const app = servedApp();
const SLOW = { timeout: 120_000 };

async function complete(body: Record<string, unknown>): Promise<Completion> {
  const res = await app.request("/v1/completions", postJson(body));
  assert.equal(res.status, 200, await res.clone().text());
  return Completion.parse(await res.json());
}

test("a text prompt completes; without max_tokens 16 tokens are generated, as OpenAI's default", SLOW, async () => {
  const out = await complete({ prompt: "Once upon a time", seed: 1, ignore_eos: true });
  assert.match(out.id, /^cmpl-[0-9a-f]{32}$/);
  assert.equal(out.object, "text_completion");
  assert.equal(out.usage!.prompt_tokens, qwen3.encode("Once upon a time").length);
  assert.equal(out.usage!.completion_tokens, 16);
  assert.equal(out.choices[0].finish_reason, "length");
  assert.equal(out.policy_version, engine.policyVersion);
});

test("a token-id prompt runs on exactly those ids; return_token_ids reports them and the generated ids", SLOW, async () => {
  const ids = qwen3.encode("The capital of France is");
  const out = await complete({ prompt: ids, max_tokens: 4, return_token_ids: true, seed: 2 });
  assert.deepEqual(out.prompt_token_ids, ids);
  assert.deepEqual(out.choices[0].prompt_token_ids, ids);
  assert.equal(out.choices[0].token_ids!.length, 4);
  assert.equal(out.choices[0].text, qwen3.decode(out.choices[0].token_ids!, { skipSpecialTokens: true }));
});

test("echo puts the prompt's text before the completion", SLOW, async () => {
  const text = await complete({ prompt: "Hello there", max_tokens: 3, echo: true, seed: 3 });
  assert.ok(text.choices[0].text.startsWith("Hello there"));
  const ids = qwen3.encode("General Kenobi");
  const fromIds = await complete({ prompt: ids, max_tokens: 3, echo: true, seed: 3 });
  assert.ok(fromIds.choices[0].text.startsWith("General Kenobi"));
});

test("a batch of prompts with n samples each: choice i*n+j is sample j of prompt i", SLOW, async () => {
  const out = await complete({ prompt: ["one", "two words"], n: 2, max_tokens: 3, seed: 4, return_token_ids: true });
  assert.deepEqual(out.choices.map((c) => c.index), [0, 1, 2, 3]);
  assert.deepEqual(out.choices.map((c) => c.prompt_token_ids), [qwen3.encode("one"), qwen3.encode("one"), qwen3.encode("two words"), qwen3.encode("two words")]);
  assert.equal(out.prompt_token_ids, undefined, "a batch has no single top-level prompt");
  assert.equal(out.usage!.prompt_tokens, qwen3.encode("one").length + qwen3.encode("two words").length);
  assert.equal(out.usage!.completion_tokens, 12);
  const idBatch = await complete({ prompt: [[1, 2, 3], [4, 5]], max_tokens: 2 });
  assert.equal(idBatch.choices.length, 2);
});

test("legacy logprobs: tokens, token_logprobs, top_logprobs (the sampled token among them) and text_offset", SLOW, async () => {
  const out = await complete({ prompt: "Count:", max_tokens: 5, logprobs: 2, seed: 5 });
  const { logprobs, text } = out.choices[0];
  assert.equal(logprobs!.tokens.length, 5);
  assert.equal(logprobs!.tokens.join(""), text);
  for (let j = 0; j < 5; j++) {
    const top = logprobs!.top_logprobs[j]!;
    assert.equal(top[logprobs!.tokens[j]], logprobs!.token_logprobs[j]);
    assert.ok(Object.keys(top).length >= 2 && Object.keys(top).length <= 3);
    assert.equal(logprobs!.text_offset[j], logprobs!.tokens.slice(0, j).join("").length);
  }
});

test("streaming completions: one chunk per token, the finish chunk, usage, [DONE]", SLOW, async () => {
  const body = { prompt: "Stream me", max_tokens: 4, seed: 6, return_token_ids: true };
  const whole = await complete(body);
  const res = await app.request("/v1/completions", postJson({ ...body, stream: true, stream_options: { include_usage: true } }));
  const events = (await res.text()).split("\n\n").filter((e) => e !== "");
  assert.equal(events.at(-1), "data: [DONE]");
  const chunks = events.slice(0, -1).map((e) => Completion.parse(JSON.parse(e.slice(6))));
  assert.equal(chunks.map((c) => c.choices[0]?.text ?? "").join(""), whole.choices[0].text);
  assert.deepEqual(chunks.flatMap((c) => c.choices[0]?.token_ids ?? []), whole.choices[0].token_ids);
  assert.deepEqual(chunks[0].choices[0].prompt_token_ids, whole.prompt_token_ids);
  assert.equal(chunks.filter((c) => c.choices[0]?.finish_reason === "length").length, 1);
  assert.equal(chunks.at(-1)!.usage!.completion_tokens, 4);
});

test("stop strings and stop_token_ids end a completion and say which ended it", SLOW, async () => {
  const free = await complete({ prompt: "abc", max_tokens: 12, seed: 7, return_token_ids: true });
  const stopId = free.choices[0].token_ids![3];
  const byId = await complete({ prompt: "abc", max_tokens: 12, seed: 7, stop_token_ids: [stopId], return_token_ids: true });
  assert.equal(byId.choices[0].finish_reason, "stop");
  assert.equal(byId.choices[0].stop_reason, stopId);
  assert.equal(byId.choices[0].token_ids!.at(-1), stopId);
  const text = free.choices[0].text;
  const stop = text.slice(4, 7);
  const byText = await complete({ prompt: "abc", max_tokens: 12, seed: 7, stop });
  assert.equal(byText.choices[0].text, text.slice(0, text.indexOf(stop)));
  assert.equal(byText.choices[0].stop_reason, stop);
  // As vLLM: the stop token's own text is left out unless include_stop_str_in_output asks for it.
  const kept = await complete({
    prompt: "abc",
    max_tokens: 12,
    seed: 7,
    stop_token_ids: [stopId],
    include_stop_str_in_output: true,
  });
  assert.ok(kept.choices[0].text.length > byId.choices[0].text.length, "the stop token's text is kept when asked");
  assert.ok(kept.choices[0].text.startsWith(byId.choices[0].text));
  // No stop string ends a sample before min_tokens (min_tokens masks eos, so compare with a run that has it too).
  const long = (await complete({ prompt: "abc", max_tokens: 12, seed: 7, min_tokens: 12 })).choices[0].text;
  const late = await complete({ prompt: "abc", max_tokens: 12, seed: 7, stop: long.slice(2, 5), min_tokens: 12 });
  assert.equal(late.choices[0].finish_reason, "length");
  assert.equal(late.choices[0].text, long);
});

test("completions errors are 400s naming the field", SLOW, async () => {
  const cases: [Record<string, unknown>, string, RegExp][] = [
    [{ prompt: Array.from({ length: 600 }, (_, i) => 100 + i) }, "prompt", /context length/],
    [{ prompt: [1, 2, 999_999] }, "prompt[2]", /vocabulary/],
    [{ prompt: "x", echo: true, logprobs: 1, stream: true }, "stream", /not supported with stream/],
    [{ prompt: "x", prompt_logprobs: 1, stream: true }, "stream", /not supported with stream/],
    [{ prompt: "x", prompt_logprobs: -1 }, "prompt_logprobs", /0 to 20/],
    [{ prompt: "x", suffix: "y" }, "suffix", /not supported/],
    [{ prompt: "x", logprobs: 21 }, "logprobs", /20/],
    [{ prompt: "x", max_tokens: 0 }, "max_tokens", /^max_tokens must be at least 1; 0 is accepted only with echo/],
    [{ prompt: "x", max_tokens: -1 }, "max_tokens", /^max_tokens must be at least 0$/],
    [{ prompt: "x", temperature: 5 }, "temperature", /^temperature must be at most 2$/],
    [{ prompt: "x", top_p: 0 }, "top_p", /^top_p must be greater than 0$/],
    [{ prompt: "x", n: 0 }, "n", /^n must be at least 1$/],
    [{ prompt: "x", logit_bias: { abc: 1 } }, "logit_bias.abc", /^logit_bias keys must be token ids, got the key "abc"$/],
    [{ prompt: [] }, "prompt", /./],
  ];
  for (const [body, param, message] of cases) {
    const err = await errorOf(await app.request("/v1/completions", postJson(body)), 400);
    assert.equal(err.param, param, JSON.stringify(body));
    assert.match(err.message, message, JSON.stringify(body));
  }
});

test("a stop string ends the sample as 'stop', in the answer and in the finished_reason metric", SLOW, async () => {
  const metrics = new ServingMetrics("gym-edge/tiny");
  const metered = servedApp({ engine: meteredEngine(engine, metrics), metrics });
  const body = { prompt: "Once upon a time", max_tokens: 6, temperature: 0, ignore_eos: true };
  const free = await complete(body);
  // The greedy text's third character onwards is a stop string the same greedy run must meet.
  const stop = free.choices[0].text.slice(2, 4);
  assert.ok(stop.length > 0, `the free run generated text: ${JSON.stringify(free.choices[0].text)}`);
  const res = await metered.request("/v1/completions", postJson({ ...body, stop: [stop] }));
  const stopped = Completion.parse(await res.json());
  assert.equal(stopped.choices[0].finish_reason, "stop");
  assert.equal(stopped.choices[0].stop_reason, stop);
  const text = await (await metered.request("/metrics")).text();
  const series = (reason: string) => text.split("\n").find((l) => l.includes("request_success_total") && l.includes(`"${reason}"`));
  assert.match(series("stop") ?? "", / 1$/);
  assert.match(series("abort") ?? "", / 0$/);
});

test("echo with logprobs scores the prompt too, and prompt_logprobs reports each prompt token as vLLM does", SLOW, async () => {
  const ids = qwen3.encode("The quick brown fox jumps");
  const out = await complete({ prompt: ids, max_tokens: 2, temperature: 0, echo: true, logprobs: 1, prompt_logprobs: 2 });
  const choice = out.choices[0];
  const lp = choice.logprobs!;
  assert.equal(lp.tokens.length, ids.length + 2, "prompt then generated tokens");
  assert.equal(lp.token_logprobs[0], null, "the first prompt token has nothing before it");
  assert.equal(lp.top_logprobs[0], null);
  assert.equal(lp.text_offset[0], 0);
  assert.deepEqual(lp.tokens.slice(0, ids.length), ids.map((id) => qwen3.decode([id])));
  const prompt = choice.prompt_logprobs!;
  assert.equal(prompt.length, ids.length);
  assert.equal(prompt[0], null);
  for (let i = 1; i < ids.length; i++) {
    const entry = prompt[i]!;
    const own = entry[String(ids[i])];
    assert.ok(own, `position ${i} names its prompt token`);
    assert.equal(own.logprob, lp.token_logprobs[i], `position ${i}: echo and prompt_logprobs agree`);
    assert.ok(own.rank !== null && own.rank >= 1);
    assert.ok(Object.keys(entry).length <= 3, "the token and at most 2 alternatives");
    assert.ok(Object.values(entry).some((e) => e.rank === 1), "the most likely token is among them");
    assert.ok(own.logprob <= 0 && own.logprob >= -9999);
  }
});

test("echo with max_tokens 0 scores the prompt without generating: the prompt's log-probabilities, finish_reason length", SLOW, async () => {
  const ids = qwen3.encode("The quick brown fox jumps");
  const generated = await complete({ prompt: ids, max_tokens: 2, temperature: 0, echo: true, logprobs: 1 });
  const out = await complete({ prompt: ids, max_tokens: 0, temperature: 0, echo: true, logprobs: 1, prompt_logprobs: 1, return_token_ids: true });
  const choice = out.choices[0];
  assert.equal(choice.text, qwen3.decode(ids));
  assert.equal(choice.finish_reason, "length");
  assert.equal(choice.stop_reason, null);
  assert.deepEqual(choice.token_ids, []);
  assert.equal(out.usage!.completion_tokens, 0);
  assert.equal(out.usage!.total_tokens, ids.length);
  const lp = choice.logprobs!;
  assert.equal(lp.tokens.length, ids.length, "the prompt's tokens and nothing after them");
  assert.equal(lp.token_logprobs[0], null);
  const expected = generated.choices[0].logprobs!.token_logprobs.slice(0, ids.length);
  lp.token_logprobs.forEach((logprob, i) => {
    if (i === 0) return;
    assert.ok(Math.abs(logprob! - expected[i]!) < 1e-4, `prompt token ${i}: ${logprob} vs ${expected[i]} when generating`);
  });
  assert.deepEqual(lp.text_offset, generated.choices[0].logprobs!.text_offset.slice(0, ids.length));
  assert.equal(choice.prompt_logprobs!.length, ids.length);
  // Text prompts and batches too; without logprobs there are none.
  const batch = await complete({ prompt: ["one", "two words"], max_tokens: 0, echo: true, n: 2 });
  assert.deepEqual(batch.choices.map((c) => c.text), ["one", "one", "two words", "two words"]);
  assert.ok(batch.choices.every((c) => c.logprobs === null && c.finish_reason === "length"));
  assert.equal(batch.usage!.completion_tokens, 0);
});

test("echo with max_tokens 0 streams the prompt in one chunk that ends the choice", SLOW, async () => {
  const body = { prompt: "Stream the prompt", max_tokens: 0, echo: true, stream: true, stream_options: { include_usage: true } };
  const res = await app.request("/v1/completions", postJson(body));
  assert.equal(res.status, 200);
  const events = (await res.text()).split("\n\n").filter((e) => e !== "");
  assert.equal(events.at(-1), "data: [DONE]");
  const chunks = events.slice(0, -1).map((e) => Completion.parse(JSON.parse(e.slice(6))));
  const choices = chunks.flatMap((c) => c.choices);
  assert.equal(choices.length, 1);
  assert.equal(choices[0].text, "Stream the prompt");
  assert.equal(choices[0].finish_reason, "length");
  assert.equal(chunks.at(-1)!.usage!.completion_tokens, 0);
});

test("a max_tokens lowered to fit the context is in the request's log line with both numbers", SLOW, async () => {
  const records: RequestRecord[] = [];
  const logged = servedApp({ requestLog: (r) => records.push({ ...r }) });
  // A prompt that leaves little room, so the clamped request is short to run.
  const ids = Array.from({ length: 500 }, (_, i) => 100 + i);
  const res = await logged.request("/v1/completions", postJson({ prompt: ids, max_tokens: 5000 }));
  assert.equal(res.status, 200);
  const room = 512 - ids.length;
  assert.deepEqual(records[0].maxTokensClamp, { requested: 5000, allowed: room });
  assert.match(formatRequestLine(records[0]), new RegExp(` max_tokens_clamped=5000->${room}( |$)`));
  assert.equal(requestLogFields(records[0]).max_tokens_requested, 5000);
  assert.equal(requestLogFields(records[0]).max_tokens, room);
  // A max_tokens that fits, or none at all, is not noted.
  await logged.request("/v1/completions", postJson({ prompt: ids, max_tokens: 2 }));
  assert.equal(records[1].maxTokensClamp, null);
  assert.doesNotMatch(formatRequestLine(records[1]), /max_tokens_clamped/);
});
