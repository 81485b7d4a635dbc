/**
 * vLLM's tokens-in / tokens-out routes against a real server on loopback (the tiny model, its real Qwen3 tokenizer
 * and template): POST /inference/v1/generate, POST /v1/chat/completions/render and /derender. The expected shapes
 * below are written from vLLM's definitions (GenerateRequest, GenerateResponse, GenerateResponseChoice,
 * GenerateStreamResponse, DerenderChatRequest, ChatCompletionLogProbs), not from this server's answers. What a
 * trainer relies on: render then generate with a seed gives the chat route's tokens and log-probabilities, and
 * derender of those tokens gives the chat route's message.
 */
import { after, test } from "node:test";
import assert from "node:assert/strict";
import { z } from "zod";
import { ServerConfig } from "../../src/config.ts";
import { silentLogger } from "../../src/log.ts";
import { startServer } from "../../src/server.ts";
import { testCacheDir } from "../support/served.ts";

const MAX_MODEL_LEN = 1024;
const server = await startServer(
  ServerConfig.parse({ port: 0, device: "cpu", cacheDir: testCacheDir(), maxModelLen: MAX_MODEL_LEN, reasoningParser: "qwen3", logRequests: false }),
  silentLogger,
);
after(() => server.close());
await server.ready;
const base = `http://127.0.0.1:${server.port}`;
const SLOW = { timeout: 300_000 };
const EOS = 151645;

// vLLM's shapes, as its pydantic models define them.
const LogProb = z.object({ token: z.string(), logprob: z.number(), bytes: z.array(z.int()).nullable() });
const LogProbsContent = LogProb.extend({ top_logprobs: z.array(LogProb) });
const ChatCompletionLogProbs = z.object({ content: z.array(LogProbsContent).nullable() });
const UsageInfo = z.object({ prompt_tokens: z.int(), total_tokens: z.int(), completion_tokens: z.int().nullable() });
const GenerateResponseChoice = z.object({
  index: z.int(),
  logprobs: ChatCompletionLogProbs.nullable(),
  finish_reason: z.string().nullable(),
  token_ids: z.array(z.int().nonnegative()).nullable(),
});
const GenerateResponse = z.object({
  request_id: z.string(),
  choices: z.array(GenerateResponseChoice),
  prompt_logprobs: z.array(z.record(z.string(), z.object({ logprob: z.number(), rank: z.int().nullable(), decoded_token: z.string().nullable() })).nullable()).nullable(),
  kv_transfer_params: z.record(z.string(), z.unknown()).nullable(),
  usage: UsageInfo.nullable().optional(),
});
const GenerateStreamResponse = z.object({
  request_id: z.string(),
  choices: z.array(GenerateResponseChoice.extend({ finish_reason: z.string().nullable() })),
  usage: UsageInfo.nullable().optional(),
});
const SamplingParams = z.object({
  n: z.int(),
  temperature: z.number(),
  top_p: z.number(),
  top_k: z.int(),
  min_p: z.number(),
  seed: z.int().nullable(),
  max_tokens: z.int().nullable(),
  min_tokens: z.int(),
  stop_token_ids: z.array(z.int()).nullable(),
  ignore_eos: z.boolean(),
  logprobs: z.int().nullable(),
  prompt_logprobs: z.int().nullable(),
  presence_penalty: z.number(),
  frequency_penalty: z.number(),
  repetition_penalty: z.number(),
});
const GenerateRequest = z.object({
  request_id: z.string(),
  token_ids: z.array(z.int().nonnegative()).min(1),
  sampling_params: SamplingParams,
  model: z.string().nullable(),
  stream: z.boolean().nullable(),
  stream_options: z.object({ include_usage: z.boolean().nullish() }).nullable(),
  cache_salt: z.string().nullable(),
  priority: z.int(),
  features: z.unknown().nullable(),
});
const ErrorResponse = z.object({
  error: z.object({ message: z.string(), type: z.string(), param: z.string().nullable(), code: z.string().nullable() }),
});

async function post(path: string, body: unknown): Promise<Response> {
  return await fetch(base + path, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });
}

async function ok<T>(path: string, body: unknown, schema: z.ZodType<T>): Promise<T> {
  const res = await post(path, body);
  const text = await res.text();
  assert.equal(res.status, 200, text);
  return schema.parse(JSON.parse(text));
}

async function refused(path: string, body: unknown, status = 400): Promise<z.infer<typeof ErrorResponse>["error"]> {
  const res = await post(path, body);
  const text = await res.text();
  assert.equal(res.status, status, `${path} ${JSON.stringify(body).slice(0, 200)} -> ${text}`);
  assert.match(res.headers.get("content-type") ?? "", /application\/json/);
  return ErrorResponse.parse(JSON.parse(text)).error;
}

/** The data events of an SSE body, [DONE] excluded; checks that [DONE] ends it. */
async function sseEvents(res: Response): Promise<unknown[]> {
  assert.equal(res.status, 200);
  assert.match(res.headers.get("content-type") ?? "", /text\/event-stream/);
  const data = (await res.text()).split("\n\n").filter((e) => e.startsWith("data: ")).map((e) => e.slice(6));
  assert.equal(data.at(-1), "[DONE]");
  return data.slice(0, -1).map((d) => JSON.parse(d));
}

async function tokenize(text: string): Promise<number[]> {
  const res = await post("/tokenize", { prompt: text, add_special_tokens: false });
  assert.equal(res.status, 200);
  return (await res.json()).tokens;
}

const PROMPT = [9707, 1879, 11, 1246, 525, 498, 30];

test("generate: vLLM's GenerateResponse with its token_id logprobs, seeded samples reproducible", SLOW, async () => {
  const body = {
    request_id: "rl-42",
    token_ids: PROMPT,
    sampling_params: { max_tokens: 5, seed: 3, logprobs: 2, temperature: 1.0, n: 2, ignore_eos: true },
  };
  const answer = await ok("/inference/v1/generate", body, GenerateResponse);
  assert.equal(answer.request_id, "rl-42");
  assert.deepEqual(answer.choices.map((c) => c.index), [0, 1]);
  assert.equal(answer.usage?.prompt_tokens, PROMPT.length);
  assert.equal(answer.usage?.completion_tokens, 10);
  assert.equal(answer.prompt_logprobs, null);
  for (const choice of answer.choices) {
    assert.equal(choice.finish_reason, "length");
    assert.equal(choice.token_ids!.length, 5);
    const content = choice.logprobs!.content!;
    assert.equal(content.length, 5);
    content.forEach((entry, j) => {
      // vLLM names every token of this route by its id, and lists the sampled token first among top_logprobs.
      assert.equal(entry.token, `token_id:${choice.token_ids![j]}`);
      assert.ok(entry.logprob <= 0 && entry.logprob >= -9999);
      assert.equal(entry.top_logprobs.length, 2);
      assert.deepEqual(entry.top_logprobs[0], { token: entry.token, logprob: entry.logprob, bytes: null });
      assert.match(entry.top_logprobs[1].token, /^token_id:\d+$/);
    });
  }
  // The two samples of one seed differ (seed + i), and the same request gives the same ids again.
  assert.notDeepEqual(answer.choices[0].token_ids, answer.choices[1].token_ids);
  const again = await ok("/inference/v1/generate", body, GenerateResponse);
  assert.deepEqual(again.choices.map((c) => c.token_ids), answer.choices.map((c) => c.token_ids));

  // logprobs: 0 still reports the sampled token among top_logprobs (vLLM lists max(logprobs, 1)).
  const zero = await ok("/inference/v1/generate", { token_ids: PROMPT, sampling_params: { max_tokens: 2, seed: 3, logprobs: 0 } }, GenerateResponse);
  assert.equal(zero.choices[0].logprobs!.content![0].top_logprobs.length, 1);
  // Without logprobs none are computed; without request_id one is made up.
  const plain = await ok("/inference/v1/generate", { token_ids: PROMPT, sampling_params: { max_tokens: 2 } }, GenerateResponse);
  assert.equal(plain.choices[0].logprobs, null);
  assert.ok(plain.request_id.length > 0);
});

test("generate: prompt_logprobs in vLLM's shape, stop_token_ids end with finish_reason stop", SLOW, async () => {
  const answer = await ok("/inference/v1/generate", {
    token_ids: PROMPT,
    sampling_params: { max_tokens: 2, seed: 0, prompt_logprobs: 1 },
  }, GenerateResponse);
  const entries = answer.prompt_logprobs!;
  assert.equal(entries.length, PROMPT.length);
  assert.equal(entries[0], null);
  for (const [i, entry] of entries.slice(1).entries()) assert.ok(entry![String(PROMPT[i + 1])], `position ${i + 1} has its own token`);

  // A stop token the model will sample: the first id a seeded run gives.
  const first = (await ok("/inference/v1/generate", { token_ids: PROMPT, sampling_params: { max_tokens: 4, seed: 9 } }, GenerateResponse)).choices[0].token_ids!;
  const stopped = await ok("/inference/v1/generate", {
    token_ids: PROMPT,
    sampling_params: { max_tokens: 4, seed: 9, stop_token_ids: [first[1]] },
  }, GenerateResponse);
  const stopAt = first.indexOf(first[1]);
  assert.deepEqual(stopped.choices[0].token_ids, first.slice(0, stopAt + 1));
  assert.equal(stopped.choices[0].finish_reason, "stop");
});

test("generate: stream sends one token a chunk, the finish reason on the last, usage when asked, then [DONE]", SLOW, async () => {
  const sp = { max_tokens: 4, seed: 11, logprobs: 1, ignore_eos: true };
  const whole = await ok("/inference/v1/generate", { token_ids: PROMPT, sampling_params: sp }, GenerateResponse);
  const res = await post("/inference/v1/generate", {
    request_id: "s-1",
    token_ids: PROMPT,
    sampling_params: sp,
    stream: true,
    stream_options: { include_usage: true },
  });
  const events = (await sseEvents(res)).map((e) => GenerateStreamResponse.parse(e));
  const usage = events.at(-1)!;
  assert.deepEqual(usage.choices, []);
  assert.equal(usage.usage?.completion_tokens, 4);
  assert.equal(usage.usage?.prompt_tokens, PROMPT.length);
  const chunks = events.slice(0, -1);
  assert.equal(chunks.length, 4);
  for (const chunk of chunks) {
    assert.equal(chunk.request_id, "s-1");
    assert.equal(chunk.choices.length, 1);
    assert.equal(chunk.choices[0].token_ids!.length, 1);
  }
  assert.deepEqual(chunks.map((c) => c.choices[0].finish_reason), [null, null, null, "length"]);
  assert.deepEqual(chunks.flatMap((c) => c.choices[0].token_ids!), whole.choices[0].token_ids);
  assert.deepEqual(
    chunks.flatMap((c) => c.choices[0].logprobs!.content!.map((e) => e.logprob)),
    whole.choices[0].logprobs!.content!.map((e) => e.logprob),
  );
});

const TOOLS = [{
  type: "function",
  function: { name: "get_weather", description: "Weather of a city", parameters: { type: "object", properties: { city: { type: "string" } } } },
}];

test("render then generate gives the chat route's prompt, tokens and log-probabilities; derender its message", SLOW, async () => {
  const chatRequest = {
    messages: [{ role: "system", content: "You answer briefly." }, { role: "user", content: "Weather in Paris?" }],
    tools: TOOLS,
    seed: 1234,
    max_tokens: 12,
    temperature: 0.8,
    top_p: 0.95,
    logprobs: true,
    top_logprobs: 1,
  };
  const rendered = await ok("/v1/chat/completions/render", chatRequest, GenerateRequest);
  const tokenized = (await (await post("/tokenize", { messages: chatRequest.messages, tools: TOOLS })).json()).tokens;
  assert.deepEqual(rendered.token_ids, tokenized);
  assert.equal(rendered.sampling_params.seed, 1234);
  assert.equal(rendered.sampling_params.max_tokens, 12);
  assert.equal(rendered.sampling_params.logprobs, 1);
  assert.equal(rendered.priority, 0);
  assert.equal(rendered.stream, false);

  const chat = await (await post("/v1/chat/completions", chatRequest)).json();
  const message = chat.choices[0].message;
  assert.deepEqual(message.prompt_token_ids, rendered.token_ids);

  // The render answer goes to generate unchanged, as a disaggregated client sends it.
  const generated = await ok("/inference/v1/generate", rendered, GenerateResponse);
  const choice = generated.choices[0];
  assert.deepEqual(choice.token_ids, message.generation_token_ids);
  const logprobs = choice.logprobs!.content!.map((e) => e.logprob);
  assert.equal(logprobs.length, message.generation_log_probs.length);
  logprobs.forEach((lp, j) => assert.ok(Math.abs(lp - message.generation_log_probs[j]) < 1e-5, `token ${j}: ${lp} vs ${message.generation_log_probs[j]}`));
  assert.equal(choice.finish_reason, chat.choices[0].finish_reason === "tool_calls" ? "stop" : chat.choices[0].finish_reason);

  const derendered = await (await post("/v1/chat/completions/derender", {
    model: "gym-edge/tiny",
    generate_response: generated,
    prompt_tokens: rendered.token_ids.length,
    chat_request: chatRequest,
  })).json();
  const out = derendered.choices[0];
  assert.equal(out.message.role, "assistant");
  assert.equal(out.message.content, message.content);
  assert.equal(out.message.reasoning_content, message.reasoning_content);
  assert.deepEqual(out.message.tool_calls?.map((c: { function: unknown }) => c.function), message.tool_calls?.map((c: { function: unknown }) => c.function));
  assert.equal(out.finish_reason, chat.choices[0].finish_reason);
  assert.deepEqual(out.message.generation_token_ids, message.generation_token_ids);
  // The token_id names resolve to the tokens' text and bytes, as the chat route names them.
  assert.deepEqual(out.logprobs.content.map((e: { token: string }) => e.token), chat.choices[0].logprobs.content.map((e: { token: string }) => e.token));
  assert.deepEqual(out.logprobs.content.map((e: { bytes: number[] }) => e.bytes), chat.choices[0].logprobs.content.map((e: { bytes: number[] }) => e.bytes));
  assert.deepEqual(derendered.usage, { prompt_tokens: rendered.token_ids.length, completion_tokens: choice.token_ids!.length, total_tokens: rendered.token_ids.length + choice.token_ids!.length, prompt_tokens_details: null });
});

test("render applies the on-policy splice as chat does; without max_tokens it fills the context", SLOW, async () => {
  const first = { messages: [{ role: "user", content: "Hi" }], max_tokens: 6, seed: 5, logprobs: true };
  const turn = (await (await post("/v1/chat/completions", first)).json()).choices[0].message;
  const second = {
    messages: [
      ...first.messages,
      { role: "assistant", content: turn.content, reasoning_content: turn.reasoning_content, prompt_token_ids: turn.prompt_token_ids, generation_token_ids: turn.generation_token_ids },
      { role: "user", content: "And then?" },
    ],
  };
  const rendered = await ok("/v1/chat/completions/render", second, GenerateRequest);
  const prefix = [...turn.prompt_token_ids, ...turn.generation_token_ids];
  // The model's own tokens, up to (not including) a final EOS the template writes itself.
  const kept = prefix.at(-1) === EOS ? prefix.slice(0, -1) : prefix;
  assert.deepEqual(rendered.token_ids.slice(0, kept.length), kept);
  const tokenized = (await (await post("/tokenize", second)).json()).tokens;
  assert.deepEqual(rendered.token_ids, tokenized);
  assert.equal(rendered.sampling_params.max_tokens, MAX_MODEL_LEN - rendered.token_ids.length);
  assert.equal(rendered.sampling_params.seed, null);
  // stream and its options are carried to the GenerateRequest, as vLLM's render carries them.
  const streamed = await ok("/v1/chat/completions/render", { ...first, stream: true, stream_options: { include_usage: true } }, GenerateRequest);
  assert.equal(streamed.stream, true);
  assert.equal(streamed.stream_options?.include_usage, true);
});

test("derender parses tool calls and reasoning with the server's parsers; without chat_request the plain text", SLOW, async () => {
  const text = '<think>\nParis it is.\n</think>\n\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>';
  const ids = [...await tokenize(text), EOS];
  const generate_response = { request_id: "g-1", choices: [{ index: 0, token_ids: ids, finish_reason: "stop", logprobs: null }] };
  const parsed = await (await post("/v1/chat/completions/derender", {
    model: "gym-edge/tiny",
    generate_response,
    chat_request: { messages: [{ role: "user", content: "Weather?" }], tools: TOOLS },
  })).json();
  const choice = parsed.choices[0];
  assert.equal(parsed.object, "chat.completion");
  assert.equal(parsed.id, "g-1");
  assert.equal(choice.finish_reason, "tool_calls");
  assert.equal(choice.message.reasoning_content.trim(), "Paris it is.");
  assert.equal(choice.message.tool_calls.length, 1);
  assert.equal(choice.message.tool_calls[0].type, "function");
  assert.equal(choice.message.tool_calls[0].function.name, "get_weather");
  assert.deepEqual(JSON.parse(choice.message.tool_calls[0].function.arguments), { city: "Paris" });
  assert.equal(parsed.usage.prompt_tokens, 0);
  assert.equal(parsed.usage.completion_tokens, ids.length);

  const plain = await (await post("/v1/chat/completions/derender", { model: "gym-edge/tiny", generate_response })).json();
  assert.equal(plain.choices[0].message.content, text);
  assert.equal(plain.choices[0].message.tool_calls, undefined);
  assert.equal(plain.choices[0].finish_reason, "stop");
});

test("vLLM fields that only steer vLLM's own output are accepted and ignored", SLOW, async () => {
  const sp = { max_tokens: 3, seed: 8 };
  const plain = await ok("/inference/v1/generate", { token_ids: PROMPT, sampling_params: sp }, GenerateResponse);
  const hinted = await ok("/inference/v1/generate", {
    token_ids: PROMPT,
    model: "gym-edge/tiny",
    priority: 0,
    cache_salt: null,
    features: null,
    kv_transfer_params: null,
    sampling_params: {
      ...sp,
      detokenize: false,
      flat_logprobs: true,
      output_kind: 0,
      skip_clone: true,
      spaces_between_special_tokens: false,
      stream_interval: 4,
      skip_reading_prefix_cache: true,
      extra_args: {},
      best_of: 1,
      thinking_token_budget: -1,
      bad_words: [],
      truncate_prompt_tokens: null,
    },
  }, GenerateResponse);
  assert.deepEqual(hinted.choices[0].token_ids, plain.choices[0].token_ids);
});

test("generate: sampling_params.structured_outputs (and guided_decoding) constrain the tokens", SLOW, async () => {
  for (const sp of [{ structured_outputs: { regex: "[a-c]{3}-[0-9]{2}" } }, { guided_decoding: { choice: ["left", "right"] } }]) {
    const res = await post("/inference/v1/generate", { token_ids: PROMPT, sampling_params: { ...sp, n: 3, seed: 2, temperature: 1, max_tokens: 20 } });
    assert.equal(res.status, 200);
    const body = await res.json();
    for (const choice of body.choices) {
      // The end token (either of the model's two) is the last id.
      const text = (await (await post("/detokenize", { tokens: choice.token_ids.slice(0, -1) })).json()).prompt;
      assert.equal(choice.finish_reason, "stop");
      assert.ok(/^[a-c]{3}-[0-9]{2}$/.test(text) || ["left", "right"].includes(text), text);
    }
  }
});

test("bad input is a 4xx in OpenAI's error shape naming the field", SLOW, async () => {
  const sp = { max_tokens: 2 };
  const generate = "/inference/v1/generate";
  assert.equal((await refused(generate, { token_ids: [9707, 1e9], sampling_params: sp })).param, "token_ids[1]");
  assert.equal((await refused(generate, { token_ids: [9707, 10_000_000], sampling_params: sp })).param, "token_ids[1]");
  assert.match((await refused(generate, { token_ids: [9707, -1], sampling_params: sp })).param ?? "", /^token_ids/);
  assert.match((await refused(generate, { token_ids: "hello", sampling_params: sp })).param ?? "", /^token_ids/);
  assert.match((await refused(generate, { token_ids: [1.5], sampling_params: sp })).param ?? "", /^token_ids/);
  assert.match((await refused(generate, { token_ids: [], sampling_params: sp })).param ?? "", /^token_ids/);
  assert.match((await refused(generate, { token_ids: PROMPT })).param ?? "", /^sampling_params/);
  assert.equal((await refused(generate, { token_ids: PROMPT, sampling_params: { temperature: "hot" } })).param, "sampling_params.temperature");
  assert.equal((await refused(generate, { token_ids: PROMPT, sampling_params: { temperature: 5 } })).param, "sampling_params.temperature");
  assert.equal((await refused(generate, { token_ids: PROMPT, sampling_params: { max_tokens: 0 } })).param, "sampling_params.max_tokens");
  assert.equal((await refused(generate, { token_ids: PROMPT, sampling_params: { logprobs: -1 } })).param, "sampling_params.logprobs");
  assert.equal((await refused(generate, { token_ids: PROMPT, sampling_params: { logprobs: 21 } })).param, "sampling_params.logprobs");
  assert.equal((await refused(generate, { token_ids: PROMPT, sampling_params: { structured_outputs: { regex: "([a-z" } } })).param, "sampling_params.structured_outputs.regex");
  assert.equal((await refused(generate, { token_ids: PROMPT, sampling_params: { guided_decoding: { choice: [] } } })).param, "sampling_params.guided_decoding.choice");
  assert.equal((await refused(generate, { token_ids: PROMPT, sampling_params: { structured_outputs: "a+" } })).param, "sampling_params.structured_outputs");
  assert.equal((await refused(generate, { token_ids: PROMPT, sampling_params: { allowed_token_ids: [1, 2] } })).param, "sampling_params.allowed_token_ids");
  assert.equal((await refused(generate, { token_ids: PROMPT, sampling_params: { logprob_token_ids: [1] } })).param, "sampling_params.logprob_token_ids");
  assert.equal((await refused(generate, { token_ids: PROMPT, sampling_params: {}, priority: 1 })).param, "priority");
  assert.equal((await refused(generate, { token_ids: PROMPT, sampling_params: {}, cache_salt: 5 })).param, "cache_salt");
  assert.equal((await refused(generate, { token_ids: PROMPT, sampling_params: {}, kv_transfer_params: { do_remote_decode: true } })).param, "kv_transfer_params");
  assert.equal((await refused(generate, { token_ids: PROMPT, sampling_params: {}, features: { mm_hashes: {}, mm_placeholders: {} } })).param, "features");
  assert.equal((await refused(generate, { token_ids: PROMPT, sampling_params: {}, model: "other" }, 404)).code, "model_not_found");
  const tooLong = await refused(generate, { token_ids: new Array(MAX_MODEL_LEN).fill(9707), sampling_params: sp });
  assert.match(tooLong.message, /context length/);
  assert.equal(tooLong.param, "token_ids");
  assert.equal((await refused(generate, "not an object")).type, "invalid_request_error");

  const render = "/v1/chat/completions/render";
  assert.match((await refused(render, { messages: [] })).param ?? "", /^messages/);
  assert.match((await refused(render, { messages: [{ role: "user", content: "x".repeat(10) }], max_tokens: "many" })).param ?? "", /^max_tokens/);
  assert.match((await refused(render, { messages: [{ role: "user", content: "word ".repeat(MAX_MODEL_LEN) }] })).message, /context length/);
  // What the chat route refuses, render refuses too.
  assert.equal((await refused(render, { messages: [{ role: "user", content: "hi" }], top_logprobs: 2 })).param, "top_logprobs");
  assert.equal((await refused(render, { messages: [{ role: "user", content: "hi" }], tool_choice: { type: "function", function: { name: "nope" } }, tools: TOOLS })).type, "invalid_request_error");

  const derender = "/v1/chat/completions/derender";
  const response = (ids: unknown) => ({ choices: [{ index: 0, token_ids: ids, finish_reason: "length" }] });
  assert.equal((await refused(derender, { generate_response: response([9707, 1e9]) })).param, "generate_response.choices[0].token_ids[1]");
  assert.match((await refused(derender, { generate_response: response("hi") })).param ?? "", /^generate_response/);
  assert.match((await refused(derender, { generate_response: response([]) })).param ?? "", /^generate_response/);
  assert.match((await refused(derender, {})).param ?? "", /^generate_response/);
  assert.equal((await refused(derender, { generate_response: response([9707]), stream: true })).param, "stream");
});
