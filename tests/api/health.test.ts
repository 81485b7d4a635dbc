import { test } from "node:test";
import assert from "node:assert/strict";
import { errorOf, testApp } from "./app-fixture.ts";

test("GET /health answers 503 in OpenAI's error shape until the model is ready, then {status: ok}", async () => {
  let ready = false;
  const app = testApp({ isReady: () => ready });
  const before = await errorOf(await app.request("/health"), 503);
  assert.equal(before.type, "server_error");
  assert.match(before.message, /not loaded/);
  ready = true;
  const res = await app.request("/health");
  assert.equal(res.status, 200);
  assert.deepEqual(await res.json(), { status: "ok" });
});

test("GET / and GET /v1 answer 2xx once ready, for clients that poll the base URL", async () => {
  let ready = false;
  const app = testApp({ isReady: () => ready });
  await errorOf(await app.request("/v1"), 503);
  ready = true;
  for (const path of ["/", "/v1", "/v1/"]) {
    const res = await app.request(path);
    assert.equal(res.status, 200, path);
    assert.equal((await res.json()).status, "ok");
  }
});

test("HEAD /health answers like GET, without a body", async () => {
  const res = await testApp().request("/health", { method: "HEAD" });
  assert.equal(res.status, 200);
  assert.equal(await res.text(), "");
});
