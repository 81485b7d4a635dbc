/**
 * Chaos: nothing lost under disconnects, refits, overload, bad input and shutdown. Starts a server as a child
 * process (or takes --url) and, for --duration seconds, runs at once: N clients over chat, completions and
 * Responses (streamed or not, n 1..4, log-probabilities on; 30% of streams hang up midway), weight updates every
 * 10-20 s in the modes finish, abort and pause between two weight folders, a storm of malformed requests, slow
 * clients (dribbled bodies, slow readers) and a probe request every second. Then: the gauges must fall to 0,
 * seeded requests must give what they gave on the same weights before (and on a fresh server), and a SIGTERM with
 * requests in flight must lose none of them. Prints one JSON line per scenario and a summary line; exits 1 on any
 * violation.
 * Run: node --import tsx bench/chaos.ts [--duration 60] [--clients 48] [--seed 1] [--refits on|off]
 *      [--server-runtime node|deno|bun] [--model DIR] [--refit-weights DIR] [--url URL] [--out FILE]
 *      [--hang-timeout 120] [--max-tokens 24] [--server-log FILE] [-- extra server flags]
 * (or deno run -A bench/chaos.ts, bun bench/chaos.ts). The server gets `--device cpu --max-queue 64` unless the
 * extra flags say otherwise.
 */
import * as fs from "node:fs";
import * as os from "node:os";
import process from "node:process";
import { z } from "zod";
import { defaultCacheDir } from "../src/model/builtin.ts";
import { type RuntimeName, runtimeName, runtimeVersion } from "../src/runtime/detect.ts";
import { programArgs } from "../src/runtime/process.ts";
import { runLoad } from "./chaos/load.ts";
import { runRefits, SeedBook } from "./chaos/refits.ts";
import { openaiClient } from "./chaos/requests.ts";
import { ServerProcess } from "./chaos/server.ts";
import { runShutdown } from "./chaos/shutdown.ts";
import { runProber, runSlowClients, Spans } from "./chaos/slow.ts";
import { runStorm } from "./chaos/storm.ts";
import { Tally } from "./chaos/tally.ts";
import { gaugesSettle, RssWatch } from "./chaos/watch.ts";
import { otherWeights, servedWeights } from "./chaos/weights.ts";
import { benchFlags, intFlag, numberFlag } from "./lib/flags.ts";

const ChaosFlags = z.object({
  duration: numberFlag(60).describe("seconds of the steady phase"),
  clients: intFlag(48).describe("clients over chat, completions and Responses"),
  seed: numberFlag(1).describe("seed of the load, the storm and the slow clients"),
  refits: z.enum(["on", "off"]).default("on").describe("weight updates during the steady phase"),
  hangTimeout: numberFlag(120).describe("seconds after which a request counts as hung"),
  maxTokens: intFlag(24).describe("max_tokens of the load's requests"),
  url: z.string().optional().describe("a running server to test instead of starting one"),
  out: z.string().optional().describe("a file the JSON lines are appended to as well"),
  serverRuntime: z.enum(["node", "deno", "bun"]).default(runtimeName()).describe("the runtime the server runs on"),
  cacheDir: z.string().default(defaultCacheDir(process.env)).describe("the server's cache directory"),
  model: z.string().optional().describe("model directory (default: the built-in tiny model)"),
  refitWeights: z.string().optional().describe("the other weights refits switch to (default: built beside the model)"),
  serverLog: z.string().optional().describe("a file the server's log is appended to"),
});

// After `--`: flags for the server.
const args = programArgs();
const dash = args.indexOf("--");
const serverExtra = dash >= 0 ? args.slice(dash + 1) : [];
const flags = benchFlags(
  ChaosFlags,
  "Chaos: nothing lost under disconnects, refits, overload, bad input and shutdown.\n" +
    "Run: node --import tsx bench/chaos.ts [flags] [-- extra server flags]",
  { argv: dash >= 0 ? args.slice(0, dash) : args },
);
const { clients, seed, maxTokens, cacheDir } = flags;
const durationS = flags.duration;
const refits = flags.refits !== "off";
const hangMs = flags.hangTimeout * 1000;
const url = flags.url ?? "";
const outPath = flags.out ?? "";
const serverRuntime: RuntimeName = flags.serverRuntime;
const model = flags.model || null;
const round = (value: number, digits = 1) => Number(value.toFixed(digits));
const started = performance.now();
const clientCpuS = () => {
  const usage = process.cpuUsage();
  return (usage.user + usage.system) / 1e6;
};

// The whole run is bounded: steady phase, draining (one hang timeout), refit waits, two server starts and a shutdown.
const watchdogMs = (durationS + 600) * 1000 + hangMs * 4;
const watchdog = setTimeout(() => {
  console.error(`chaos: still running after ${watchdogMs / 1000} s; giving up`);
  server?.child.kill("SIGKILL");
  process.exit(3);
}, watchdogMs);

const withDefault = (flags: string[], name: string, value: string) => flags.includes(name) ? [] : [name, value];
const serverFlags = (modelDir: string | null) => [
  "--port",
  "0",
  "--host",
  "127.0.0.1",
  ...withDefault(serverExtra, "--device", "cpu"),
  ...withDefault(serverExtra, "--max-queue", "64"),
  ...(modelDir ? ["--model", modelDir] : []),
  ...serverExtra,
];

let server: ServerProcess | null = null;
const tally = new Tally();
let modelName = model ?? "tiny";
const line = (what: string, figures: Record<string, unknown>) => {
  const record = {
    what,
    runtime: runtimeName(),
    version: runtimeVersion(),
    server_runtime: url ? null : serverRuntime,
    backend: serverExtra.includes("--device") ? serverExtra[serverExtra.indexOf("--device") + 1] : "cpu",
    model: modelName,
    ...figures,
  };
  console.log(JSON.stringify(record));
  if (outPath) fs.appendFileSync(outPath, JSON.stringify(record) + "\n");
};

try {
  let base = url.replace(/\/$/, "");
  if (!base) {
    console.error(`chaos: starting the server on ${serverRuntime}`);
    server = await ServerProcess.start(serverRuntime, serverFlags(model), {
      env: { GYM_EDGE_CACHE: cacheDir },
      logPath: flags.serverLog || undefined,
    });
    base = server.url;
  }
  const card = (await (await fetch(`${base}/v1/models`)).json()).data[0];
  const maxModelLen: number = card.max_model_len;
  modelName = model ?? card.id;
  // The folder the server serves: ours, or (with --url) the root its model card names.
  const served = url && !model ? card.root : await servedWeights(model, cacheDir);
  const other = refits ? await otherWeights(served, cacheDir, flags.refitWeights || null) : null;
  const startVersion: number = (await (await fetch(`${base}/version`)).json()).policy_version;
  const client = openaiClient(base, hangMs);
  const book = new SeedBook();
  await book.check(client, tally, served, "right after start", hangMs);
  console.error(
    `chaos: ${base} serves ${modelName} (${served}); steady phase of ${durationS} s with ${clients} clients`,
  );

  const steadyStart = performance.now();
  const deadline = steadyStart + durationS * 1000;
  const rss = RssWatch.of(base, server ? () => server!.rssMb() : null).start(1000);
  const spans = { slow: new Spans(), refits: new Spans() };
  const [, storm, slow, probes, refitRun] = await Promise.all([
    runLoad(client, tally, { clients, seed, deadline, hangMs, maxTokens, hangUpShare: 0.3 }),
    runStorm(base, tally, { workers: 2, seed, deadline, hangMs, maxModelLen }),
    runSlowClients(base, client, tally, spans.slow, { seed, deadline, hangMs, cycleS: 30 }),
    runProber(client, tally, spans, { deadline, hangMs, everyMs: 1000 }),
    refits
      ? runRefits(base, client, tally, book, spans.refits, {
        weights: [served, other],
        seed,
        deadline,
        hangMs,
        everyS: [10, 20],
        startVersion,
        seededBudgetMs: 15_000,
      })
      : Promise.resolve({ records: [], version: startVersion, weights: served }),
  ]);
  rss.stop();
  const steadyS = (performance.now() - steadyStart) / 1000;

  const gauges = await gaugesSettle(base, 10_000);
  if (!gauges.settled) {
    tally.fail("gauges_not_zero", `running ${gauges.running}, waiting ${gauges.waiting} 10 s after the load stopped`);
  }
  await book.check(client, tally, refitRun.weights, "after the load", hangMs);

  const percentile = (xs: number[], p: number) =>
    xs.length ? round([...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor(p * xs.length))], 0) : null;
  // Slow clients must not hold the others up: probes beside them take about what quiet ones take (medians, with
  // enough of each; probes that overlapped a refit are left out, as a finish-mode refit holds new requests).
  const quietP50 = percentile(probes.quiet, 0.5);
  const slowP50 = percentile(probes.slow, 0.5);
  const stallMs = quietP50 === null ? null : 2 * quietP50 + 2000;
  if (
    stallMs !== null && slowP50 !== null && probes.quiet.length >= 3 && probes.slow.length >= 3 && slowP50 > stallMs
  ) {
    tally.fail("probe_stall", `probes beside slow clients took ${slowP50} ms (median), quiet ones ${quietP50} ms`);
  }
  const rssFigures = rss.figures();
  if (durationS >= 300 && (rssFigures.rss_growth_pct ?? 0) > 10) {
    tally.fail("rss_growth", `RSS grew ${rssFigures.rss_growth_pct}% over the steady phase`);
  }

  const serverCpuS = server?.cpuSeconds() ?? null;
  let shutdown: Record<string, unknown> | null = null;
  let fresh: Record<string, unknown> | null = null;
  if (server) {
    shutdown = await runShutdown(server, client, tally, { seed, hangMs, inFlight: 12 });
    // A fresh server on the other weights must give what the refitted one gave on them.
    if (other && book.references.has(other)) {
      const before = book.compared;
      const second = await ServerProcess.start(serverRuntime, serverFlags(other), {
        env: { GYM_EDGE_CACHE: cacheDir },
      });
      await book.check(openaiClient(second.url, hangMs), tally, other, "fresh server on the other weights", hangMs);
      await second.stop(30_000);
      fresh = { weights: other, compared: book.compared - before };
    }
  }

  line("chaos_load", { clients, hang_up_share: 0.3, max_tokens: maxTokens, ...tally.scenario("load").figures() });
  line("chaos_storm", { ...storm, ...tally.scenario("storm").figures() });
  const latency = (xs: number[]) => ({
    n: xs.length,
    p50_ms: percentile(xs, 0.5),
    p95_ms: percentile(xs, 0.95),
    max_ms: xs.length ? round(Math.max(...xs), 0) : null,
  });
  line("chaos_slow", {
    ...slow,
    ...tally.scenario("slow").figures(),
    probe_quiet: latency(probes.quiet),
    probe_beside_slow_clients: latency(probes.slow),
    probe_during_refits: latency(probes.refit),
    stall_threshold_ms: stallMs,
    stalled: (tally.checks.probe_stall ?? 0) > 0,
  });
  line("chaos_refits", {
    refits: refitRun.records.length,
    records: refitRun.records,
    failed: tally.checks.refit_failed ?? 0,
  });
  line("chaos_seeds", {
    references: book.references.size,
    compared: book.compared,
    mismatches: book.mismatches,
    skipped_checks: book.skipped,
    max_logprob_diff: book.maxLogprobDiff,
    fresh_server: fresh,
    ...tally.scenario("seeds").figures(),
  });
  line("chaos_gauges", gauges);
  line("chaos_rss", {
    source: server ? "/proc VmRSS" : "process_resident_memory_bytes",
    samples: rss.samples.length,
    ...rssFigures,
  });
  if (shutdown) line("chaos_shutdown", { ...shutdown, ...tally.scenario("shutdown").figures() });

  const total = tally.total.figures();
  line("chaos", {
    duration_s: durationS,
    steady_s: round(steadyS),
    run_s: round((performance.now() - started) / 1000),
    clients,
    seed,
    refits: refitRun.records.length,
    ...total,
    seed_mismatch: book.mismatches,
    gauges_back_to_zero: gauges.settled,
    ...rssFigures,
    checks_failed: tally.checks,
    violations: tally.violations,
    examples: tally.examples,
    // 5xx request lines in the server's log, seen by a client or not (one that hung up midway is not counted above).
    server_5xx_logged: server?.logged5xx ?? null,
    server_error_lines: server?.errorLines.slice(0, 40) ?? null,
    server_cpu_s: serverCpuS === null ? null : round(serverCpuS),
    client_cpu_s: round(clientCpuS()),
    client_rss_mb: round(process.memoryUsage().rss / 2 ** 20),
    cores: os.cpus().length,
    load_average: os.loadavg().map((v) => round(v, 2)),
  });
  if (server && server.errorLines.length > 0) {
    console.error(`chaos: the server's error lines:\n${server.errorLines.join("\n")}`);
  }
  clearTimeout(watchdog);
  process.exit(tally.violations > 0 ? 1 : 0);
} catch (err) {
  console.error(`chaos: ${err instanceof Error ? err.stack : String(err)}`);
  if (server?.running) await server.stop(10_000, "SIGKILL");
  process.exit(2);
}
