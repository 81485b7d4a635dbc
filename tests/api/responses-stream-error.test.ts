/**
 * A Responses stream that fails midway ends with OpenAI's error event (ResponseErrorEvent: `type: "error"`, code,
 * message, param, and the next sequence_number), which clients that dispatch on `type` see. The failure is a real
 * one: a weight update in abort mode ends the running stream.
 */
import { after, test } from "node:test";
import assert from "node:assert/strict";
import { ServerConfig } from "../../src/config.ts";
import { silentLogger } from "../../src/log.ts";
import { loadServedModel, serverApp } from "../../src/server.ts";
import { postJson } from "./app-fixture.ts";
import { testCacheDir } from "../support/served.ts";
import { tinyWithSeed } from "../support/weights.ts";

const SLOW = { timeout: 120_000 };

const config = ServerConfig.parse({ device: "cpu", cacheDir: testCacheDir(), logRequests: false });
const served = await loadServedModel(config, silentLogger);
const app = serverApp(config, served, { log: silentLogger });
after(() => served.engine.runner.dispose());

// deno-lint-ignore no-explicit-any
type Json = any;

/** The events of a Responses stream as they arrive: each one's `event:` name and its data. */
async function* responseEvents(body: ReadableStream<Uint8Array>): AsyncGenerator<{ name: string; data: Json }> {
  const decoder = new TextDecoder();
  let buffered = "";
  for await (const chunk of body) {
    buffered += decoder.decode(chunk, { stream: true });
    let end;
    while ((end = buffered.indexOf("\n\n")) >= 0) {
      const [eventLine, dataLine] = buffered.slice(0, end).split("\n");
      buffered = buffered.slice(end + 2);
      yield { name: eventLine.replace(/^event: /, ""), data: JSON.parse(dataLine.replace(/^data: /, "")) };
    }
  }
}

test("a stream ended by a weight update (abort mode) sends a type 'error' event numbered after the others", SLOW, async () => {
  const seed1 = await tinyWithSeed(1);
  const res = await app.request("/v1/responses", postJson({
    input: "Tell me a long story.",
    max_output_tokens: 4000,
    ignore_eos: true,
    stream: true,
  }));
  assert.equal(res.status, 200);
  const events: { name: string; data: Json }[] = [];
  let update: Promise<Response> | null = null;
  for await (const event of responseEvents(res.body!)) {
    events.push(event);
    // Tokens are flowing: the request is running, and the update ends it.
    if (update === null && event.data.type === "response.output_text.delta") {
      update = Promise.resolve(app.request("/update_weights", postJson({ path: seed1, mode: "abort" })));
    }
  }
  assert.ok(update, "the stream produced text");
  const refit = await (await update).json();
  assert.equal(refit.aborted, 1, JSON.stringify(refit));

  const last = events.at(-1)!;
  assert.equal(last.name, "error");
  assert.deepEqual(Object.keys(last.data).sort(), ["code", "message", "param", "sequence_number", "type"]);
  assert.equal(last.data.type, "error");
  assert.match(last.data.message, /policy weights are being updated to version 1; retry/);
  assert.equal(last.data.param, null);
  assert.equal(last.data.code, "server_error");
  assert.deepEqual(events.map((e) => e.data.sequence_number), events.map((_, i) => i), "one numbering, the error included");
  assert.ok(events.slice(0, -1).every((e) => e.name === e.data.type && e.name !== "error"));
});
