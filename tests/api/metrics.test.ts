/**
 * Metrics and request bookkeeping: the Prometheus text format, vLLM's metric names, tokens and latencies of the
 * requests served, the engine's live state at scrape time, the process's own series, the KV cache's configuration,
 * route labels by route name, request ids, one log record per request, CORS off unless asked for, and 503 +
 * Retry-After when the engine turns a request away.
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { closeSync, openSync, readdirSync, readlinkSync } from "node:fs";
import process from "node:process";
import { meteredEngine } from "../../src/api/metrics.ts";
import type { RequestRecord } from "../../src/api/operations.ts";
import { formatRequestLine, RequestTracker, requestLogFields } from "../../src/api/operations.ts";
import { EngineUnavailableError } from "../../src/engine/control.ts";
import type { SubmittedRequest } from "../../src/engine/engine.ts";
import type { SamplingParams } from "../../src/engine/sampling-params.ts";
import type { TokenEvent } from "../../src/engine/sequence.ts";
import { Registry } from "../../src/metrics/registry.ts";
import { type EngineSnapshot, ServingMetrics } from "../../src/metrics/serving.ts";
import { createApp } from "../../src/api/app.ts";
import { ServerConfig } from "../../src/config.ts";
import { silentLogger } from "../../src/log.ts";
import { renderProcessMetrics } from "../../src/metrics/process.ts";
import { type StartedServer, startServer } from "../../src/server.ts";
import { testCacheDir } from "../support/served.ts";
import { errorOf, MAX_MODEL_LEN, MODEL, postJson, qwen3 } from "./app-fixture.ts";

const SLOW = { timeout: 120_000 };
/** When this file began to run: the process started before. */
const FILE_STARTED_S = Date.now() / 1000;

/** An engine that answers every request with max_tokens tokens at once, from weights version 3. */
class ScriptedEngine {
  policyVersion = 3;
  refuse: EngineUnavailableError | null = null;
  #next = 0;
  submit(promptIds: readonly number[], params: SamplingParams): SubmittedRequest {
    if (this.refuse) throw this.refuse;
    const count = params.max_tokens ?? 4;
    let finishReason: "length" | null = null;
    async function* events(): AsyncGenerator<TokenEvent> {
      for (let i = 0; i < count; i++) {
        await new Promise((resolve) => setTimeout(resolve, 2));
        const last = i === count - 1;
        if (last) finishReason = "length";
        yield { index: i, tokenId: 1000 + i, logprob: -1, policyVersion: 3, ...(last ? { finishReason: "length" as const } : {}) };
      }
    }
    const arrivedAt = performance.now();
    return {
      id: this.#next++,
      promptIds: [...promptIds],
      events: events(),
      get finishReason() {
        return finishReason;
      },
      arrivedAt,
      cachedPromptTokens: 0,
      scheduledAt: arrivedAt + 1,
    };
  }
  abort(): void {}
}

const SNAPSHOT: EngineSnapshot = {
  running: 2,
  waiting: 5,
  kvCacheUsage: 0.25,
  prefixCacheQueriedTokens: 200,
  prefixCacheHitTokens: 50,
  preemptions: 1,
  steps: 42,
  policyVersion: 3,
  sleepLevel: 0,
};

function served(overrides: Record<string, unknown> = {}) {
  const engine = new ScriptedEngine();
  const metrics = new ServingMetrics(MODEL);
  const records: RequestRecord[] = [];
  const tracker = new RequestTracker();
  const app = createApp({
    servedModelName: MODEL,
    maxModelLen: MAX_MODEL_LEN,
    tokenizer: qwen3,
    isReady: () => true,
    engine: meteredEngine(engine, metrics),
    metrics,
    engineSnapshot: () => SNAPSHOT,
    requestLog: (r) => records.push({ ...r }),
    tracker,
    ...overrides,
  });
  return { app, engine, metrics, records, tracker };
}

/** The value of one series in exposition text (null when absent). */
function sample(text: string, series: string): number | null {
  const line = text.split("\n").find((l) => l.startsWith(series + " "));
  return line ? Number(line.slice(series.length + 1)) : null;
}

test("the text format: HELP and TYPE, labels escaped, histogram buckets cumulative with +Inf, sum and count", () => {
  const r = new Registry({ model_name: 'a"b\\c' });
  const c = r.counter("x_total", "A counter.\nTwo lines.");
  c.inc({ kind: "one" }, 2);
  c.advanceTo(10, { kind: "one" });
  c.advanceTo(3, { kind: "one" });
  r.gauge("g", "A gauge.").set(-1.5);
  const h = r.histogram("h_seconds", "A histogram.", [0.1, 1]);
  for (const v of [0.05, 0.5, 0.7, 5, NaN]) h.observe(v);
  const text = r.render();
  assert.match(text, /^# HELP x_total A counter.\\nTwo lines.\n# TYPE x_total counter\n/);
  assert.equal(sample(text, 'x_total{model_name="a\\"b\\\\c",kind="one"}'), 10);
  assert.equal(sample(text, 'g{model_name="a\\"b\\\\c"}'), -1.5);
  assert.equal(sample(text, 'h_seconds_bucket{model_name="a\\"b\\\\c",le="0.1"}'), 1);
  assert.equal(sample(text, 'h_seconds_bucket{model_name="a\\"b\\\\c",le="1"}'), 3);
  assert.equal(sample(text, 'h_seconds_bucket{model_name="a\\"b\\\\c",le="+Inf"}'), 4);
  assert.equal(sample(text, 'h_seconds_sum{model_name="a\\"b\\\\c"}'), 6.25);
  assert.equal(sample(text, 'h_seconds_count{model_name="a\\"b\\\\c"}'), 4);
  assert.ok(text.endsWith("\n"));
  assert.throws(() => c.inc({}, -1), /cannot decrease/);
  assert.throws(() => r.counter("bad name", ""), /invalid metric name/);
  assert.throws(() => r.counter("x_total", ""), /registered twice/);
  assert.throws(() => r.histogram("h2", "", [1, 1]), /increase/);
});

test("GET /metrics speaks Prometheus text with vLLM's names and the engine's live state", async () => {
  const { app } = served();
  const res = await app.request("/metrics");
  assert.equal(res.status, 200);
  assert.match(res.headers.get("content-type") ?? "", /^text\/plain; version=0.0.4/);
  const text = await res.text();
  const m = `{model_name="${MODEL}"}`;
  assert.equal(sample(text, `vllm:num_requests_running${m}`), 2);
  assert.equal(sample(text, `vllm:num_requests_waiting${m}`), 5);
  assert.equal(sample(text, `vllm:kv_cache_usage_perc${m}`), 0.25);
  assert.equal(sample(text, `vllm:prefix_cache_queries_total${m}`), 200);
  assert.equal(sample(text, `vllm:prefix_cache_hits_total${m}`), 50);
  assert.equal(sample(text, `gym_edge:prefix_cache_hit_rate${m}`), 0.25);
  assert.equal(sample(text, `vllm:num_preemptions_total${m}`), 1);
  assert.equal(sample(text, `gym_edge:policy_version${m}`), 3);
  assert.equal(sample(text, `gym_edge:sleep_level${m}`), 0);
  for (const name of ["vllm:time_to_first_token_seconds", "vllm:inter_token_latency_seconds", "vllm:request_queue_time_seconds"]) {
    assert.match(text, new RegExp(`# TYPE ${name} histogram`));
  }
});

test("a generation counts its tokens, first-token and inter-token latency, queue time and finish reason", async () => {
  const { app, records } = served();
  const res = await app.request("/v1/completions", postJson({ prompt: [1, 2, 3], max_tokens: 5, n: 2 }));
  assert.equal(res.status, 200);
  const text = await (await app.request("/metrics")).text();
  const m = `model_name="${MODEL}"`;
  assert.equal(sample(text, `vllm:prompt_tokens_total{${m}}`), 6);
  assert.equal(sample(text, `vllm:generation_tokens_total{${m}}`), 10);
  assert.equal(sample(text, `vllm:request_success_total{${m},finished_reason="length"}`), 2);
  assert.equal(sample(text, `vllm:time_to_first_token_seconds_count{${m}}`), 2);
  assert.equal(sample(text, `vllm:inter_token_latency_seconds_count{${m}}`), 8);
  assert.equal(sample(text, `vllm:request_queue_time_seconds_count{${m}}`), 2);
  assert.equal(sample(text, `vllm:e2e_request_latency_seconds_count{${m}}`), 2);
  assert.equal(sample(text, `gym_edge:http_requests_total{${m},method="POST",route="/v1/completions",status="200"}`), 1);
  const record = records.find((r) => r.route === "/v1/completions")!;
  assert.equal(record.status, 200);
  assert.equal(record.promptTokens, 3, "the prompt of n samples counts once");
  assert.equal(record.completionTokens, 10);
  assert.equal(record.policyVersion, 3);
  assert.ok(record.ttftMs !== null && record.ttftMs >= 0 && record.ttftMs <= record.durationMs);
});

test("a stream is logged once its last byte is sent; unknown paths share one route label", async () => {
  const { app, records, tracker } = served();
  const res = await app.request("/v1/chat/completions", postJson({ messages: [{ role: "user", content: "hi" }], max_tokens: 3, stream: true }));
  assert.equal(tracker.inFlight, 1, "a stream in progress is in flight");
  assert.equal(records.length, 0);
  const text = await res.text();
  assert.match(text, /data: \[DONE\]/);
  assert.equal(tracker.inFlight, 0);
  assert.equal(records.length, 1);
  assert.equal(records[0].completionTokens, 3);
  await errorOf(await app.request("/no/such/path/12345"), 404);
  assert.equal(records[1].route, "unmatched");
  const metrics = await (await app.request("/metrics")).text();
  assert.match(metrics, /gym_edge:http_requests_total\{model_name="gym-edge\/tiny",method="GET",route="unmatched",status="404"\} 1/);
});

test("each response carries a request id: the client's when sane, else a fresh one", async () => {
  const { app, records } = served();
  const mine = await app.request("/v1/models", { headers: { "x-request-id": "trainer-step-7.rollout-3" } });
  assert.equal(mine.headers.get("x-request-id"), "trainer-step-7.rollout-3");
  const odd = await app.request("/v1/models", { headers: { "x-request-id": "a b\u0001" } });
  assert.match(odd.headers.get("x-request-id") ?? "", /^[0-9a-f-]{36}$/);
  assert.equal(records[0].id, "trainer-step-7.rollout-3");
  assert.match(formatRequestLine(records[0]), /^request trainer-step-7.rollout-3 GET \/v1\/models 200 prompt_tokens=0 /);
  const fields = requestLogFields(records[0]);
  assert.equal(fields.request_id, "trainer-step-7.rollout-3");
  assert.equal(fields.status, 200);
  assert.equal(JSON.parse(JSON.stringify(fields)).route, "/v1/models");
});

test("an engine that turns a request away gives 503 with Retry-After, counted by reason", async () => {
  const { app, engine } = served();
  engine.refuse = new EngineUnavailableError("queue_full", "the request queue is full (4 waiting); retry later", 2);
  const res = await app.request("/v1/completions", postJson({ prompt: "hi", max_tokens: 2 }));
  assert.equal(res.headers.get("retry-after"), "2");
  const err = await errorOf(res, 503);
  assert.match(err.message, /queue is full/);
  assert.equal(err.type, "server_error");
  const text = await (await app.request("/metrics")).text();
  assert.match(text, /gym_edge:requests_rejected_total\{model_name="gym-edge\/tiny",reason="queue_full"\} 1/);
});

test("CORS is off by default; --allowed-origins opens it to the origins named", async () => {
  const origin = { origin: "https://dash.example" };
  const closed = served().app;
  assert.equal((await closed.request("/v1/models", { headers: origin })).headers.get("access-control-allow-origin"), null);
  const open = served({ allowedOrigins: ["https://dash.example"], apiKey: "k" }).app;
  const preflight = await open.request("/v1/chat/completions", {
    method: "OPTIONS",
    headers: { ...origin, "access-control-request-method": "POST", "access-control-request-headers": "authorization" },
  });
  assert.equal(preflight.status, 204, "a preflight needs no API key");
  assert.equal(preflight.headers.get("access-control-allow-origin"), "https://dash.example");
  const other = await open.request("/v1/models", { headers: { origin: "https://evil.example", authorization: "Bearer k" } });
  assert.equal(other.headers.get("access-control-allow-origin"), null);
  const any = served({ allowedOrigins: ["*"] }).app;
  assert.equal((await any.request("/v1/models", { headers: origin })).headers.get("access-control-allow-origin"), "*");
});

test("while draining, new requests get 503 and the tracker settles once in-flight ones end", async () => {
  const { app, tracker } = served();
  const stream = await app.request("/v1/completions", postJson({ prompt: "hi", max_tokens: 20, stream: true }));
  tracker.drain();
  const refused = await app.request("/v1/models");
  assert.equal(refused.headers.get("retry-after"), "1");
  assert.match((await errorOf(refused, 503)).message, /shutting down/);
  assert.equal(await tracker.settled(5), false, "the stream is still going");
  const [settled] = await Promise.all([tracker.settled(10_000), stream.text()]);
  assert.equal(settled, true);
});

test("a process figure the runtime cannot give is left out, not reported as 0", () => {
  const text = renderProcessMetrics({
    residentBytes: 123456,
    virtualBytes: null,
    cpuSeconds: 1.5,
    openFds: null,
    maxFds: null,
    startTimeSeconds: 1700000000.25,
  });
  assert.equal(sample(text, "process_resident_memory_bytes"), 123456);
  assert.match(text, /^# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total 1.5$/m);
  assert.equal(sample(text, "process_start_time_seconds"), 1700000000.25);
  assert.doesNotMatch(text, /process_virtual_memory_bytes|process_open_fds|process_max_fds/);
  const none = { residentBytes: null, virtualBytes: null, cpuSeconds: null, openFds: null, maxFds: null, startTimeSeconds: null };
  assert.equal(renderProcessMetrics(none), "");
});

/** The value of the one series of family `name` (whatever its labels), or null when it is absent. */
function valueOf(text: string, name: string): number | null {
  const line = text.split("\n").find((l) => l.startsWith(name + " ") || l.startsWith(name + "{"));
  return line ? Number(line.slice(line.lastIndexOf(" ") + 1)) : null;
}

/**
 * Open descriptors counted another way: the entries of /proc/self/fd that still resolve once the listing is done
 * (the descriptor that read the directory is closed by then).
 */
function liveFds(): number {
  return readdirSync("/proc/self/fd").filter((fd) => {
    try {
      readlinkSync(`/proc/self/fd/${fd}`);
      return true;
    } catch {
      return false;
    }
  }).length;
}

/** Keeps this thread on the CPU until it has used `ms` more milliseconds of CPU time. */
function burnCpu(ms: number): void {
  const used = () => {
    const { user, system } = process.cpuUsage();
    return (user + system) / 1000;
  };
  const until = used() + ms;
  let x = 0;
  while (used() < until) for (let i = 0; i < 10_000; i++) x += Math.sqrt(i);
  assert.ok(x > 0);
}

describe("a real server's /metrics", () => {
  let server: StartedServer;
  let base: string;
  const scrape = async () => {
    const res = await fetch(`${base}/metrics`);
    assert.equal(res.status, 200);
    return await res.text();
  };

  before(async () => {
    const config = ServerConfig.parse({
      port: 0,
      device: "cpu",
      cacheDir: testCacheDir(),
      maxModelLen: 256,
      kvCacheMemory: "64MiB",
      logRequests: false,
    });
    server = await startServer(config, silentLogger);
    await server.ready;
    base = `http://127.0.0.1:${server.port}`;
  });
  after(async () => await server.close());

  test("process_* series: resident memory as the process sees it, CPU seconds that grow with work, start time", SLOW, async () => {
    const first = await scrape();
    for (const name of ["process_resident_memory_bytes", "process_cpu_seconds_total", "process_start_time_seconds"]) {
      assert.match(first, new RegExp(`^# TYPE ${name} ${name.endsWith("_total") ? "counter" : "gauge"}$`, "m"), name);
    }
    const rss = valueOf(first, "process_resident_memory_bytes")!;
    const ownRss = process.memoryUsage().rss;
    assert.ok(rss > 0 && rss > ownRss / 2 && rss < ownRss * 2, `resident ${rss} against memoryUsage().rss ${ownRss}`);

    const cpuBefore = valueOf(first, "process_cpu_seconds_total")!;
    assert.ok(cpuBefore > 0);
    burnCpu(200);
    const cpuAfter = valueOf(await scrape(), "process_cpu_seconds_total")!;
    assert.ok(cpuAfter - cpuBefore >= 0.19, `CPU seconds ${cpuBefore} then ${cpuAfter} after 0.2 s of work`);

    const start = valueOf(first, "process_start_time_seconds")!;
    // Before this file began, and within the hour a whole suite takes on one runtime.
    assert.ok(start <= FILE_STARTED_S && start > FILE_STARTED_S - 3600, `start ${start}, this file began at ${FILE_STARTED_S}`);
    assert.equal(valueOf(await scrape(), "process_start_time_seconds"), start, "the start time does not move");
  });

  const linuxOnly = { ...SLOW, skip: process.platform !== "linux" && "these series come from Linux's /proc" };
  test("on Linux: virtual memory, and open file descriptors counted as they open, under the most allowed", linuxOnly, async () => {
    const first = await scrape();
    const rss = valueOf(first, "process_resident_memory_bytes")!;
    assert.ok(valueOf(first, "process_virtual_memory_bytes")! >= rss);
    const openBefore = valueOf(first, "process_open_fds")!;
    const max = valueOf(first, "process_max_fds")!;
    assert.ok(openBefore >= 3 && openBefore < max, `open ${openBefore}, most ${max}`);
    assert.ok(Math.abs(openBefore - liveFds()) <= 2, `open ${openBefore}, counted here ${liveFds()}`);
    const fds = Array.from({ length: 20 }, () => openSync("/dev/null", "r"));
    try {
      const open = valueOf(await scrape(), "process_open_fds")!;
      assert.ok(open >= openBefore + 16, `open ${openBefore}, then ${open} after opening 20`);
      assert.ok(Math.abs(open - liveFds()) <= 2, `open ${open}, counted here ${liveFds()}`);
    } finally {
      fds.forEach((fd) => closeSync(fd));
    }
  });

  test("route labels are the routes' names as users read them: never the router's pattern, never a raw path", SLOW, async () => {
    assert.equal((await fetch(`${base}/v1/models/${MODEL}`)).status, 200);
    assert.equal((await fetch(`${base}/v1/models/someone/else`)).status, 404);
    assert.equal((await fetch(`${base}/no/such/page-81723`)).status, 404);
    const text = await scrape();
    const http = (status: number, route: string) =>
      valueOf(text, `gym_edge:http_requests_total{model_name="${MODEL}",method="GET",route="${route}",status="${status}"}`);
    assert.equal(http(200, "/v1/models/{model}"), 1);
    assert.equal(http(404, "/v1/models/{model}"), 1);
    assert.equal(http(404, "unmatched"), 1);
    const routes = new Set([...text.matchAll(/route="([^"]*)"/g)].map((m) => m[1]));
    for (const route of routes) {
      assert.ok(route === "unmatched" || /^\/[a-z0-9_/{}]*$/.test(route), `route label ${route}`);
      assert.ok(!/someone|page-81723|gym-edge|:/.test(route), `route label ${route}`);
    }
  });

  test("vllm:cache_config_info carries the engine's block size and KV capacity in blocks, as vLLM names them", SLOW, async () => {
    const served = await server.ready;
    const { engine } = served;
    const text = await scrape();
    assert.match(text, /^# TYPE vllm:cache_config_info gauge$/m);
    const line = text.split("\n").find((l) => l.startsWith("vllm:cache_config_info{"));
    assert.ok(line, text);
    assert.ok(line.endsWith("} 1"));
    const labels = Object.fromEntries([...line.matchAll(/(\w+)="([^"]*)"/g)].map((m) => [m[1], m[2]]));
    const bytesPerToken = engine.runner.floatsPerToken * 4;
    assert.equal(labels.block_size, String(engine.cache.blockSize));
    assert.equal(labels.kv_cache_memory_bytes, String(64 * 2 ** 20), "--kv-cache-memory 64MiB");
    assert.equal(labels.num_gpu_blocks, String(Math.floor(64 * 2 ** 20 / (engine.cache.blockSize * bytesPerToken))));
    assert.ok(Number(labels.num_gpu_blocks) * Number(labels.block_size) >= served.maxModelLen, "a whole context fits");
    assert.equal(labels.enable_prefix_caching, "True");
    assert.equal(labels.cache_dtype, "auto");
    assert.equal(labels.engine, "0");
    assert.equal(labels.model_name, undefined, "vLLM's info gauge has no model_name");
  });
});
