/**
 * --log-level debug: what the engine does, summed at most once a second while it works (steps, decode and prefill
 * tokens, step times, queues, KV use), and nothing of it at info.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { ServerConfig } from "../../src/config.ts";
import type { Logger, LogLevel } from "../../src/log.ts";
import { startServer } from "../../src/server.ts";
import { StepLog, type StepSummary } from "../../src/engine/step-log.ts";
import { testCacheDir } from "../support/served.ts";

const SLOW = { timeout: 120_000 };

const step = (over: Partial<StepSummary> = {}): StepSummary => ({
  decode: 3, prefillSeqs: 1, prefillTokens: 20, admitted: 1, preempted: 0, ms: 10,
  running: 4, waiting: 2, kvUsedBytes: 250, kvCacheBytes: 1000, ...over,
});

test("steps are summed into one line per interval, with the figures of the steps since the last line", () => {
  let now = 0;
  const lines: string[] = [];
  const log = new StepLog((l) => lines.push(l), 1000, () => now);
  for (let i = 0; i < 5; i++) {
    now += 150;
    log.record(step({ ms: 10 + i }));
  }
  assert.deepEqual(lines, [], "no line before a second has passed");
  now = 1000;
  log.record(step({ decode: 4, prefillSeqs: 0, prefillTokens: 0, admitted: 0, ms: 30, running: 5, waiting: 0 }));
  assert.equal(lines.length, 1);
  assert.equal(
    lines[0],
    "engine: 6 steps in 1.0 s: 19 decode tokens, 100 prefill tokens in 5 chunks, 5 admitted, 0 preempted; " +
      "step 15.0 ms mean, 30.0 ms max (9% busy); now 5 running, 0 waiting, KV 25.0% used",
  );
  // The sums start again after a line.
  now = 1500;
  log.record(step({ preempted: 2 }));
  assert.equal(lines.length, 1);
  now = 2100;
  log.record(step());
  assert.match(lines[1], /^engine: 2 steps in 1\.1 s: 6 decode tokens, 40 prefill tokens in 2 chunks, 2 admitted, 2 preempted;/);
});

for (const level of ["debug", "info"] as LogLevel[]) {
  test(`a server at --log-level ${level} ${level === "debug" ? "logs" : "does not log"} its engine's steps`, SLOW, async () => {
    const debug: string[] = [];
    const capture: Logger = { debug: (m) => debug.push(m), info() {}, warn() {}, error() {} };
    const config = ServerConfig.parse({
      port: 0, device: "cpu", cacheDir: testCacheDir(), maxModelLen: 256, maxNumSeqs: 4, logRequests: false, logLevel: level,
    });
    const server = await startServer(config, level === "debug" ? capture : { ...capture, debug() {} });
    try {
      await server.ready;
      // Over a second after start-up, so the first step of the request writes a line.
      await new Promise((r) => setTimeout(r, 1100));
      const res = await fetch(`http://127.0.0.1:${server.port}/v1/completions`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ prompt: [1, 2, 3, 4, 5], max_tokens: 8, ignore_eos: true, n: 2 }),
      });
      assert.equal(res.status, 200);
      const lines = debug.filter((l) => l.startsWith("engine:"));
      if (level === "info") assert.deepEqual(lines, []);
      else {
        assert.ok(lines.length >= 1, debug.join("\n"));
        assert.match(lines[0], /^engine: 1 steps in \d+\.\d s: 0 decode tokens, 10 prefill tokens in 2 chunks, 2 admitted, 0 preempted; step [\d.]+ ms mean/);
      }
    } finally {
      await server.close();
    }
  });
}
