import { test } from "node:test";
import assert from "node:assert/strict";
import { ServerConfig } from "../../src/config.ts";
import { silentLogger } from "../../src/log.ts";
import { ServingMetrics } from "../../src/metrics/serving.ts";
import { startServer } from "../../src/server.ts";
import { testCacheDir } from "../support/served.ts";
import { createApp } from "../../src/api/app.ts";
import { errorOf, MAX_MODEL_LEN, MODEL, postJson, qwen3, testApp } from "./app-fixture.ts";

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

const SLOW = { timeout: 120_000 };

test("with an API key, a real server answers /metrics without the key, as vLLM does, and guards the rest", SLOW, async () => {
  const config = ServerConfig.parse({ port: 0, device: "cpu", cacheDir: testCacheDir(), apiKey: KEY, logRequests: false });
  assert.equal(config.metricsApiKeyRequired, false, "open is the default");
  const server = await startServer(config, silentLogger);
  try {
    await server.ready;
    const base = `http://127.0.0.1:${server.port}`;
    const res = await fetch(`${base}/metrics`);
    assert.equal(res.status, 200);
    assert.match(await res.text(), /^process_resident_memory_bytes \d+$/m);
    assert.equal((await fetch(`${base}/metrics/`)).status, 200);
    await errorOf(await fetch(`${base}/v1/models`), 401);
    assert.equal((await fetch(`${base}/v1/models`, { headers: bearer(KEY) })).status, 200);
  } finally {
    await server.close();
  }
});

/** An app with the API key and metrics, and `flags`. */
function metricsApp(flags: { metricsApiKeyRequired?: boolean }) {
  const metrics = new ServingMetrics(MODEL);
  const deps = { servedModelName: MODEL, maxModelLen: MAX_MODEL_LEN, tokenizer: qwen3, isReady: () => true };
  return createApp({ ...deps, apiKey: KEY, metrics, ...flags });
}

test("with --metrics-api-key-required, /metrics takes the API key like every other route", async () => {
  assert.equal(ServerConfig.parse({ metricsApiKeyRequired: true }).metricsApiKeyRequired, true);
  const guarded = metricsApp({ metricsApiKeyRequired: true });
  for (const headers of [{}, bearer("sk-wrong")]) {
    const res = await guarded.request("/metrics", { headers });
    assert.equal(res.headers.get("www-authenticate"), "Bearer");
    assert.equal((await errorOf(res, 401)).code, "invalid_api_key");
  }
  const res = await guarded.request("/metrics", { headers: bearer(KEY) });
  assert.equal(res.status, 200);
  assert.match(await res.text(), /^# TYPE vllm:num_requests_running gauge$/m);
  // Without the flag the same app answers scrapers without a key; other routes still want it.
  const open = metricsApp({});
  assert.equal((await open.request("/metrics")).status, 200);
  await errorOf(await open.request("/v1/models"), 401);
});

test("a real server started with --metrics-api-key-required guards /metrics with the API key", SLOW, async () => {
  const config = ServerConfig.parse({
    port: 0, device: "cpu", cacheDir: testCacheDir(), apiKey: KEY, metricsApiKeyRequired: true, logRequests: false,
  });
  const server = await startServer(config, silentLogger);
  try {
    await server.ready;
    const base = `http://127.0.0.1:${server.port}`;
    await errorOf(await fetch(`${base}/metrics`), 401);
    const res = await fetch(`${base}/metrics`, { headers: bearer(KEY) });
    assert.equal(res.status, 200);
    assert.match(await res.text(), /^vllm:cache_config_info\{/m);
  } finally {
    await server.close();
  }
});
