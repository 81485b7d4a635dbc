/** The official `openai` client against a real server (the tiny model, in this process, on a free loopback port). */
import { after, test } from "node:test";
import assert from "node:assert/strict";
import OpenAI from "openai";
import { ServerConfig } from "../../src/config.ts";
import { silentLogger } from "../../src/log.ts";
import { startServer } from "../../src/server.ts";
import { testCacheDir } from "../support/served.ts";

const server = await startServer(
  ServerConfig.parse({ port: 0, device: "cpu", cacheDir: testCacheDir() }),
  silentLogger,
);
after(() => server.close());
const { engine } = await server.ready;
const base = `http://127.0.0.1:${server.port}`;
const client = new OpenAI({ baseURL: `${base}/v1`, apiKey: "unused", maxRetries: 0 });
const MODEL = "gym-edge/tiny";
const SLOW = { timeout: 120_000 };
const messages: OpenAI.ChatCompletionMessageParam[] = [{ role: "user", content: "What is the weather in Paris?" }];
const tools: OpenAI.ChatCompletionTool[] = [{
  type: "function",
  function: { name: "get_weather", description: "Current weather", parameters: { type: "object", properties: { city: { type: "string" } } } },
}];

/** The RL fields the server adds to a chat message. */
interface TrainingMessage {
  prompt_token_ids: number[];
  generation_token_ids: number[];
  generation_log_probs: number[];
}

async function tokenize(body: unknown): Promise<number[]> {
  const res = await fetch(`${base}/tokenize`, { method: "POST", body: JSON.stringify(body) });
  return (await res.json()).tokens;
}

test("chat: a plain completion", SLOW, async () => {
  const out = await client.chat.completions.create({ model: MODEL, messages, max_tokens: 6, seed: 1 });
  assert.equal(out.object, "chat.completion");
  assert.equal(out.choices[0].message.role, "assistant");
  assert.equal(typeof out.choices[0].message.content, "string");
  assert.equal(out.usage?.completion_tokens, 6);
});

test("chat: streamed, with usage in the last chunk; the text equals the unstreamed one for the same seed", SLOW, async () => {
  const whole = await client.chat.completions.create({ model: MODEL, messages, max_tokens: 6, seed: 2 });
  const stream = await client.chat.completions.create({
    model: MODEL,
    messages,
    max_tokens: 6,
    seed: 2,
    stream: true,
    stream_options: { include_usage: true },
  });
  let text = "";
  let usage: OpenAI.CompletionUsage | null | undefined;
  let finish: string | null = null;
  for await (const chunk of stream) {
    text += chunk.choices[0]?.delta.content ?? "";
    finish ??= chunk.choices[0]?.finish_reason ?? null;
    usage = chunk.usage ?? usage;
  }
  assert.equal(text, whole.choices[0].message.content);
  assert.equal(finish, "length");
  assert.equal(usage?.completion_tokens, 6);
});

test("chat: n=3 samples with logprobs and the RL message fields", SLOW, async () => {
  const out = await client.chat.completions.create({ model: MODEL, messages, max_tokens: 4, n: 3, seed: 3, logprobs: true, top_logprobs: 2 });
  assert.equal(out.choices.length, 3);
  const prompt = await tokenize({ messages });
  for (const choice of out.choices) {
    const message = choice.message as unknown as TrainingMessage;
    assert.deepEqual(message.prompt_token_ids, prompt);
    assert.equal(message.generation_token_ids.length, 4);
    assert.deepEqual(message.generation_log_probs, choice.logprobs!.content!.map((c) => c.logprob));
    assert.equal(choice.logprobs!.content![0].top_logprobs.length, 2);
  }
});

test("chat: tools with tool_choice auto and required are served; the tools are in the prompt", SLOW, async () => {
  for (const tool_choice of ["auto", "required"] as const) {
    const out = await client.chat.completions.create({ model: MODEL, messages, tools, tool_choice, max_tokens: 4, logprobs: true });
    const [choice] = out.choices;
    assert.ok(["stop", "length", "tool_calls"].includes(choice.finish_reason));
    for (const call of choice.message.tool_calls ?? []) {
      assert.match(call.id, /^chatcmpl-tool-/);
      assert.equal(call.type, "function");
    }
    assert.deepEqual((choice.message as unknown as TrainingMessage).prompt_token_ids, await tokenize({ messages, tools }));
  }
});

test("completions: text and token-id prompts, and echo", SLOW, async () => {
  const text = await client.completions.create({ model: MODEL, prompt: "Once upon a time", max_tokens: 5, seed: 4 });
  assert.equal(text.object, "text_completion");
  assert.equal(text.usage?.completion_tokens, 5);
  const ids = await tokenize({ prompt: "Once upon a time" });
  const fromIds = await client.completions.create({ model: MODEL, prompt: ids, max_tokens: 5, seed: 4 });
  assert.equal(fromIds.choices[0].text, text.choices[0].text, "the same prompt as ids gives the same tokens");
  const echoed = await client.completions.create({ model: MODEL, prompt: "Echo this", max_tokens: 2, echo: true, logprobs: null });
  assert.ok(echoed.choices[0].text.startsWith("Echo this"));
  const legacy = await client.completions.create({ model: MODEL, prompt: "x", max_tokens: 3, logprobs: 1 });
  assert.equal(legacy.choices[0].logprobs!.tokens!.length, 3);
  // Scoring a sequence, as RL code does: echo the prompt with logprobs and read every token's log-probability.
  const scored = await client.completions.create({ model: MODEL, prompt: ids, max_tokens: 1, echo: true, logprobs: 0 });
  const scores = scored.choices[0].logprobs!.token_logprobs!;
  assert.equal(scores.length, ids.length + 1);
  assert.equal(scores[0], null);
  assert.ok(scores.slice(1).every((lp) => typeof lp === "number" && lp <= 0));
});

test("responses: plain, with tools, and streamed", SLOW, async () => {
  const plain = await client.responses.create({ model: MODEL, input: "Say hi", max_output_tokens: 5 });
  assert.equal(plain.object, "response");
  assert.equal(typeof plain.output_text, "string");
  assert.equal(plain.usage?.output_tokens, 5);
  const withTools = await client.responses.create({
    model: MODEL,
    input: "Weather in Paris?",
    tools: [{ type: "function", name: "get_weather", parameters: { type: "object", properties: {} }, strict: false }],
    max_output_tokens: 3,
  });
  assert.ok(withTools.output.length >= 1);
  const stream = client.responses.stream({ model: MODEL, input: "Stream please", max_output_tokens: 4 });
  let deltas = "";
  stream.on("response.output_text.delta", (event) => (deltas += event.delta));
  const final = await stream.finalResponse();
  assert.equal(final.output_text, deltas);
  assert.equal(final.usage?.output_tokens, 4);
});

test("errors come back as the client's typed API errors", SLOW, async () => {
  const long: OpenAI.ChatCompletionMessageParam[] = [{ role: "user", content: "word ".repeat(5000) }];
  await assert.rejects(client.chat.completions.create({ model: MODEL, messages: long }), (err: unknown) => {
    assert.ok(err instanceof OpenAI.BadRequestError);
    assert.match(err.message, /context length/);
    return true;
  });
  await assert.rejects(client.chat.completions.create({ model: "gpt-4o", messages }), (err: unknown) => {
    assert.ok(err instanceof OpenAI.NotFoundError);
    return true;
  });
  await assert.rejects(
    client.chat.completions.create({ model: MODEL, messages, logprobs: true, top_logprobs: null }),
    (err: unknown) => {
      assert.ok(err instanceof OpenAI.BadRequestError);
      assert.equal(err.param, "top_logprobs");
      return true;
    },
  );
  await assert.rejects(client.completions.create({ model: MODEL, prompt: [1, 2, 999_999] }), OpenAI.BadRequestError);
  await assert.rejects(client.responses.create({ model: MODEL, input: "x", temperature: 9 }), OpenAI.BadRequestError);
});

test("a client that goes away mid-request stops its generation, streamed or not", SLOW, async () => {
  for (const stream of [false, true]) {
    const abort = new AbortController();
    const body = JSON.stringify({ messages, max_tokens: 3000, ignore_eos: true, stream });
    const pending = fetch(`${base}/v1/chat/completions`, { method: "POST", body, signal: abort.signal });
    if (stream) await (await pending).body!.getReader().read();
    while (engine.stats().running === 0) await new Promise((r) => setTimeout(r, 5));
    abort.abort();
    await pending.then((res) => res.body?.cancel()).catch(() => {});
    for (let i = 0; i < 200 && engine.stats().running > 0; i++) await new Promise((r) => setTimeout(r, 10));
    assert.equal(engine.stats().running, 0, `stream=${stream}: the engine request was aborted`);
  }
});
