/**
 * Pausing generation and aborting requests by id, on a real server on loopback with the tiny model: vLLM's /pause in
 * each mode with requests in flight (abort ends them with their tokens so far, wait lets them finish before it
 * answers, keep freezes them to continue after /resume, on new weights when refitted meanwhile), a request sent
 * while paused completes after /resume, /is_paused in between, /abort_requests ends only the requests it names,
 * and SGLang's spellings of the same.
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { ServerConfig } from "../../src/config.ts";
import { silentLogger } from "../../src/log.ts";
import { type ServedModel, type StartedServer, startServer } from "../../src/server.ts";
import { testCacheDir } from "../support/served.ts";
import { tinyWithSeed } from "../support/weights.ts";

const SLOW = { timeout: 120_000 };

// deno-lint-ignore no-explicit-any
type Json = any;

/** A streamed completion being read: its token ids and versions so far, and how it ended. */
interface Run {
  ids: number[];
  versions: number[];
  /** The response id, once the first chunk came. */
  id: string | null;
  /** Resolves with the finish reason once the stream has ended. */
  finished: Promise<string | null>;
  /** Resolves once the first token has come. */
  started: Promise<void>;
}

function stream(base: string, prompt: number[], maxTokens: number, headers: Record<string, string> = {}): Run {
  const run = { ids: [], versions: [], id: null } as unknown as Run;
  let started!: () => void;
  run.started = new Promise((resolve) => (started = resolve));
  run.finished = (async () => {
    const res = await fetch(`${base}/v1/completions`, {
      method: "POST",
      headers: { "content-type": "application/json", ...headers },
      body: JSON.stringify({ prompt, max_tokens: maxTokens, temperature: 0, ignore_eos: true, stream: true, return_token_ids: true }),
    });
    assert.equal(res.status, 200);
    const reader = res.body!.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    let reason: string | null = null;
    while (true) {
      const { value, done } = await reader.read();
      if (done) return reason;
      buffer += value;
      for (let end = buffer.indexOf("\n\n"); end >= 0; end = buffer.indexOf("\n\n")) {
        const data = buffer.slice(6, end);
        buffer = buffer.slice(end + 2);
        if (data === "[DONE]") continue;
        const chunk = JSON.parse(data);
        assert.equal(chunk.error, undefined, JSON.stringify(chunk));
        run.id ??= chunk.id;
        const choice = chunk.choices[0];
        for (const id of choice.token_ids ?? []) {
          run.ids.push(id);
          run.versions.push(chunk.policy_version);
          started();
        }
        if (choice.finish_reason) reason = choice.finish_reason;
      }
    }
  })();
  run.finished.catch(() => started());
  return run;
}

async function call(base: string, method: string, path: string, body?: unknown, headers: Record<string, string> = {}): Promise<Json> {
  const res = await fetch(base + path, {
    method,
    headers: body === undefined ? headers : { "content-type": "application/json", ...headers },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  assert.equal(res.status, 200, text);
  return text === "" ? null : JSON.parse(text);
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

describe("pause, resume and abort by id", () => {
  let server: StartedServer;
  let served: ServedModel;
  let base: string;
  let seed1: string;
  const isPaused = async () => (await call(base, "GET", "/is_paused")).is_paused;
  const pausedGauge = async () => {
    const line = (await (await fetch(`${base}/metrics`)).text()).split("\n").find((l) => l.startsWith("gym_edge:paused"));
    assert.ok(line, "gym_edge:paused is served");
    return Number(line.split(" ").at(-1));
  };

  before(async () => {
    seed1 = await tinyWithSeed(1);
    const config = ServerConfig.parse({ port: 0, device: "cpu", cacheDir: testCacheDir(), maxModelLen: 2048, maxNumSeqs: 4, logRequests: false });
    server = await startServer(config, silentLogger);
    served = await server.ready;
    base = `http://127.0.0.1:${server.port}`;
  });
  after(async () => {
    await server.close();
  });

  test("abort: requests in flight end with finish reason abort and their tokens; one sent while paused runs after resume", SLOW, async () => {
    assert.equal(await isPaused(), false);
    const runs = [stream(base, [1000, 1001, 1002], 1500), stream(base, [2000, 2001], 1500)];
    await Promise.all(runs.map((r) => r.started));
    assert.deepEqual(await call(base, "POST", "/pause?mode=abort"), { status: "paused" });
    assert.equal(await isPaused(), true);
    assert.equal(await pausedGauge(), 1);
    for (const run of runs) {
      assert.equal(await run.finished, "abort");
      assert.ok(run.ids.length > 0 && run.ids.length < 1500, `partial tokens: ${run.ids.length}`);
    }
    const late = stream(base, [3000, 3001], 5);
    await sleep(300);
    assert.equal(late.ids.length, 0, "nothing runs while paused");
    assert.equal(served.engine.stats().held, 1, "the late request waits, not refused");
    assert.deepEqual(await call(base, "POST", "/resume"), { status: "resumed" });
    assert.equal(await isPaused(), false);
    assert.equal(await pausedGauge(), 0);
    assert.equal(await late.finished, "length");
    assert.equal(late.ids.length, 5);
  });

  test("wait: /pause answers once the requests in flight have finished", SLOW, async () => {
    const run = stream(base, [1100, 1101, 1102], 80);
    await run.started;
    await call(base, "POST", "/pause?mode=wait");
    const stats = served.engine.stats();
    assert.equal(stats.running + stats.waiting, 0, "nothing left in flight when /pause answers");
    assert.equal(await isPaused(), true);
    assert.equal(await run.finished, "length");
    assert.equal(run.ids.length, 80);
    await call(base, "POST", "/resume");
    assert.equal(await isPaused(), false);
  });

  test("keep: requests freeze in place and continue after resume with the tokens they would have had", SLOW, async () => {
    const prompt = [1200, 1201, 1202, 1203];
    const reference = stream(base, prompt, 120);
    await reference.finished;
    const run = stream(base, prompt, 120);
    await run.started;
    await call(base, "POST", "/pause?mode=keep");
    assert.equal(await isPaused(), true);
    await sleep(100);
    const frozenAt = run.ids.length;
    await sleep(400);
    assert.equal(run.ids.length, frozenAt, "no step runs while paused");
    assert.ok(frozenAt < 120, "paused before the end");
    assert.equal(served.engine.stats().running, 1, "the request keeps its row");
    await call(base, "POST", "/resume");
    assert.equal(await run.finished, "length");
    assert.deepEqual(run.ids, reference.ids, "greedy output is unchanged by the pause");
  });

  test("keep, then a weight update: frozen requests continue on the new weights after resume", SLOW, async () => {
    const before = served.engine.policyVersion;
    const run = stream(base, [1300, 1301, 1302], 150);
    await run.started;
    await call(base, "POST", "/pause?mode=keep");
    await sleep(100);
    const frozenAt = run.ids.length;
    const refit = await call(base, "POST", "/update_weights", { path: seed1 });
    assert.equal(refit.policy_version, before + 1);
    assert.equal(await isPaused(), true, "a refit does not end the pause");
    await sleep(200);
    assert.equal(run.ids.length, frozenAt, "still frozen after the refit");
    await call(base, "POST", "/resume");
    assert.equal(await run.finished, "length");
    assert.equal(run.ids.length, 150);
    assert.ok(run.versions.slice(0, frozenAt).every((v) => v === before));
    assert.equal(run.versions.at(-1), before + 1, "tokens after resume carry the new policy version");
  });

  test("abort_requests ends only the requests named, by x-request-id or by response id", SLOW, async () => {
    const a = stream(base, [1400, 1401], 1500, { "x-request-id": "rollout-a" });
    const b = stream(base, [1500, 1501], 1500);
    const c = stream(base, [1600, 1601], 60);
    await Promise.all([a.started, b.started, c.started]);
    const byHeader = await call(base, "POST", "/abort_requests", { request_ids: ["rollout-a", "nobody"] });
    assert.deepEqual(byHeader, { status: "ok", aborted: 1, not_found: ["nobody"] });
    assert.equal(await a.finished, "abort");
    assert.ok(a.ids.length > 0 && a.ids.length < 1500);
    assert.match(b.id!, /^cmpl-/);
    await call(base, "POST", "/abort_requests", { request_ids: [b.id] });
    assert.equal(await b.finished, "abort");
    assert.ok(b.ids.length < 1500);
    assert.equal(await c.finished, "length", "the one not named runs to its end");
    assert.equal(c.ids.length, 60);
    assert.equal(await isPaused(), false, "aborting does not pause");
  });

  test("abort_requests ends a tokens-in generate request by the request_id of its body", SLOW, async () => {
    const generating = fetch(`${base}/inference/v1/generate`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({
        request_id: "rollout-7",
        token_ids: [1700, 1701, 1702],
        sampling_params: { max_tokens: 1500, temperature: 0, ignore_eos: true },
      }),
    }).then((res) => res.json());
    let aborted: Json = { aborted: 0 };
    for (let tries = 0; tries < 200 && aborted.aborted === 0; tries++) {
      await new Promise((resolve) => setTimeout(resolve, 50));
      aborted = await call(base, "POST", "/abort_requests", { request_ids: ["rollout-7"] });
    }
    assert.deepEqual(aborted, { status: "ok", aborted: 1, not_found: [] });
    const body = await generating;
    assert.equal(body.request_id, "rollout-7");
    assert.equal(body.choices[0].finish_reason, "abort");
    assert.ok(body.choices[0].token_ids.length < 1500);
  });

  test("SGLang's retract: requests stop and drop their KV, recomputed on continue_generation", SLOW, async () => {
    const run = stream(base, [1900, 1901, 1902], 100);
    await run.started;
    await call(base, "POST", "/pause_generation", { mode: "retract" });
    const stats = served.engine.stats();
    assert.deepEqual([stats.running, stats.waiting], [0, 1], "back in the queue, holding no row");
    await sleep(100);
    const frozenAt = run.ids.length;
    await sleep(200);
    assert.equal(run.ids.length, frozenAt);
    await call(base, "POST", "/continue_generation");
    assert.equal(await run.finished, "length");
    assert.equal(run.ids.length, 100);
  });

  test("SGLang's spellings: pause_generation in_place, continue_generation, abort_request", SLOW, async () => {
    const a = stream(base, [1700, 1701], 1500, { "x-request-id": "sgl-a" });
    const b = stream(base, [1800, 1801], 120);
    await Promise.all([a.started, b.started]);
    assert.deepEqual(await call(base, "POST", "/pause_generation", { mode: "in_place" }), {
      message: "Generation paused successfully.",
      status: "ok",
    });
    assert.equal(await isPaused(), true);
    await sleep(100);
    const frozenAt = b.ids.length;
    assert.equal(await call(base, "POST", "/abort_request", { rid: "sgl-a" }), null);
    assert.equal(await a.finished, "abort", "a frozen request can be aborted");
    await sleep(200);
    assert.equal(b.ids.length, frozenAt);
    assert.equal((await call(base, "POST", "/continue_generation", {})).status, "ok");
    assert.equal(await b.finished, "length");
    assert.equal(b.ids.length, 120);
    assert.equal(await isPaused(), false);
  });
});

describe("pause with a bounded queue", () => {
  let server: StartedServer;
  let base: string;

  before(async () => {
    const config = ServerConfig.parse({
      port: 0,
      device: "cpu",
      cacheDir: testCacheDir(),
      maxQueue: 1,
      adminApiKey: "admin-key",
      logRequests: false,
    });
    server = await startServer(config, silentLogger);
    await server.ready;
    base = `http://127.0.0.1:${server.port}`;
  });
  after(async () => {
    await server.close();
  });

  const ADMIN = { authorization: "Bearer admin-key" };

  test("the pause and abort routes take the admin key", SLOW, async () => {
    const routes = [
      ["POST", "/pause"],
      ["POST", "/resume"],
      ["GET", "/is_paused"],
      ["POST", "/abort_requests"],
      ["POST", "/pause_generation"],
      ["POST", "/continue_generation"],
      ["POST", "/abort_request"],
    ];
    for (const [method, path] of routes) {
      const res = await fetch(base + path, { method });
      assert.equal(res.status, 401, `${method} ${path} without the admin key`);
      await res.body?.cancel();
    }
    assert.deepEqual(await call(base, "GET", "/is_paused", undefined, ADMIN), { is_paused: false });
  });

  test("vLLM's deprecated query flags: wait_for_inflight_requests and clear_cache, spelled as pydantic reads them", SLOW, async () => {
    const bad = await fetch(`${base}/pause?wait_for_inflight_requests=maybe`, { method: "POST", headers: ADMIN });
    assert.equal(bad.status, 400);
    await bad.body?.cancel();
    assert.equal((await call(base, "GET", "/is_paused", undefined, ADMIN)).is_paused, false, "a refused pause pauses nothing");
    const run = stream(base, [1000, 1001], 30);
    await run.started;
    await call(base, "POST", "/pause?wait_for_inflight_requests=True&clear_cache=off", undefined, ADMIN);
    assert.equal(await run.finished, "length", "it waited (the default mode, abort, would end the request)");
    assert.equal(run.ids.length, 30);
    assert.equal((await call(base, "GET", "/is_paused", undefined, ADMIN)).is_paused, true);
    await call(base, "POST", "/resume", undefined, ADMIN);
  });

  test("requests sent while paused wait up to --max-queue; beyond it they get 503 with Retry-After", SLOW, async () => {
    const bad = await fetch(`${base}/pause?mode=sideways`, { method: "POST", headers: ADMIN });
    assert.equal(bad.status, 400);
    await call(base, "POST", "/pause", { mode: "wait" }, ADMIN);
    const waiting = stream(base, [1000, 1001], 4);
    await sleep(200);
    const refused = await fetch(`${base}/v1/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ prompt: [2000, 2001], max_tokens: 4 }),
    });
    assert.equal(refused.status, 503);
    assert.equal(refused.headers.get("retry-after"), "1");
    await refused.body?.cancel();
    await call(base, "POST", "/resume", undefined, ADMIN);
    assert.equal(await waiting.finished, "length");
    assert.equal(waiting.ids.length, 4);
  });
});
