/**
 * vLLM's request fields `priority` and `cache_salt` on every generating route, and teacher scoring
 * (`sampling_params.prompt_logprob_token_ids` + `prompt_logprob_start`) on /inference/v1/generate, against real
 * servers on loopback (the tiny model and its real tokenizer). The expected shapes are written from vLLM's
 * definitions: a priority other than 0 is refused unless the server runs with `--scheduling-policy priority`
 * ("Got priority N but Priority scheduling is not enabled."), `cache_salt` is a non-empty string, and
 * `prompt_token_id_logprobs` is a base64 `.npy` float32 array of shape [rows, K].
 */
import { after, test } from "node:test";
import assert from "node:assert/strict";
import { ServerConfig } from "../../src/config.ts";
import { silentLogger } from "../../src/log.ts";
import { startServer } from "../../src/server.ts";
import { testCacheDir } from "../support/served.ts";

const SLOW = { timeout: 300_000 };

async function serve(flags: Record<string, unknown>) {
  const server = await startServer(
    ServerConfig.parse({ port: 0, device: "cpu", cacheDir: testCacheDir(), maxModelLen: 512, logRequests: false, ...flags }),
    silentLogger,
  );
  after(() => server.close());
  await server.ready;
  return `http://127.0.0.1:${server.port}`;
}

const byPriority = await serve({ schedulingPolicy: "priority" });
const fcfs = await serve({});

/** Each generating route with a small valid body. */
const ROUTES: Record<string, Record<string, unknown>> = {
  "/v1/chat/completions": { messages: [{ role: "user", content: "hi" }], max_tokens: 2 },
  "/v1/completions": { prompt: "hi", max_tokens: 2 },
  "/v1/responses": { input: "hi", max_output_tokens: 2 },
  "/inference/v1/generate": { token_ids: [9707, 1879], sampling_params: { max_tokens: 2 } },
};

function post(base: string, path: string, body: unknown): Promise<Response> {
  return fetch(`${base}${path}`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });
}

async function ok(base: string, path: string, body: unknown): Promise<Record<string, unknown>> {
  const res = await post(base, path, body);
  const text = await res.text();
  assert.equal(res.status, 200, `${path}: ${text}`);
  return JSON.parse(text);
}

async function refused(base: string, path: string, body: unknown): Promise<{ message: string; param: string | null; type: string }> {
  const res = await post(base, path, body);
  const text = await res.text();
  assert.equal(res.status, 400, `${path}: ${text}`);
  return JSON.parse(text).error;
}

for (const [path, body] of Object.entries(ROUTES)) {
  test(`${path} accepts priority and cache_salt and refuses bad ones`, SLOW, async () => {
    await ok(byPriority, path, { ...body, priority: 7, cache_salt: "tenant-a" });
    await ok(byPriority, path, { ...body, priority: -3, cache_salt: null });
    await ok(byPriority, path, { ...body, priority: null });
    for (const priority of ["high", 1.5, true, [1]]) {
      const error = await refused(byPriority, path, { ...body, priority });
      assert.equal(error.param, "priority", `priority ${JSON.stringify(priority)}`);
      assert.equal(error.type, "invalid_request_error");
    }
    for (const salt of [5, ["a"], { a: 1 }, false]) {
      assert.equal((await refused(byPriority, path, { ...body, cache_salt: salt })).param, "cache_salt", `cache_salt ${JSON.stringify(salt)}`);
    }
    // As vLLM, under fcfs only priority 0 is taken.
    await ok(fcfs, path, { ...body, priority: 0, cache_salt: "tenant-a" });
    for (const stream of [false, true]) {
      const error = await refused(fcfs, path, { ...body, priority: 1, stream });
      assert.equal(error.message, "Got priority 1 but Priority scheduling is not enabled.", `stream ${stream}`);
      assert.equal(error.param, "priority");
    }
  });
}

test("an empty cache_salt is refused on the OpenAI routes, as vLLM's validator refuses it", SLOW, async () => {
  for (const path of ["/v1/chat/completions", "/v1/completions", "/v1/responses"]) {
    assert.equal((await refused(byPriority, path, { ...ROUTES[path], cache_salt: "" })).param, "cache_salt", path);
  }
});

test("a cache salt keeps cached prompt tokens to requests of the same salt", SLOW, async () => {
  const input = "Tell me everything about the history of the printing press in Europe, with dates and names, please.";
  const cached = async (salt: string | undefined) => {
    const out = await ok(byPriority, "/v1/responses", { input, max_output_tokens: 1, ...(salt ? { cache_salt: salt } : {}) });
    return (out.usage as { input_tokens_details: { cached_tokens: number } }).input_tokens_details.cached_tokens;
  };
  assert.equal(await cached("alice"), 0);
  assert.ok(await cached("alice") >= 16, "the same salt reuses the prompt's full blocks");
  assert.equal(await cached("bob"), 0, "another salt shares nothing");
  assert.equal(await cached(undefined), 0, "nor does no salt");
  assert.ok(await cached(undefined) >= 16);
});

/** A .npy file (version 1 or 2, little-endian float32, C order) read as NumPy's format describes it. */
function readNpy(b64: string): { shape: number[]; values: Float32Array } {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  assert.deepEqual([...bytes.subarray(0, 6)], [0x93, 78, 85, 77, 80, 89], "the .npy magic");
  const view = new DataView(bytes.buffer);
  const major = bytes[6];
  const headerLength = major === 1 ? view.getUint16(8, true) : view.getUint32(8, true);
  const dataAt = (major === 1 ? 10 : 12) + headerLength;
  assert.equal(dataAt % 16, 0, "the data is aligned");
  const header = new TextDecoder().decode(bytes.subarray(major === 1 ? 10 : 12, dataAt));
  assert.match(header, /'descr': '<f4'/);
  assert.match(header, /'fortran_order': False/);
  const shape = /'shape': \(([^)]*)\)/.exec(header)![1].split(",").map((s) => s.trim()).filter(Boolean).map(Number);
  const count = shape.reduce((a, b) => a * b, 1);
  assert.equal(bytes.length - dataAt, count * 4, "the data holds exactly the shape's values");
  const values = new Float32Array(count);
  for (let i = 0; i < count; i++) values[i] = view.getFloat32(dataAt + i * 4, true);
  return { shape, values };
}

test("teacher scoring: prompt_token_id_logprobs is a [rows, K] float32 .npy matching prompt_logprobs", SLOW, async () => {
  const tokenIds = [9707, 1879, 374, 264, 1273, 315, 279, 5339, 13, 1084, 702, 264, 1293, 3364];
  const start = 5;
  const rows = tokenIds.length - 1 - start;
  const perRow = Array.from({ length: rows }, (_, i) => i % 2 === 0 ? [tokenIds[start + i + 1], 11, 0] : [tokenIds[start + i + 1]]);
  const generate = "/inference/v1/generate";
  const out = await ok(fcfs, generate, {
    token_ids: tokenIds,
    sampling_params: { max_tokens: 1, prompt_logprobs: 0, prompt_logprob_token_ids: perRow, prompt_logprob_start: start },
  });
  const { shape, values } = readNpy(out.prompt_token_id_logprobs as string);
  assert.deepEqual(shape, [rows, 3]);
  // The same numbers by another path: the prompt log-probability of the token at each scored position.
  const promptLogprobs = out.prompt_logprobs as (Record<string, { logprob: number }> | null)[];
  for (let i = 0; i < rows; i++) {
    const id = tokenIds[start + i + 1];
    assert.ok(Math.abs(values[i * 3] - promptLogprobs[start + i + 1]![String(id)].logprob) < 1e-5, `row ${i}`);
    if (i % 2 === 1) assert.deepEqual([values[i * 3 + 1], values[i * 3 + 2]], [-Infinity, -Infinity], `row ${i} is padded`);
    else assert.ok(values[i * 3 + 1] < 0 && values[i * 3 + 2] < 0);
  }

  // One list shared by every scored position (vLLM's first form), from position 0.
  const shared = await ok(fcfs, generate, { token_ids: tokenIds, sampling_params: { max_tokens: 1, prompt_logprob_token_ids: [11, 0] } });
  const whole = readNpy(shared.prompt_token_id_logprobs as string);
  assert.deepEqual(whole.shape, [tokenIds.length - 1, 2]);
  assert.equal(whole.values[(start + 0) * 2], values[1], "the same id at the same position scores the same");
  assert.equal((await ok(fcfs, generate, ROUTES[generate])).prompt_token_id_logprobs, null);
  // A start past the prompt scores no rows.
  const none = await ok(fcfs, generate, {
    token_ids: tokenIds,
    sampling_params: { max_tokens: 1, prompt_logprob_token_ids: [], prompt_logprob_start: tokenIds.length },
  });
  assert.deepEqual(readNpy(none.prompt_token_id_logprobs as string).shape, [0, 0]);
});

test("teacher scoring's bad input is a 400 naming the field", SLOW, async () => {
  const generate = "/inference/v1/generate";
  const tokenIds = [9707, 1879, 374, 264];
  const with_ = (sp: Record<string, unknown>, extra: Record<string, unknown> = {}) =>
    refused(fcfs, generate, { token_ids: tokenIds, sampling_params: { max_tokens: 1, ...sp }, ...extra });
  const field = "sampling_params.prompt_logprob_token_ids";
  assert.equal((await with_({ prompt_logprob_token_ids: [[1], [2]] })).param, field, "3 positions, 2 rows");
  assert.equal((await with_({ prompt_logprob_token_ids: [1], prompt_logprob_start: -1 })).param, "sampling_params.prompt_logprob_start");
  assert.equal((await with_({ prompt_logprob_token_ids: [10_000_000] })).param, field);
  assert.equal((await with_({ prompt_logprob_token_ids: [-2] })).param?.startsWith(field), true);
  assert.equal((await with_({ prompt_logprob_token_ids: "all" })).param, field);
  assert.equal((await with_({ prompt_logprob_token_ids: [] })).param, field);
  assert.equal((await with_({ prompt_logprob_start: 2 })).param, "sampling_params.prompt_logprob_start");
  assert.equal((await with_({ prompt_logprob_token_ids: [1] }, { stream: true })).param, "stream");
});
