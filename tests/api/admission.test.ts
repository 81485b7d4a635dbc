/**
 * The bounded request queue (--max-queue) admits a request's n samples all together or not at all: an n beyond the
 * bound is a 400 naming `n` (no retry could ever help), and a request the queue has room for only in part is a 503
 * that queues none of its samples.
 */
import { after, test } from "node:test";
import assert from "node:assert/strict";
import { ServerConfig } from "../../src/config.ts";
import { EngineUnavailableError } from "../../src/engine/control.ts";
import { SamplingParams } from "../../src/engine/sampling-params.ts";
import { silentLogger } from "../../src/log.ts";
import { loadServedModel, serverApp } from "../../src/server.ts";
import { errorOf, postJson } from "./app-fixture.ts";
import { generated, testCacheDir } from "../support/served.ts";

const SLOW = { timeout: 120_000 };
const MAX_QUEUE = 4;
const PROMPT = [1000, 2000, 3000];

const config = ServerConfig.parse({ device: "cpu", cacheDir: testCacheDir(), maxQueue: MAX_QUEUE, logRequests: false });
const served = await loadServedModel(config, silentLogger);
const app = serverApp(config, served, { log: silentLogger });
after(() => served.engine.runner.dispose());

test("an n beyond --max-queue is a 400 naming n on an idle server, on chat and completions alike", SLOW, async () => {
  const chat = { messages: [{ role: "user", content: "hi" }], max_tokens: 1 };
  for (const [route, body] of [["/v1/chat/completions", chat], ["/v1/completions", { prompt: "hi", max_tokens: 1 }]] as const) {
    for (const n of [MAX_QUEUE + 1, 128]) {
      const res = await app.request(route, postJson({ ...body, n }));
      assert.equal(res.headers.get("retry-after"), null, `${route} n=${n} must not invite a retry`);
      const err = await errorOf(res, 400);
      assert.equal(err.type, "invalid_request_error");
      assert.equal(err.param, "n");
      assert.match(err.message, /can never be admitted/);
      assert.match(err.message, new RegExp(`at most ${MAX_QUEUE}`));
    }
    const ok = await app.request(route, postJson({ ...body, n: MAX_QUEUE }));
    assert.equal(ok.status, 200, await ok.clone().text());
    assert.equal((await ok.json()).choices.length, MAX_QUEUE);
  }
  assert.deepEqual({ waiting: served.engine.stats().waiting, held: served.engine.stats().held }, { waiting: 0, held: 0 });
});

test("a request the queue has room for only in part gets 503 and queues none of its samples", SLOW, async () => {
  const engine = served.engine;
  const one = SamplingParams.parse({ max_tokens: 1 });
  // Held requests count against the bound and stay put: the queue holds exactly what this test puts there.
  engine.hold();
  const queued = [0, 1, 2].map(() => served.control.submit(PROMPT, one));
  try {
    assert.equal(engine.stats().held, 3);
    const two = SamplingParams.parse({ max_tokens: 1, n: 2 });
    assert.throws(() => served.control.submit(PROMPT, two, 0), (err) => {
      assert.ok(err instanceof EngineUnavailableError);
      assert.equal(err.reason, "queue_full");
      return true;
    });
    const res = await app.request("/v1/completions", postJson({ prompt: PROMPT, max_tokens: 1, n: 2 }));
    assert.equal(res.headers.get("retry-after"), "1");
    assert.match((await errorOf(res, 503)).message, /queue is full/);
    assert.equal(engine.stats().held, 3, "no sample of a refused request is queued");
  } finally {
    engine.release();
  }
  for (const request of queued) assert.equal((await generated(request)).ids.length, 1);
  // With the room back, the same request is admitted whole.
  const res = await app.request("/v1/completions", postJson({ prompt: PROMPT, max_tokens: 1, n: 2 }));
  assert.equal(res.status, 200, await res.clone().text());
  assert.equal((await res.json()).choices.length, 2);
});
