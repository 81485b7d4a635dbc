/**
 * Readiness while the model loads, as a Kubernetes probe sees it: a real server in a child process, polled on
 * /health every 20 ms on fresh connections from the moment it listens. Every probe is answered within 300 ms: 503
 * with Retry-After until the model is ready, 200 from then on. The model is a few hundred MB with the real Qwen3
 * tokenizer (built once into the test cache), so that a load that held the server's thread shows as seconds.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import http from "node:http";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import { ensureModel } from "../../src/model/builder/build.ts";
import { getPreset, type Preset } from "../../src/model/builder/presets.ts";
import { runtimeName } from "../../src/runtime/detect.ts";
import { programCommand } from "../support/child-server.ts";
import { testCacheDir } from "../support/served.ts";

const ROOT = fileURLToPath(new URL("../..", import.meta.url));
/**
 * The answer time every probe must meet. The goal is 100 ms, met on an idle machine (worst probe 70-104 ms by
 * runtime); a shared 2-core CI machine adds scheduling noise, so the test allows 300 ms: a load that holds the
 * server's thread shows as seconds, and Kubernetes' default probe timeout is 1 s.
 */
const BOUND_MS = 300;
const PROBE_EVERY_MS = 20;

/** bench-135m's architecture made smaller: a 171 MB model that loads in about a second, tokenizer and all. */
const BENCH = getPreset("bench-135m");
const LOAD_TEST: Preset = {
  ...BENCH,
  name: "health-load",
  arch: {
    ...BENCH.arch,
    hiddenSize: 256,
    numLayers: 4,
    numHeads: 4,
    numKvHeads: 2,
    headDim: 64,
    intermediateSize: 1024,
  },
};

interface Probe {
  /** When it was sent, ms after the server said it listens. */
  sent: number;
  ms: number;
  status: number | string;
  retryAfter?: string;
}

/** GET /health on a new connection, as a probe makes it; a connection error is its status. */
function probe(port: number, since: number): Promise<Probe> {
  const sent = performance.now();
  const done = (status: number | string, retryAfter?: string): Probe => ({
    sent: sent - since,
    ms: performance.now() - sent,
    status,
    retryAfter,
  });
  return new Promise((resolve) => {
    const req = http.get({ host: "127.0.0.1", port, path: "/health", agent: false, timeout: 30_000 }, (res) => {
      res.resume();
      res.on("end", () => resolve(done(res.statusCode ?? 0, res.headers["retry-after"] as string | undefined)));
    });
    req.on("timeout", () => req.destroy(new Error("timeout")));
    req.on("error", (err) => resolve(done((err as { code?: string }).code ?? err.message)));
  });
}

/** Resolves with the port once the child's log says it listens. */
function listening(child: ChildProcess, log: () => string): Promise<number> {
  return new Promise((resolve, reject) => {
    const check = () => {
      const m = /listening on http:\/\/[^\s]+:(\d+)/.exec(log());
      if (m) {
        child.stderr!.off("data", check);
        resolve(Number(m[1]));
      }
    };
    child.stderr!.on("data", check);
    child.on("exit", (code) => reject(new Error(`the server exited (${code}) before listening:\n${log()}`)));
  });
}

test("/health answers 503 within 300 ms at any time while a model loads, then 200", { timeout: 180_000 }, async () => {
  const dir = path.join(testCacheDir(), "models", LOAD_TEST.name);
  await ensureModel({ preset: LOAD_TEST, out: dir });
  const [cmd, pre] = programCommand();
  const child = spawn(cmd, [...pre, "--model", dir, "--device", "cpu", "--port", "0", "--no-log-requests"], {
    cwd: ROOT,
    env: { ...process.env, GYM_EDGE_CACHE: testCacheDir(), NO_COLOR: "1" },
    stdio: ["ignore", "ignore", "pipe"],
  });
  let log = "";
  child.stderr!.setEncoding("utf8");
  child.stderr!.on("data", (d: string) => (log += d));
  const exited = new Promise((resolve) => child.on("close", resolve));
  const probes: Promise<Probe>[] = [];
  let answered: Probe[];
  try {
    const port = await listening(child, () => log);
    const since = performance.now();
    // Probes go out every 20 ms whatever the earlier ones are doing, until one is answered 200, and a few after.
    let readyAt = Infinity;
    while (probes.length < readyAt + 5 && performance.now() - since < 120_000) {
      const at = probes.length;
      probes.push(
        probe(port, since).then((p) => {
          if (p.status === 200) readyAt = Math.min(readyAt, at);
          return p;
        }),
      );
      await new Promise((resolve) => setTimeout(resolve, PROBE_EVERY_MS));
    }
    answered = await Promise.all(probes);
  } finally {
    child.kill("SIGTERM");
    await exited;
  }
  const notReady = answered.filter((p) => p.status === 503);
  const worst = answered.reduce((w, p) => (p.ms > w.ms ? p : w));
  const summary = `${answered.length} probes, ${notReady.length} answered 503; slowest ${worst.ms.toFixed(0)} ms ` +
    `(sent ${worst.sent.toFixed(0)} ms after listening, answered ${worst.status})`;
  console.log(`health during load (${runtimeName()}): ${summary}`);

  assert.deepEqual(answered.filter((p) => typeof p.status !== "number"), [], "every probe got an HTTP answer");
  const firstReady = answered.findIndex((p) => p.status === 200);
  assert.ok(firstReady >= 0, `the model never became ready:\n${log}`);
  // Long enough a load for the probes to mean something.
  assert.ok(notReady.length >= 10, `only ${notReady.length} probes saw the model loading: ${summary}`);
  assert.deepEqual(answered.slice(0, firstReady).filter((p) => p.status !== 503), [], "503 until ready");
  assert.deepEqual(answered.slice(firstReady).filter((p) => p.status !== 200), [], "200 once ready");
  assert.ok(notReady.every((p) => p.retryAfter !== undefined), "every 503 says when to retry");
  const slow = answered.filter((p) => p.ms > BOUND_MS).map((p) =>
    `${p.ms.toFixed(0)} ms at ${p.sent.toFixed(0)} (${p.status})`
  );
  assert.deepEqual(slow, [], `probes slower than ${BOUND_MS} ms: ${summary}`);
});
