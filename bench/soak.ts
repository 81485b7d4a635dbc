/**
 * Soak: a served model under steady load for a while, to see throughput hold and memory stay flat. N clients loop
 * over chat and completions requests (streamed or not; some hang up midway) against a server on loopback in this
 * process, optionally while the weights are updated every few seconds. Prints one JSON line per interval
 * (requests/s, tokens/s, statuses, RSS and heap, engine state) and a summary line (latency percentiles, RSS growth).
 * Not part of CI.
 * Run: node --import tsx bench/soak.ts [--clients 16] [--duration 60] [--interval 5] [--max-tokens 16]
 *      [--stream-ratio 0.5] [--hangup-ratio 0.05] [--refit-every 0] [--model DIR] [--device cpu|wasm] [--cache-dir DIR]
 * RSS is this process's: the server's and the clients' together (the clients hold little).
 */
import * as path from "node:path";
import process from "node:process";
import { ServerConfig } from "../src/config.ts";
import { silentLogger } from "../src/log.ts";
import { ensureModel } from "../src/model/builder/build.ts";
import { defaultCacheDir } from "../src/model/builtin.ts";
import { runtimeName, runtimeVersion } from "../src/runtime/detect.ts";
import { startServer } from "../src/server.ts";
import { z } from "zod";
import { benchFlags, intFlag, numberFlag } from "./lib/flags.ts";
import { loadAverage, median, round } from "./lib/report.ts";

const SoakFlags = z.object({
  clients: intFlag(16).describe("clients looping over requests"),
  duration: numberFlag(60).describe("seconds of load"),
  interval: numberFlag(5).describe("seconds between interval lines"),
  maxTokens: intFlag(16).describe("max_tokens of each request"),
  streamRatio: numberFlag(0.5).describe("share of requests streamed"),
  hangupRatio: numberFlag(0.05).describe("share of requests hung up midway"),
  refitEvery: numberFlag(0).describe("seconds between weight updates (0: none)"),
  device: z.string().default("cpu").describe("the server's --device"),
  cacheDir: z.string().default(defaultCacheDir(process.env)).describe("the server's cache directory"),
  model: z.string().optional().describe("model directory (default: the built-in tiny model)"),
});

const flags = benchFlags(
  SoakFlags,
  "Soak: a served model under steady load for a while, to see throughput hold and memory stay flat.\n" +
    "Run: node --import tsx bench/soak.ts [flags]",
);
const { clients, maxTokens, streamRatio, hangupRatio, device, cacheDir, model } = flags;
const [durationS, intervalS, refitEveryS] = [flags.duration, flags.interval, flags.refitEvery];

const server = await startServer(ServerConfig.parse({
  port: 0,
  device,
  cacheDir,
  logRequests: false,
  ...(model ? { model } : {}),
}), silentLogger);
const served = await server.ready;
const base = `http://127.0.0.1:${server.port}`;

// Refit alternates between the served weights and another seed of the same shape (the tiny preset's, by default).
const weights = [served.loaded.dir];
if (refitEveryS > 0) {
  const other = path.join(cacheDir, "bench", "tiny-seed1");
  await ensureModel({ preset: "tiny", out: other, seed: 1 });
  weights.push(other);
}

interface Tally {
  requests: number;
  tokens: number;
  byStatus: Record<string, number>;
  latenciesMs: number[];
}
const fresh = (): Tally => ({ requests: 0, tokens: 0, byStatus: {}, latenciesMs: [] });
let interval = fresh();
const all = fresh();
const deadline = performance.now() + durationS * 1000;

function count(status: string, tokens: number, ms: number | null): void {
  for (const t of [interval, all]) {
    t.requests++;
    t.tokens += tokens;
    t.byStatus[status] = (t.byStatus[status] ?? 0) + 1;
    if (ms !== null) t.latenciesMs.push(ms);
  }
}

async function oneRequest(client: number, n: number): Promise<void> {
  const stream = Math.random() < streamRatio;
  const hangUp = Math.random() < hangupRatio;
  const chat = n % 2 === 0;
  const body = chat
    ? { messages: [{ role: "user", content: `client ${client} asks question ${n}` }], max_tokens: maxTokens, stream }
    : { prompt: `client ${client}, request ${n}:`, max_tokens: maxTokens, stream };
  const control = new AbortController();
  const started = performance.now();
  try {
    const res = await fetch(`${base}/v1/${chat ? "chat/completions" : "completions"}`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(body),
      signal: control.signal,
    });
    if (hangUp) {
      control.abort();
      count("hung_up", 0, null);
      return;
    }
    const text = await res.text();
    let tokens = 0;
    if (res.status === 200) {
      tokens = stream ? (text.match(/^data: \{/gm)?.length ?? 0) : JSON.parse(text).usage?.completion_tokens ?? 0;
      if (stream && text.includes('"error"')) {
        count("stream_error", tokens, null);
        return;
      }
    }
    count(String(res.status), tokens, performance.now() - started);
  } catch (err) {
    count(hangUp ? "hung_up" : `fetch_error:${(err as Error).name}`, 0, null);
  }
}

async function client(i: number): Promise<void> {
  for (let n = 0; performance.now() < deadline; n++) await oneRequest(i, n);
}

function percentile(values: number[], p: number): number {
  if (values.length === 0) return 0;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

const mb = (bytes: number) => round(bytes / 2 ** 20, 1);
const started = performance.now();
const rssStart = process.memoryUsage().rss;
let rssPeak = rssStart;
const line = (what: string, figures: Record<string, unknown>) =>
  console.log(JSON.stringify({ what, runtime: runtimeName(), version: runtimeVersion(), device, ...figures, load_average: loadAverage() }));

const reporter = setInterval(() => {
  const memory = process.memoryUsage();
  rssPeak = Math.max(rssPeak, memory.rss);
  const stats = served.engine.stats();
  line("soak_interval", {
    t_s: round((performance.now() - started) / 1000, 1),
    requests_per_s: round(interval.requests / intervalS),
    tokens_per_s: round(interval.tokens / intervalS),
    statuses: interval.byStatus,
    latency_ms_p50: round(median(interval.latenciesMs.length ? interval.latenciesMs : [0])),
    rss_mb: mb(memory.rss),
    heap_used_mb: mb(memory.heapUsed),
    running: stats.running,
    waiting: stats.waiting + stats.held,
    prefix_cache_blocks: stats.cache.blocks,
    policy_version: served.engine.policyVersion,
  });
  interval = fresh();
}, intervalS * 1000);

let refits = 0;
const refitter = refitEveryS > 0
  ? setInterval(() => {
    refits++;
    void served.control.updateWeights(weights[refits % 2], "pause").catch((err) => console.error(`refit failed: ${err}`));
  }, refitEveryS * 1000)
  : null;

await Promise.all(Array.from({ length: clients }, (_, i) => client(i)));
clearInterval(reporter);
if (refitter) clearInterval(refitter);
await served.engine.idle();
const rssEnd = process.memoryUsage().rss;
const seconds = (performance.now() - started) / 1000;
line("soak_summary", {
  clients,
  duration_s: round(seconds, 1),
  max_tokens: maxTokens,
  requests: all.requests,
  requests_per_s: round(all.requests / seconds),
  tokens_per_s: round(all.tokens / seconds),
  statuses: all.byStatus,
  latency_ms_p50: round(percentile(all.latenciesMs, 50)),
  latency_ms_p95: round(percentile(all.latenciesMs, 95)),
  latency_ms_p99: round(percentile(all.latenciesMs, 99)),
  weight_updates: refits,
  rss_start_mb: mb(rssStart),
  rss_end_mb: mb(rssEnd),
  rss_peak_mb: mb(Math.max(rssPeak, rssEnd)),
  engine_running_after: served.engine.stats().running,
  prefix_refs_after: served.engine.cache.totalRefs,
});
await server.shutdown(5_000);
process.exit(0);
