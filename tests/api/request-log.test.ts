import { test } from "node:test";
import assert from "node:assert/strict";
import { createApp } from "../../src/api/app.ts";
import { formatRequestLine, type RequestRecord, RequestTracker, requestLogFields } from "../../src/api/operations.ts";
import { errorOf, MAX_MODEL_LEN, MODEL, postJson, qwen3 } from "./app-fixture.ts";

/** An app whose request records (the log lines' contents) are kept. */
function loggedApp(tracker?: RequestTracker) {
  const records: RequestRecord[] = [];
  const app = createApp({
    servedModelName: MODEL,
    maxModelLen: MAX_MODEL_LEN,
    tokenizer: qwen3,
    isReady: () => true,
    requestLog: (r) => records.push({ ...r }),
    tracker,
  });
  return { app, records };
}

test("a 4xx request's log line gives the reason: the error message sent, on one line", async () => {
  const { app, records } = loggedApp();
  const sent = await errorOf(await app.request("/v1/completions", postJson({ prompt: "x", temperature: "hot" })), 400);
  const line = formatRequestLine(records[0]);
  assert.match(line, / 400 /);
  assert.ok(line.endsWith(` reason=${JSON.stringify(sent.message)}`), line);
  assert.equal(requestLogFields(records[0]).reason, sent.message);
  assert.ok(!line.includes("\n"));

  await app.request("/no/such/route");
  assert.match(formatRequestLine(records[1]), / 404 .* reason="Invalid URL \(GET \/no\/such\/route\)"$/);
});

test("a long or multi-line error message is shortened to one line in the log", async () => {
  const { app, records } = loggedApp();
  // The message names the model asked for: here, one of many lines.
  await errorOf(await app.request("/v1/completions", postJson({ prompt: "x", model: "a\nb ".repeat(500) })), 404);
  const reason = records[0].reason!;
  assert.ok(reason.length <= 300, `${reason.length} characters`);
  assert.ok(reason.endsWith("…"));
  assert.doesNotMatch(formatRequestLine(records[0]), /\n/);
});

test("a successful request's log line has no reason; a refused one while draining says why", async () => {
  const tracker = new RequestTracker();
  const { app, records } = loggedApp(tracker);
  assert.equal((await app.request("/v1/models")).status, 200);
  assert.equal(records[0].reason, null);
  assert.doesNotMatch(formatRequestLine(records[0]), /reason=/);
  assert.equal(requestLogFields(records[0]).reason, undefined);
  tracker.drain();
  await errorOf(await app.request("/v1/models"), 503);
  assert.match(formatRequestLine(records[1]), / 503 .* reason="the server is shutting down"$/);
});
