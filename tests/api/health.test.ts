import { test } from "node:test";
import assert from "node:assert/strict";
import * as os from "node:os";
import * as path from "node:path";
import { ServerConfig } from "../../src/config.ts";
import { silentLogger } from "../../src/log.ts";
import { startServer } from "../../src/server.ts";
import { testCacheDir } from "../support/served.ts";
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

test("while the model loads (here: never does) every route answers the API's 503 with Retry-After", async () => {
  const dir = path.join(os.tmpdir(), "gym-edge-no-such-model");
  const config = ServerConfig.parse({ port: 0, device: "cpu", model: dir, cacheDir: testCacheDir(), logRequests: false });
  const server = await startServer(config, silentLogger);
  await assert.rejects(server.ready, /does not exist/);
  try {
    for (const [path, init] of [["/health", {}], ["/v1/chat/completions", { method: "POST", body: "{}" }]] as const) {
      const res = await fetch(`http://127.0.0.1:${server.port}${path}`, init);
      assert.equal(res.headers.get("retry-after"), "1", path);
      const error = await errorOf(res, 503);
      assert.equal(error.code, "model_not_ready", path);
      assert.equal(error.type, "server_error", path);
    }
  } finally {
    await server.close();
  }
});
