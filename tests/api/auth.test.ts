import { test } from "node:test";
import assert from "node:assert/strict";
import { errorOf, postJson, testApp } from "./app-fixture.ts";

const KEY = "sk-gym-edge-test";
const app = testApp({ apiKey: KEY });
const bearer = (key: string) => ({ authorization: `Bearer ${key}` });

test("with an API key, /health stays open", async () => {
  assert.equal((await app.request("/health")).status, 200);
});

test("with an API key, every other route needs the bearer key: 401 in OpenAI's shape without it", async () => {
  const requests: [string, RequestInit][] = [
    ["/", {}],
    ["/v1", {}],
    ["/v1/models", {}],
    ["/tokenize", postJson({ prompt: "x" })],
    ["/detokenize", postJson({ tokens: [1] })],
    ["/no-such-route", {}],
  ];
  for (const [path, init] of requests) {
    for (const headers of [{}, bearer("sk-wrong"), bearer(KEY + "x"), bearer(KEY.slice(0, -1)), { authorization: KEY }]) {
      const res = await app.request(path, { ...init, headers: { ...init.headers as Record<string, string>, ...headers } });
      assert.equal(res.headers.get("www-authenticate"), "Bearer");
      const err = await errorOf(res, 401);
      assert.equal(err.code, "invalid_api_key");
      assert.equal(err.type, "invalid_request_error");
    }
  }
});

test("the right key opens every route; the scheme is case-insensitive", async () => {
  assert.equal((await app.request("/v1/models", { headers: bearer(KEY) })).status, 200);
  assert.equal((await app.request("/v1/models", { headers: { authorization: `bearer ${KEY}` } })).status, 200);
  assert.equal((await app.request("/tokenize", postJson({ prompt: "x" }, bearer(KEY)))).status, 200);
  await errorOf(await app.request("/no-such-route", { headers: bearer(KEY) }), 404);
});

test("without an API key configured, no route asks for one", async () => {
  assert.equal((await testApp().request("/v1/models")).status, 200);
  assert.equal((await testApp({ apiKey: "" }).request("/v1/models")).status, 200);
});
