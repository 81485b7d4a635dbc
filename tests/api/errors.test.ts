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
