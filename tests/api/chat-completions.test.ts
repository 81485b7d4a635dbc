import { test } from "node:test";
import assert from "node:assert/strict";
import { chatDelta } from "../../src/api/chat-completions.ts";
import { ChatCompletion, ChatCompletionChunk, type ChatDelta } from "../../src/api/protocol.ts";
import { AssistantOutput, toolCalling } from "../../src/chat/tools/parser.ts";
import { TokenizeResponse } from "../../src/api/schemas.ts";
import { errorOf, postJson, servedTinyApp } from "./app-fixture.ts";

const { engine, servedApp } = await servedTinyApp();

const app = servedApp();
const EOS = 151645;
const USER = [{ role: "user", content: "count to 5" }];
const SLOW = { timeout: 120_000 };

async function chat(body: Record<string, unknown>, on = app): Promise<ChatCompletion> {
  const res = await on.request("/v1/chat/completions", postJson({ messages: USER, ...body }));
  assert.equal(res.status, 200, await res.clone().text());
  return ChatCompletion.parse(await res.json());
}

async function tokenize(body: Record<string, unknown>): Promise<number[]> {
  const res = await app.request("/tokenize", postJson(body));
  return TokenizeResponse.parse(await res.json()).tokens;
}

/** The chunks of a streamed chat completion (after checking the stream ends with [DONE]). */
async function chatStream(body: Record<string, unknown>): Promise<ChatCompletionChunk[]> {
  const res = await app.request("/v1/chat/completions", postJson({ messages: USER, stream: true, ...body }));
  assert.equal(res.status, 200);
  assert.match(res.headers.get("content-type") ?? "", /text\/event-stream/);
  const events = (await res.text()).split("\n\n").filter((e) => e !== "");
  assert.equal(events.at(-1), "data: [DONE]");
  return events.slice(0, -1).map((e) => ChatCompletionChunk.parse(JSON.parse(e.replace(/^data: /, ""))));
}

test("a chat completion has vLLM's shape; return_token_ids gives the prompt /tokenize gives and each choice's ids", SLOW, async () => {
  const out = await chat({ max_tokens: 5, return_token_ids: true, seed: 1 });
  assert.match(out.id, /^chatcmpl-[0-9a-f]{32}$/);
  assert.equal(out.model, "gym-edge/tiny");
  assert.deepEqual(out.prompt_token_ids, await tokenize({ messages: USER }));
  const [choice] = out.choices;
  assert.equal(choice.message.role, "assistant");
  assert.equal(typeof choice.message.content, "string");
  assert.equal(choice.token_ids!.length, 5);
  assert.equal(choice.finish_reason, "length");
  assert.deepEqual(out.usage, { prompt_tokens: out.prompt_token_ids!.length, completion_tokens: 5, total_tokens: out.prompt_token_ids!.length + 5, prompt_tokens_details: null });
  assert.equal(out.policy_version, engine.policyVersion);
  assert.equal(choice.message.generation_token_ids, undefined, "the NeMo RL fields come with logprobs");
});

test("with logprobs the message carries prompt_token_ids, generation_token_ids and generation_log_probs", SLOW, async () => {
  const out = await chat({ max_tokens: 6, logprobs: true, top_logprobs: 3, return_token_ids: true, seed: 2 });
  const [{ message, logprobs, token_ids }] = out.choices;
  assert.deepEqual(message.prompt_token_ids, out.prompt_token_ids);
  assert.deepEqual(message.generation_token_ids, token_ids);
  assert.deepEqual(message.generation_log_probs, logprobs!.content!.map((c) => c.logprob));
  for (const entry of logprobs!.content!) {
    assert.equal(entry.top_logprobs.length, 3);
    assert.ok(entry.logprob <= 0 && entry.logprob >= -9999);
    assert.ok(entry.top_logprobs[0].logprob >= entry.top_logprobs[2].logprob);
  }
  assert.equal(logprobs!.content!.map((c) => c.token).join(""), message.content);
});

test("return_tokens_as_token_ids names logprob tokens token_id:<id>", SLOW, async () => {
  const out = await chat({ max_tokens: 4, logprobs: true, top_logprobs: 1, return_tokens_as_token_ids: true, seed: 3 });
  const [{ message, logprobs }] = out.choices;
  assert.deepEqual(logprobs!.content!.map((c) => c.token), message.generation_token_ids!.map((id) => `token_id:${id}`));
  assert.match(logprobs!.content![0].top_logprobs[0].token, /^token_id:\d+$/);
});

test("a sampled EOS ends the choice with finish_reason stop and is included in generation_token_ids", SLOW, async () => {
  // min_tokens masks EOS for 3 tokens; the bias makes it the 4th.
  const out = await chat({ max_tokens: 20, min_tokens: 3, logit_bias: { [EOS]: 100 }, logprobs: true, seed: 4 });
  const [{ message, finish_reason, stop_reason }] = out.choices;
  assert.equal(message.generation_token_ids!.length, 4);
  assert.equal(message.generation_token_ids!.at(-1), EOS);
  assert.equal(message.generation_log_probs!.length, 4);
  assert.equal(finish_reason, "stop");
  assert.equal(stop_reason, null);
  assert.ok(!message.content!.includes("<|im_end|>"), "skip_special_tokens drops EOS from the text");
});

test("a seed gives the same tokens again; n=3 gives three choices", SLOW, async () => {
  const a = await chat({ max_tokens: 6, seed: 11, logprobs: true });
  const b = await chat({ max_tokens: 6, seed: 11, logprobs: true });
  assert.deepEqual(a.choices[0].message.generation_token_ids, b.choices[0].message.generation_token_ids);
  const three = await chat({ max_tokens: 4, n: 3, seed: 12, logprobs: true });
  assert.deepEqual(three.choices.map((c) => c.index), [0, 1, 2]);
  assert.equal(three.usage.completion_tokens, 12);
  assert.equal(new Set(three.choices.map((c) => c.message.generation_token_ids!.join())).size, 3);
});

test("a stop string ends generation across token boundaries, aborts the engine request and is reported", SLOW, async () => {
  const free = await chat({ max_tokens: 16, seed: 21, logprobs: true });
  const text = free.choices[0].message.content!;
  const stop = text.slice(6, 9);
  const cut = text.indexOf(stop);
  const stopped = await chat({ max_tokens: 16, seed: 21, logprobs: true, stop: [stop] });
  const [choice] = stopped.choices;
  assert.equal(choice.message.content, text.slice(0, cut));
  assert.equal(choice.finish_reason, "stop");
  assert.equal(choice.stop_reason, stop);
  assert.ok(choice.message.generation_token_ids!.length < 16, "generation stopped early");
  assert.deepEqual(choice.message.generation_token_ids, free.choices[0].message.generation_token_ids!.slice(0, choice.message.generation_token_ids!.length));
  assert.equal(engine.stats().running, 0, "the engine request was aborted");
  const kept = await chat({ max_tokens: 16, seed: 21, stop, include_stop_str_in_output: true });
  assert.equal(kept.choices[0].message.content, text.slice(0, cut + stop.length));
});

test("streaming sends a role chunk, one chunk per token with its ids and logprobs, a usage chunk and [DONE]", SLOW, async () => {
  const body = { max_tokens: 7, seed: 31, logprobs: true, return_token_ids: true };
  const whole = await chat(body);
  const chunks = await chatStream({ ...body, stream_options: { include_usage: true } });
  const [first] = chunks;
  assert.deepEqual(first.choices[0].delta.role, "assistant");
  assert.deepEqual(first.prompt_token_ids, whole.prompt_token_ids);
  assert.deepEqual(first.choices[0].delta.prompt_token_ids, whole.prompt_token_ids);
  const tokenChunks = chunks.filter((c) => c.choices[0]?.delta.generation_token_ids);
  assert.deepEqual(tokenChunks.flatMap((c) => c.choices[0].delta.generation_token_ids!), whole.choices[0].message.generation_token_ids);
  assert.deepEqual(tokenChunks.flatMap((c) => c.choices[0].token_ids!), whole.choices[0].token_ids);
  assert.deepEqual(tokenChunks.flatMap((c) => c.choices[0].logprobs!.content!.map((e) => e.logprob)), whole.choices[0].message.generation_log_probs);
  assert.equal(chunks.map((c) => c.choices[0]?.delta.content ?? "").join(""), whole.choices[0].message.content);
  const finish = chunks.filter((c) => c.choices[0]?.finish_reason);
  assert.deepEqual(finish.map((c) => c.choices[0].finish_reason), ["length"]);
  const usage = chunks.at(-1)!;
  assert.deepEqual(usage.choices, []);
  assert.equal(usage.usage!.completion_tokens, 7);
  // As OpenAI streams with include_usage: every other chunk carries usage, as null.
  for (const chunk of chunks.slice(0, -1)) assert.equal(chunk.usage, null);
  for (const chunk of chunks) {
    assert.equal(chunk.id, chunks[0].id);
    assert.equal(typeof chunk.policy_version, "number");
  }
});

test("streaming n=2 interleaves two choices, each finishing once", SLOW, async () => {
  const chunks = await chatStream({ max_tokens: 3, n: 2, seed: 5 });
  for (const index of [0, 1]) {
    const mine = chunks.filter((c) => c.choices[0]?.index === index);
    assert.equal(mine[0].choices[0].delta.role, "assistant");
    assert.equal(mine.filter((c) => c.choices[0].finish_reason !== null).length, 1);
  }
});

test("a client that cancels a stream aborts its engine request", SLOW, async () => {
  const res = await app.request("/v1/chat/completions", postJson({ messages: USER, stream: true, max_tokens: 400, ignore_eos: true }));
  const reader = res.body!.getReader();
  await reader.read();
  await reader.read();
  await reader.cancel();
  for (let i = 0; i < 50 && engine.stats().running + engine.stats().waiting > 0; i++) await new Promise((r) => setTimeout(r, 10));
  assert.equal(engine.stats().running + engine.stats().waiting, 0);
});

test("max_tokens beyond the context is clamped to the room left (finish_reason length)", SLOW, async () => {
  const long = [{ role: "user", content: "word ".repeat(480) }];
  const promptLength = (await tokenize({ messages: long })).length;
  const out = await chat({ messages: long, max_tokens: 100_000, ignore_eos: true });
  assert.equal(out.choices[0].finish_reason, "length");
  assert.equal(out.usage.completion_tokens, 512 - promptLength);
  const strict = servedApp({ strictMaxTokens: true });
  const err = await errorOf(await strict.request("/v1/chat/completions", postJson({ messages: long, max_tokens: 100_000 })), 400);
  assert.equal(err.param, "max_tokens");
});

test("chat_template_kwargs reach the template: the prompt chat runs on is the one /tokenize answers", SLOW, async () => {
  const kwargs = { enable_thinking: false };
  const out = await chat({ max_tokens: 1, chat_template_kwargs: kwargs, return_token_ids: true });
  const ids = await tokenize({ messages: USER, chat_template_kwargs: kwargs });
  assert.deepEqual(out.prompt_token_ids, ids);
  assert.ok(app && ids.length > (await tokenize({ messages: USER })).length);
});

test("tools render into the prompt; output that is not a well-formed call stays content, never an error", SLOW, async () => {
  const tools = [{ type: "function", function: { name: "add", parameters: { type: "object" } } }];
  // The bias makes the model write <tool_call> again and again: an unparsable call (tool_choice auto: "required"
  // would force a well-formed one).
  const out = await chat({ tools, tool_choice: "auto", max_tokens: 3, logit_bias: { 151657: 100 }, return_token_ids: true });
  assert.deepEqual(out.prompt_token_ids, await tokenize({ messages: USER, tools }));
  assert.equal(out.choices[0].message.content, "<tool_call><tool_call><tool_call>");
  assert.equal(out.choices[0].message.tool_calls, undefined);
  assert.equal(out.choices[0].finish_reason, "length");
});

test("a reasoning parser moves <think> text to reasoning_content", SLOW, async () => {
  const thinking = servedApp({ reasoningParser: "qwen3" });
  const out = await chat({ max_tokens: 3, logit_bias: { 151667: 100 } }, thinking);
  assert.equal(out.choices[0].message.reasoning_content, "<think><think>");
  assert.equal(out.choices[0].message.reasoning, "<think><think>");
  assert.equal(out.choices[0].message.content, null);
});

test("requests that cannot be served are 400s naming the field", SLOW, async () => {
  const cases: [Record<string, unknown>, string, RegExp][] = [
    [{ messages: [{ role: "user", content: "x ".repeat(600) }] }, "messages", /context length/],
    [{ logprobs: true, top_logprobs: null }, "top_logprobs", /top_logprobs/],
    [{ top_logprobs: 2 }, "top_logprobs", /logprobs/],
    [{ top_logprobs: 21, logprobs: true }, "top_logprobs", /20/],
    [{ response_format: { type: "yaml" } }, "response_format.type", /json_schema/],
    [{ temperature: 3 }, "temperature", /2/],
    [{ temperature: 0, n: 2 }, "n", /greedy/],
    [{ tool_choice: "required" }, "tool_choice", /tools/],
    [{ tools: [{ type: "function", function: { name: "f" } }], tool_choice: { type: "function", function: { name: "g" } } }, "tool_choice", /'g'/],
    [{ logit_bias: { "999999": 1 } }, "logit_bias", /vocabulary/],
    [{ prompt_logprobs: 1, stream: true }, "prompt_logprobs", /not supported with stream/],
    [{ prompt_logprobs: 21 }, "prompt_logprobs", /20/],
    [{ stream_options: { include_usage: true } }, "stream_options", /stream/],
  ];
  for (const [body, param, message] of cases) {
    const err = await errorOf(await app.request("/v1/chat/completions", postJson({ messages: USER, max_tokens: 2, ...body })), 400);
    assert.equal(err.param, param, JSON.stringify(body));
    assert.match(err.message, message, JSON.stringify(body));
  }
  const missing = await errorOf(await app.request("/v1/chat/completions", postJson({ messages: USER, model: "gpt-4o" })), 404);
  assert.equal(missing.code, "model_not_found");
});

test("pinned sampling rejects a request that differs, naming the field, and fills in what a request omits", SLOW, async () => {
  const pinned = servedApp({ requireTemperature: 1, requireTopP: 1, requireTopK: -1 });
  const err = await errorOf(await pinned.request("/v1/chat/completions", postJson({ messages: USER, temperature: 0.7 })), 400);
  assert.equal(err.param, "temperature");
  assert.match(err.message, /0\.7/);
  assert.equal((await errorOf(await pinned.request("/v1/chat/completions", postJson({ messages: USER, top_k: 50 })), 400)).param, "top_k");
  await chat({ max_tokens: 2, top_k: 0, top_p: 1 }, pinned);
  await chat({ max_tokens: 2 }, pinned);
});

test("logprobs_mode chooses the distribution per request; the server default applies when a request omits it", SLOW, async () => {
  const body = { max_tokens: 5, seed: 41, temperature: 0.5, logprobs: true };
  const processed = await chat(body);
  const raw = await chat({ ...body, logprobs_mode: "raw" });
  const rawByDefault = await chat(body, servedApp({ logprobsMode: "raw" }));
  const ids = (c: ChatCompletion) => c.choices[0].message.generation_token_ids;
  const lps = (c: ChatCompletion) => c.choices[0].message.generation_log_probs!;
  assert.deepEqual(ids(raw), ids(processed), "the mode changes what is reported, not what is sampled");
  assert.deepEqual(lps(rawByDefault), lps(raw));
  // At temperature 0.5 the sampled distribution is not the model's raw one.
  lps(processed).forEach((lp, j) => assert.ok(Math.abs(lp - lps(raw)[j]) > 1e-6, `token ${j}: ${lp} vs raw ${lps(raw)[j]}`));
});

test("streamed tool calls become tool_calls deltas with an index, id, type, name and JSON-string arguments", () => {
  const text = 'On it.<tool_call>\n{"name": "add", "arguments": {"a": 1}}\n</tool_call>\n<tool_call>\n{"name": "add", "arguments": {"a": 2}}\n</tool_call>';
  const output = new AssistantOutput(null, toolCalling("hermes", [{ function: { name: "add" } }], "auto", null));
  const calls = { count: 0 };
  const deltas: ChatDelta[] = [];
  for (let i = 0; i < text.length; i += 4) deltas.push(chatDelta(output.push(text.slice(i, i + 4)), calls));
  deltas.push(chatDelta(output.flush(), calls));
  assert.equal(deltas.map((d) => d.content ?? "").join(""), "On it.");
  const toolDeltas = deltas.flatMap((d) => d.tool_calls ?? []);
  assert.deepEqual(toolDeltas.map((d) => [d.index, d.type, d.function]), [
    [0, "function", { name: "add", arguments: '{"a":1}' }],
    [1, "function", { name: "add", arguments: '{"a":2}' }],
  ]);
  for (const delta of toolDeltas) assert.match(delta.id!, /^chatcmpl-tool-[0-9a-f]{32}$/);
  assert.equal(output.calledTools, true);
});

test("prompt_logprobs reports one entry per prompt token, the first null", SLOW, async () => {
  const out = await chat({ max_tokens: 1, prompt_logprobs: 0, return_token_ids: true });
  const ids = out.prompt_token_ids!;
  const prompt = out.prompt_logprobs!;
  assert.equal(prompt.length, ids.length);
  assert.equal(prompt[0], null);
  prompt.slice(1).forEach((entry, i) => assert.deepEqual(Object.keys(entry!), [String(ids[i + 1])], `position ${i + 1}`));
});

test("an app built without the model's grammars constrains over the tokenizer's vocabulary: tool_choice named is one call", SLOW, async () => {
  const tools = [{ type: "function", function: { name: "add", parameters: { type: "object", properties: { a: { type: "integer", minimum: 0, maximum: 9 } }, required: ["a"] } } }];
  const out = await chat({ tools, tool_choice: { type: "function", function: { name: "add" } }, max_tokens: 40, seed: 3 });
  const calls = out.choices[0].message.tool_calls ?? [];
  assert.equal(out.choices[0].finish_reason, "tool_calls", JSON.stringify(out.choices[0].message));
  assert.equal(calls.length, 1);
  assert.equal(calls[0].function.name, "add");
  assert.ok(Number.isInteger(JSON.parse(calls[0].function.arguments).a));
});
