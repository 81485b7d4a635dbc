/**
 * The start-up summary: logged once the server serves (not when it merely listens), with the OpenAI base URL, the
 * served names, device and dtype, the KV capacity in tokens and the most full-length sequences that fit at once;
 * with --log-format json every line stays JSON.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { ServerConfig } from "../../src/config.ts";
import type { Logger } from "../../src/log.ts";
import { startServer } from "../../src/server.ts";
import { openAiBaseUrl, type StartupFacts, startupFields, startupLines } from "../../src/startup-summary.ts";
import { gpuDevicePresent } from "../../src/runtime/webgpu.ts";
import { runGymEdge } from "../support/child-server.ts";
import { testCacheDir, tinyModelDir } from "../support/served.ts";

const SLOW = { timeout: 120_000 };

/** KV bytes one token of a model folder takes: keys and values of every layer, in fp32. */
function kvBytesPerToken(dir: string): number {
  const c = JSON.parse(readFileSync(path.join(dir, "config.json"), "utf8"));
  const headDim = c.head_dim ?? c.hidden_size / c.num_attention_heads;
  return 2 * c.num_hidden_layers * (c.num_key_value_heads ?? c.num_attention_heads) * headDim * 4;
}

const FACTS: StartupFacts = {
  hostname: "127.0.0.1",
  port: 8000,
  servedModelNames: ["policy", "Qwen/Qwen3-0.6B"],
  model: "/models/qwen3",
  device: "cpu",
  backend: "onnxruntime-node (cpu)",
  dtype: "fp32",
  maxModelLen: 4096,
  kvCacheBytes: 2 ** 30,
  kvBytesPerToken: 4096,
  maxNumSeqs: 32,
  samplingDefaults: {},
  samplingDefaultsSource: null,
};

test("the summary's figures: base URL, KV tokens, and sequences of the full length that fit at once", () => {
  const fields = startupFields(FACTS);
  assert.equal(fields.base_url, "http://127.0.0.1:8000/v1");
  assert.equal(fields.kv_cache_tokens, 262_144);
  assert.equal(fields.max_concurrency, 64);
  assert.equal(openAiBaseUrl("::1", 9000), "http://[::1]:9000/v1");
  const lines = startupLines(FACTS);
  assert.equal(lines[0], "ready: serving policy (also answers to Qwen/Qwen3-0.6B) at http://127.0.0.1:8000/v1");
  assert.equal(lines[1], "model /models/qwen3 on cpu via onnxruntime-node (cpu) (fp32), context 4,096 tokens");
  assert.equal(
    lines[2],
    "KV cache 1 GiB: 262,144 tokens; maximum concurrency for 4,096 tokens per request: 64 (--max-num-seqs runs at most 32 at once)",
  );
  assert.equal(lines.length, 3);
  const short = startupLines({ ...FACTS, kvCacheBytes: 2 ** 23 });
  assert.match(short[2], /: 2,048 tokens; maximum concurrency for 4,096 tokens per request: 0 \(a request of the full context does not fit/);
  const withDefaults = startupLines({ ...FACTS, samplingDefaults: { temperature: 0.6, top_k: 20 }, samplingDefaultsSource: "/m/generation_config.json" });
  assert.match(withDefaults[3], /temperature=0\.6, top_k=20 \(from \/m\/generation_config\.json; --generation-config vllm/);
});

test("the summary is logged once /health answers 200, with the served model's own figures", SLOW, async () => {
  const lines: string[] = [];
  let healthAtSummary: Promise<number> | null = null;
  let port = 0;
  const capture: Logger = {
    debug() {},
    info: (m) => {
      lines.push(m);
      // Asked the moment the summary is logged: the app must already be the one answering.
      if (m.startsWith("ready:")) healthAtSummary = fetch(`http://127.0.0.1:${port}/health`).then((r) => r.status);
    },
    warn() {},
    error: (m) => lines.push(m),
  };
  const config = ServerConfig.parse({
    port: 0,
    device: "cpu",
    cacheDir: testCacheDir(),
    maxModelLen: 256,
    maxNumSeqs: 4,
    kvCacheMemory: "64MiB",
    servedModelName: ["policy", "alias"],
    logRequests: false,
  });
  const server = await startServer(config, capture);
  port = server.port;
  try {
    assert.ok(!lines.some((l) => l.startsWith("ready")), "listening is not ready");
    assert.match(lines.find((l) => l.startsWith("listening on"))!, /^listening on http:\/\/127\.0\.0\.1:\d+ /);
    const served = await server.ready;
    const dir = await tinyModelDir();
    const tokens = Math.floor(64 * 2 ** 20 / kvBytesPerToken(dir));
    const at = lines.findIndex((l) => l.startsWith("ready:"));
    assert.ok(at >= 0, lines.join("\n"));
    assert.equal(lines[at], `ready: serving policy (also answers to alias) at http://127.0.0.1:${server.port}/v1`);
    assert.equal(lines[at + 1], `model ${served.loaded.id} on cpu via ${served.loaded.backend.label} (fp32), context 256 tokens`);
    assert.equal(
      lines[at + 2],
      `KV cache 64 MiB: ${tokens.toLocaleString("en-US")} tokens; maximum concurrency for 256 tokens per request: ` +
        `${Math.floor(tokens / 256)} (--max-num-seqs runs at most 4 at once)`,
    );
    assert.equal(await healthAtSummary, 200);
  } finally {
    await server.close();
  }
});

test("the first start says it builds the built-in model, once; later starts say nothing of it", SLOW, async () => {
  const cacheDir = mkdtempSync(path.join(os.tmpdir(), "gym-edge-first-start-"));
  try {
    for (const first of [true, false]) {
      const lines: string[] = [];
      const capture: Logger = { debug() {}, info: (m) => lines.push(m), warn() {}, error: (m) => lines.push(m) };
      const config = ServerConfig.parse({ port: 0, device: "cpu", cacheDir, maxModelLen: 64, maxNumSeqs: 2, logRequests: false });
      const server = await startServer(config, capture);
      try {
        await server.ready;
        const building = lines.filter((l) => l.startsWith("building the built-in model"));
        const dir = path.join(cacheDir, "models", "tiny");
        assert.deepEqual(building, first ? [`building the built-in model (tiny, random weights) into ${dir}: once, a few seconds`] : []);
      } finally {
        await server.close();
      }
    }
  } finally {
    rmSync(cacheDir, { recursive: true, force: true });
  }
});

test(
  "--device auto on a machine without a GPU device, XDG_RUNTIME_DIR unset: the JSON log stays JSON",
  { ...SLOW, skip: gpuDevicePresent() !== false && "this machine has a GPU device node" },
  async () => {
    const run = runGymEdge(["--device", "auto", "--port", "0", "--log-format", "json"], ["XDG_RUNTIME_DIR"]);
    try {
      const deadline = performance.now() + 60_000;
      while (!/"msg":"ready"/.test(run.stderr())) {
        assert.ok(run.child.exitCode === null && performance.now() < deadline, `not ready:\n${run.stderr()}`);
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
      const lines = run.stderr().split("\n").filter((l) => l.trim() !== "");
      for (const line of lines) assert.doesNotThrow(() => JSON.parse(line), `not a JSON line: ${line}`);
      assert.ok(lines.some((l) => l.includes("webgpu skipped: this machine has no GPU device")), lines.join("\n"));
    } finally {
      run.signal("SIGKILL");
      await run.exited;
    }
  },
);

test("--log-format json: every line is JSON, and the summary is one object with the figures", SLOW, async () => {
  const dir = await tinyModelDir();
  const run = runGymEdge([
    "serve", dir, "--device", "cpu", "--port", "0", "--log-format", "json", "--max-model-len", "512",
    "--kv-cache-memory-bytes", "32MiB", "--served-model-name", "policy", "Qwen/Qwen3-0.6B", "--gpu-memory-utilization", "0.9",
  ]);
  try {
    const deadline = performance.now() + 60_000;
    while (!/"msg":"ready"/.test(run.stderr())) {
      assert.ok(run.child.exitCode === null && performance.now() < deadline, `no summary:\n${run.stderr()}`);
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    const lines = run.stderr().split("\n").filter((l) => l.trim() !== "");
    const records = lines.map((l) => {
      try {
        return JSON.parse(l) as Record<string, unknown>;
      } catch {
        assert.fail(`not a JSON line: ${l}`);
      }
    });
    assert.ok(records.some((r) => r.level === "warn" && String(r.msg).startsWith("--gpu-memory-utilization has no meaning here")));
    const ready = records.find((r) => r.msg === "ready")!;
    const base = String(ready.base_url);
    assert.match(base, /^http:\/\/127\.0\.0\.1:\d+\/v1$/);
    const tokens = Math.floor(32 * 2 ** 20 / kvBytesPerToken(dir));
    assert.deepEqual(
      { ...ready, ts: 0, base_url: 0, backend: 0 },
      {
        ts: 0,
        level: "info",
        msg: "ready",
        base_url: 0,
        served_model_names: ["policy", "Qwen/Qwen3-0.6B"],
        model: dir,
        device: "cpu",
        backend: 0,
        dtype: "fp32",
        max_model_len: 512,
        kv_cache_bytes: 32 * 2 ** 20,
        kv_cache_tokens: tokens,
        max_concurrency: Math.floor(tokens / 512),
        max_num_seqs: 32,
        default_sampling: null,
        default_sampling_source: null,
      },
    );
    // Both served names and the model path are answered; /v1/models lists the served names.
    const models = await (await fetch(`${base}/models`)).json();
    assert.deepEqual(models.data.map((m: { id: string }) => m.id), ["policy", "Qwen/Qwen3-0.6B"]);
    for (const model of ["policy", "Qwen/Qwen3-0.6B", dir]) {
      const res = await fetch(`${base}/completions`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ model, prompt: "Hi", max_tokens: 2 }),
      });
      assert.equal(res.status, 200, model);
      assert.equal((await res.json()).model, "policy");
    }
  } finally {
    run.signal("SIGTERM");
    await run.exited;
  }
});
