import { test } from "node:test";
import assert from "node:assert/strict";
import { ChatTokenizer } from "../../src/chat/template.ts";
import { errorOf, postJson, qwen3WithTemplate, testApp } from "./app-fixture.ts";

test("a body that is not JSON is a 400 invalid_request_error, and the server keeps serving", async () => {
  const app = testApp();
  for (const body of ["{", "", "not json", '{"prompt": "x",}']) {
    const err = await errorOf(await app.request("/tokenize", { method: "POST", body }), 400);
    assert.equal(err.type, "invalid_request_error");
    assert.match(err.message, /not valid JSON/);
  }
  assert.equal((await app.request("/tokenize", postJson({ prompt: "x" }))).status, 200);
});

test("an unknown route is a 404 in OpenAI's shape, not an HTML page", async () => {
  const app = testApp();
  for (const [method, path] of [["GET", "/nope"], ["POST", "/v1/chat/nothing"], ["GET", "/v2/models"]]) {
    const err = await errorOf(await app.request(path, { method }), 404);
    assert.equal(err.message, `Invalid URL (${method} ${path})`);
  }
});

test("a known path with the wrong method is a 405 with an Allow header", async () => {
  const app = testApp();
  const get = await app.request("/tokenize");
  assert.equal(get.headers.get("allow"), "POST");
  assert.equal((await errorOf(get, 405)).code, "method_not_allowed");
  const del = await app.request("/v1/models", { method: "DELETE" });
  assert.equal(del.headers.get("allow"), "GET, HEAD");
  await errorOf(del, 405);
  await errorOf(await app.request("/v1/models/some-model", { method: "POST" }), 405);
});

test("a body over the limit is a 413, whether its length is declared or streamed", async () => {
  const app = testApp({ maxBodyBytes: 1024 });
  const big = JSON.stringify({ prompt: "x".repeat(2000) });
  const declared = await app.request("/tokenize", {
    method: "POST",
    headers: { "content-length": String(new TextEncoder().encode(big).length) },
    body: big,
  });
  assert.equal((await errorOf(declared, 413)).code, "request_too_large");
  const bytes = new TextEncoder().encode(big);
  const stream = new ReadableStream<Uint8Array>({
    start(controller) {
      for (let i = 0; i < bytes.length; i += 256) controller.enqueue(bytes.slice(i, i + 256));
      controller.close();
    },
  });
  const init = { method: "POST", body: stream, duplex: "half" } as RequestInit;
  await errorOf(await app.fetch(new Request("http://gym-edge.test/tokenize", init)), 413);
  const small = await app.request("/tokenize", postJson({ prompt: "x".repeat(900) }));
  assert.equal(small.status, 200);
});

test("the default body limit is 32 MiB", async () => {
  const app = testApp();
  const init = { method: "POST", headers: { "content-length": String(32 * 1024 * 1024 + 1) }, body: "{}" };
  await errorOf(await app.request("/tokenize", init), 413);
});

test("a chat template that raises is a 400 naming messages", async () => {
  const raising = new ChatTokenizer(qwen3WithTemplate("{{ raise_exception('Conversation roles must alternate') }}"));
  const err = await errorOf(
    await testApp({ tokenizer: raising }).request("/tokenize", postJson({ messages: [{ role: "user", content: "x" }] })),
    400,
  );
  assert.equal(err.param, "messages");
  assert.match(err.message, /Conversation roles must alternate/);
});

test("an unexpected error is a 500 in OpenAI's shape without a stack trace", async () => {
  class BrokenTokenizer extends ChatTokenizer {
    override encode(): number[] {
      throw new TypeError("tokenizer exploded");
    }
  }
  const broken = new BrokenTokenizer(qwen3WithTemplate(""));
  const logged: unknown[] = [];
  const original = console.error;
  console.error = (...args: unknown[]) => logged.push(args);
  try {
    const res = await testApp({ tokenizer: broken }).request("/tokenize", postJson({ prompt: "x" }));
    const err = await errorOf(res, 500);
    assert.equal(err.type, "server_error");
    assert.match(err.message, /tokenizer exploded/);
    assert.ok(!err.message.includes("    at "));
  } finally {
    console.error = original;
  }
  assert.equal(logged.length, 1);
});

/** Zod's own wording, which names the schema rather than the request. */
const SCHEMA_WORDING = /Invalid input|Invalid option|expected \w+, received|Too (big|small):|Unrecognized key/;

test("a field that does not validate is a 400 whose message is a sentence naming the field and what it accepts", async () => {
  const app = testApp();
  const PROMPT_FORMS = "a string, an array of strings, an array of token ids or an array of arrays of token ids";
  const cases: [string, unknown, string | null, string][] = [
    ["/v1/completions", { prompt: 5 }, "prompt", `prompt must be ${PROMPT_FORMS} (token ids are integers from 0)`],
    ["/v1/completions", { prompt: [-1] }, "prompt[0]", "prompt[0] must be at least 0"],
    ["/v1/completions", { prompt: [1.5] }, "prompt", `prompt must be ${PROMPT_FORMS} (token ids are integers from 0)`],
    ["/v1/completions", {}, "prompt", `prompt is required: ${PROMPT_FORMS} (token ids are integers from 0)`],
    ["/v1/completions", { prompt: [] }, "prompt", `prompt must not be empty: ${PROMPT_FORMS} (token ids are integers from 0)`],
    ["/v1/completions", { prompt: [[]] }, "prompt[0]", "prompt[0] must not be empty"],
    ["/v1/completions", { prompt: "x", max_tokens: "10" }, "max_tokens", "max_tokens must be a number, got a string"],
    ["/v1/completions", { prompt: "x", max_tokens: 1.5 }, "max_tokens", "max_tokens must be an integer"],
    ["/v1/completions", { prompt: "x", stream: "yes" }, "stream", "stream must be true or false, got a string"],
    ["/v1/completions", { prompt: "x", stop: 5 }, "stop", "stop must be a string or an array of strings"],
    ["/v1/completions", { prompt: "x", logprobs: 21 }, "logprobs", "logprobs must be at most 20"],
    ["/v1/completions", { prompt: "x", stream_options: { include_usage: 1 } }, "stream_options.include_usage",
      "stream_options.include_usage must be true or false, got a number"],
    ["/v1/completions", { prompt: "x", logprobs_mode: "odd" }, "logprobs_mode",
      'logprobs_mode must be one of "processed", "raw", "processed_logprobs" or "raw_logprobs"'],
    ["/v1/completions", [], null, "the request body must be a JSON object, got an array"],
    ["/v1/chat/completions", { messages: "hi" }, "messages", "messages must be an array, got a string"],
    ["/v1/chat/completions", { messages: [] }, "messages", "messages must not be empty"],
    ["/v1/chat/completions", { messages: [{ role: "user", content: 5 }] }, "messages[0].content",
      "messages[0].content must be a string or an array, got a number"],
    ["/v1/chat/completions", { messages: [{ role: "user", content: "x" }], tool_choice: "sometimes" }, "tool_choice",
      'tool_choice must be "none", "auto", "required" or {"type": "function", "function": {"name": "..."}}'],
    ["/v1/chat/completions", { messages: [{ role: "user", content: "x" }], top_logprobs: -1 }, "top_logprobs",
      "top_logprobs must be at least 0"],
    ["/v1/responses", { input: 5 }, "input", "input must be a string or an array of input items"],
    ["/v1/responses", { input: [{ type: "bogus" }] }, "input[0].type",
      'input[0].type must be one of "message", "function_call", "function_call_output" or "reasoning"'],
    ["/v1/responses", { input: [{ type: "function_call", name: "f", arguments: "{}" }] }, "input[0].call_id",
      "input[0].call_id is required and must be a string"],
    ["/tokenize", {}, "prompt", "prompt is required and must be a string"],
    ["/detokenize", { tokens: [-1] }, "tokens[0]", "tokens[0] must be at least 0"],
  ];
  for (const [path, body, param, message] of cases) {
    const err = await errorOf(await app.request(path, postJson(body)), 400);
    const what = `${path} ${JSON.stringify(body)}`;
    assert.equal(err.type, "invalid_request_error", what);
    assert.equal(err.message, message, what);
    assert.equal(err.param, param, what);
    assert.doesNotMatch(err.message, SCHEMA_WORDING, what);
  }
});

test("several bad fields are named in one message, the first as param", async () => {
  const err = await errorOf(await testApp().request("/v1/completions", postJson({ prompt: "x", n: "2", echo: 1 })), 400);
  assert.equal(err.message, "n must be a number, got a string; echo must be true or false, got a number");
  assert.equal(err.param, "n");
});
