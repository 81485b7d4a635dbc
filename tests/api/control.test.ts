/**
 * The control plane over the real tiny model: a weight update serves the new weights exactly as a fresh server on
 * them would, from a model directory or a loose .onnx file; a load that fails is a clear 4xx and changes nothing;
 * paths cannot leave --allowed-weight-dir; sleep turns requests away with 503 + Retry-After until wake_up; the
 * control routes have their own key and can be switched off.
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import type { Hono } from "hono";
import { ServerConfig } from "../../src/config.ts";
import { SamplingParams } from "../../src/engine/sampling-params.ts";
import { silentLogger } from "../../src/log.ts";
import { loadServedModel, type ServedModel, serverApp } from "../../src/server.ts";
import { errorOf, postJson } from "./app-fixture.ts";
import { testCacheDir, tinyModelDir } from "../support/served.ts";
import { tinyWiderMlp, tinyWithSeed } from "../support/weights.ts";

const SLOW = { timeout: 120_000 };
const PROMPT = [1000, 2000, 3000, 4000, 5000];
const MAX_TOKENS = 8;

function configOf(flags: Record<string, unknown> = {}): ServerConfig {
  return ServerConfig.parse({ device: "cpu", cacheDir: testCacheDir(), maxNumSeqs: 4, logRequests: false, ...flags });
}

async function open(flags: Record<string, unknown> = {}): Promise<{ served: ServedModel; app: Hono }> {
  const config = configOf(flags);
  const served = await loadServedModel(config, silentLogger);
  return { served, app: serverApp(config, served, { log: silentLogger }) };
}

/** Greedy token ids of PROMPT straight from an engine (the reference). */
async function engineGreedy(served: ServedModel): Promise<number[]> {
  const params = SamplingParams.parse({ temperature: 0, max_tokens: MAX_TOKENS, ignore_eos: true });
  const ids: number[] = [];
  for await (const event of served.engine.submit(PROMPT, params).events) ids.push(event.tokenId);
  return ids;
}

/** Greedy token ids of PROMPT through the app, with the policy version the response names. */
async function greedy(app: Hono): Promise<{ ids: number[]; version: number }> {
  const res = await app.request("/v1/completions", postJson({
    prompt: PROMPT,
    max_tokens: MAX_TOKENS,
    temperature: 0,
    ignore_eos: true,
    return_token_ids: true,
  }));
  const body = await res.json();
  assert.equal(res.status, 200, JSON.stringify(body));
  return { ids: body.choices[0].token_ids, version: body.policy_version };
}

async function update(app: Hono, body: unknown, headers: Record<string, string> = {}): Promise<Response> {
  return await app.request("/update_weights", postJson(body, headers));
}

let shared: ServedModel;
before(async () => {
  shared = await loadServedModel(configOf(), silentLogger);
});
after(() => shared.engine.runner.dispose());

describe("weight updates", () => {
  let seed0: string;
  let seed1: string;
  let wide: string;
  let served: ServedModel;
  let app: Hono;
  let reference0: number[];
  let reference1: number[];

  before(async () => {
    [seed0, seed1, wide] = await Promise.all([tinyModelDir(), tinyWithSeed(1), tinyWiderMlp()]);
    served = shared;
    app = serverApp(configOf(), served, { log: silentLogger });
    reference0 = await engineGreedy(served);
    const fresh1 = await loadServedModel(configOf({ model: seed1 }), silentLogger);
    reference1 = await engineGreedy(fresh1);
    await fresh1.engine.runner.dispose();
    assert.notDeepEqual(reference0, reference1, "the two seeds must generate differently for the test to mean anything");
  });

  test("a model directory of the same architecture: the version goes up and outputs equal a fresh server's", SLOW, async () => {
    assert.deepEqual(await greedy(app), { ids: reference0, version: 0 });
    const res = await update(app, { path: seed1 });
    const body = await res.json();
    assert.equal(res.status, 200, JSON.stringify(body));
    assert.equal(body.policy_version, 1);
    assert.equal(body.previous_policy_version, 0);
    assert.equal(body.mode, "finish");
    assert.deepEqual(await greedy(app), { ids: reference1, version: 1 });
    const version = await (await app.request("/version")).json();
    assert.equal(version.policy_version, 1);
    assert.equal(typeof version.version, "string");
  });

  test("an .onnx file with its weights works too; an explicit policy_version is taken", SLOW, async () => {
    const res = await update(app, { path: path.join(seed0, "onnx/model.onnx"), policy_version: 10, mode: "pause" });
    assert.equal(res.status, 200, await res.clone().text());
    assert.equal((await res.json()).policy_version, 10);
    assert.deepEqual(await greedy(app), { ids: reference0, version: 10 });
    // SGLang's spelling of the same request.
    const sglang = await app.request("/update_weights_from_disk", postJson({ model_path: seed1, mode: "abort" }));
    assert.equal(sglang.status, 200, await sglang.clone().text());
    assert.deepEqual(await greedy(app), { ids: reference1, version: 11 });
  });

  test("the prefix cache is emptied by an update: no KV of the old weights is reused", SLOW, async () => {
    const long = Array.from({ length: 40 }, (_, i) => 1000 + i);
    const params = SamplingParams.parse({ temperature: 0, max_tokens: 1 });
    for await (const _ of served.engine.submit(long, params).events) { /* fill the cache */ }
    assert.ok(served.engine.cache.stats().blocks > 0);
    assert.equal((await update(app, { path: seed1 })).status, 200);
    assert.equal(served.engine.cache.stats().blocks, 0);
    assert.equal(served.engine.cache.version, served.engine.policyVersion);
  });

  test("failed loads are 4xx naming the problem, and the old weights keep serving", SLOW, async () => {
    const before = await greedy(app);
    const notAModel = fs.mkdtempSync(path.join(os.tmpdir(), "gym-edge-not-a-model-"));
    const cases: [unknown, RegExp][] = [
      [{ path: "/no/such/weights" }, /no file or directory/],
      [{ path: wide }, /intermediate_size 192 \(served: 128\)/],
      [{ path: path.join(wide, "onnx/model.onnx") }, /does not hold the served model's weights/],
      [{ path: notAModel }, /has no config.json/],
      [{ path: path.join(seed0, "config.json") }, /neither a model directory nor an .onnx file/],
      [{ path: seed1, policy_version: 0 }, /above the current one/],
      [{}, /path/],
      [{ path: seed1, mode: "later" }, /mode/],
      [{ path: 42 }, /path/],
    ];
    try {
      for (const [body, message] of cases) {
        const err = await errorOf(await update(app, body), 400);
        assert.match(err.message, message, JSON.stringify(body));
        assert.equal(err.type, "invalid_request_error");
      }
      await errorOf(await app.request("/update_weights", { method: "POST", body: "{not json" }), 400);
    } finally {
      fs.rmSync(notAModel, { recursive: true, force: true });
    }
    assert.deepEqual(await greedy(app), before);
  });
});

describe("sleep, wake-up, prefix cache and access", () => {
  let served: ServedModel;
  let app: Hono;
  let reference: number[];

  before(async () => {
    served = shared;
    app = serverApp(configOf({ apiKey: "sk-user", adminApiKey: "sk-admin" }), served, { log: silentLogger });
    reference = await engineGreedy(served);
  });

  const user = { authorization: "Bearer sk-user" };
  const admin = { authorization: "Bearer sk-admin" };
  const asUser = async (a: Hono) => {
    const res = await a.request("/v1/completions", postJson({ prompt: PROMPT, max_tokens: 2 }, user));
    return res;
  };

  test("control routes take the admin key only; the other routes the API key only", SLOW, async () => {
    await errorOf(await app.request("/reset_prefix_cache", { method: "POST", headers: user }), 401);
    await errorOf(await app.request("/reset_prefix_cache", { method: "POST" }), 401);
    assert.equal((await app.request("/reset_prefix_cache", { method: "POST", headers: admin })).status, 200);
    await errorOf(await app.request("/v1/models", { headers: admin }), 401);
    assert.equal((await app.request("/v1/models", { headers: user })).status, 200);
    assert.equal((await app.request("/version", { headers: user })).status, 200);
  });

  test("asleep: generation gets 503 with Retry-After; wake_up serves the same outputs again", SLOW, async () => {
    for (const level of [1, 2]) {
      const res = await app.request(`/sleep?level=${level}`, { method: "POST", headers: admin });
      assert.deepEqual(await res.json(), {
        policy_version: served.engine.policyVersion,
        weight_version: null,
        is_sleeping: true,
        sleep_level: level,
      });
      assert.deepEqual(await (await app.request("/is_sleeping", { headers: admin })).json(), {
        policy_version: served.engine.policyVersion,
        weight_version: null,
        is_sleeping: true,
        sleep_level: level,
      });
      const refused = await asUser(app);
      assert.equal(refused.headers.get("retry-after"), "1");
      const err = await errorOf(refused, 503);
      assert.match(err.message, /asleep/);
      assert.equal(served.engine.cache.stats().blocks, 0);
      await errorOf(await update(app, { path: await tinyModelDir() }, admin), 409);
      const woke = await app.request("/wake_up", { method: "POST", headers: admin });
      assert.equal((await woke.json()).is_sleeping, false);
      const out = await app.request("/v1/completions", postJson({
        prompt: PROMPT,
        max_tokens: MAX_TOKENS,
        temperature: 0,
        ignore_eos: true,
        return_token_ids: true,
      }, user));
      assert.deepEqual((await out.json()).choices[0].token_ids, reference, `after sleep level ${level}`);
    }
  });

  test("sleep validates its level; reset_prefix_cache empties the cache", SLOW, async () => {
    await errorOf(await app.request("/sleep?level=3", { method: "POST", headers: admin }), 400);
    await errorOf(await app.request("/sleep", postJson({ level: "deep" }, admin)), 400);
    assert.equal((await asUser(app)).status, 200);
    const long = Array.from({ length: 40 }, (_, i) => 2000 + i);
    for await (const _ of served.engine.submit(long, SamplingParams.parse({ max_tokens: 1 })).events) { /* cache it */ }
    assert.ok(served.engine.cache.stats().blocks > 0);
    assert.deepEqual(await (await app.request("/reset_prefix_cache", { method: "POST", headers: admin })).json(), { status: "ok" });
    assert.equal(served.engine.cache.stats().blocks, 0);
  });

  test("--disable-control-plane: the control routes do not exist; /version still answers", SLOW, () => {
    const config = configOf({ disableControlPlane: true });
    const bare = serverApp(config, served, { log: silentLogger });
    return (async () => {
      for (const route of ["/update_weights", "/sleep", "/wake_up", "/reset_prefix_cache"]) {
        await errorOf(await bare.request(route, postJson({ path: "/x" })), 404);
      }
      assert.equal((await bare.request("/version")).status, 200);
    })();
  });
});

describe("--allowed-weight-dir", () => {
  let root: string;
  let outside: string;
  let served: ServedModel;
  let app: Hono;

  before(async () => {
    const seed1 = await tinyWithSeed(1);
    root = fs.mkdtempSync(path.join(os.tmpdir(), "gym-edge-weights-"));
    outside = fs.mkdtempSync(path.join(os.tmpdir(), "gym-edge-outside-"));
    fs.symlinkSync(seed1, path.join(root, "step-1"));
    fs.symlinkSync(outside, path.join(root, "escape"));
    ({ served, app } = await open({ allowedWeightDir: root }));
  });
  after(async () => {
    await served.engine.runner.dispose();
    fs.rmSync(root, { recursive: true, force: true });
    fs.rmSync(outside, { recursive: true, force: true });
  });

  test("paths outside it are 403, however they are spelled; a path inside it loads", SLOW, async () => {
    for (const p of [outside, path.join(root, ".."), "../" + path.basename(outside), "escape", `${root}/escape/x`, "/etc/passwd"]) {
      const err = await errorOf(await update(app, { path: p }), 403);
      assert.match(err.message, /only be loaded from inside/, p);
    }
    await errorOf(await update(app, { path: "missing" }), 400);
    assert.equal(served.engine.policyVersion, 0);
    // A symlink inside the directory that points at a model elsewhere is followed and then refused.
    await errorOf(await update(app, { path: "step-1" }), 403);
    const inside = path.join(root, "model");
    fs.cpSync(await tinyWithSeed(1), inside, { recursive: true });
    const res = await update(app, { path: "model" });
    assert.equal(res.status, 200, await res.clone().text());
    assert.equal(served.engine.policyVersion, 1);
  });
});

