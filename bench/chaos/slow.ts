/**
 * Slow clients and the probe that watches for stalls: request bodies dribbled a few bytes at a time over seconds
 * on a raw socket (some abandoned halfway, some malformed), streams read slowly, and meanwhile a small request
 * every second whose latency says whether everyone else was kept waiting.
 */
import { Buffer } from "node:buffer";
import * as net from "node:net";
import type OpenAI from "openai";
import { Rng } from "../../src/engine/rng.ts";
import { send } from "./requests.ts";
import type { Outcome, Tally } from "./tally.ts";

/** Time spans during which something was going on (slow clients, a refit), to sort probe latencies by. */
export class Spans {
  readonly #spans: [number, number][] = [];
  #open = 0;
  #openedAt = 0;

  begin(): void {
    if (this.#open++ === 0) this.#openedAt = performance.now();
  }

  end(): void {
    if (--this.#open === 0) this.#spans.push([this.#openedAt, performance.now()]);
  }

  /** Whether [from, to] overlaps a span (an open one included). */
  overlaps(from: number, to: number): boolean {
    if (this.#open > 0 && to >= this.#openedAt) return true;
    return this.#spans.some(([a, b]) => a <= to && from <= b);
  }
}

/** An HTTP/1.1 answer's body, de-chunked when sent chunked (chunk sizes count bytes, so this works on bytes). */
function httpBody(raw: Buffer): string {
  const split = raw.indexOf("\r\n\r\n");
  const head = raw.subarray(0, split).toString("latin1").toLowerCase();
  let body = raw.subarray(split + 4);
  if (!head.includes("transfer-encoding: chunked")) return body.toString("utf8");
  const parts: Buffer[] = [];
  while (body.length > 0) {
    const eol = body.indexOf("\r\n");
    const size = parseInt(body.subarray(0, eol).toString("latin1"), 16);
    if (!(size > 0)) break;
    parts.push(body.subarray(eol + 2, eol + 2 + size));
    body = body.subarray(eol + 2 + size + 2);
  }
  return Buffer.concat(parts).toString("utf8");
}

/**
 * POSTs `body` on a raw socket `pieceBytes` at a time every `intervalMs`; with `abandonAt` the socket is closed
 * once that many bytes are sent. Resolves with the answer's status and body (null status: no answer).
 */
export function dribble(
  base: string,
  path: string,
  body: string,
  options: { pieceBytes: number; intervalMs: number; abandonAt?: number; hangMs: number },
): Promise<{ status: number | null; body: string; error?: string }> {
  const url = new URL(base);
  const bytes = new TextEncoder().encode(body);
  return new Promise((resolve) => {
    const socket = net.createConnection({ host: url.hostname, port: Number(url.port) });
    const chunks: Buffer[] = [];
    let sent = 0;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const hang = setTimeout(() => finish("no answer within the hang timeout"), options.hangMs);
    const finish = (error?: string) => {
      clearTimeout(timer);
      clearTimeout(hang);
      socket.destroy();
      const raw = Buffer.concat(chunks);
      const status = /^HTTP\/1\.[01] (\d{3})/.exec(raw.subarray(0, 16).toString("latin1"));
      resolve({ status: status ? Number(status[1]) : null, body: status ? httpBody(raw) : "", error });
    };
    const next = () => {
      if (options.abandonAt !== undefined && sent >= options.abandonAt) return finish();
      if (sent >= bytes.length) return;
      socket.write(bytes.subarray(sent, sent + options.pieceBytes));
      sent += options.pieceBytes;
      timer = setTimeout(next, options.intervalMs);
    };
    socket.on("connect", () => {
      socket.write(
        `POST ${path} HTTP/1.1\r\nHost: ${url.host}\r\nContent-Type: application/json\r\n` +
          `Content-Length: ${bytes.length}\r\nConnection: close\r\n\r\n`,
      );
      next();
    });
    socket.on("data", (data: Buffer) => chunks.push(data));
    socket.on("end", () => finish());
    socket.on("error", (err) => finish(err.message));
  });
}

/** How one dribbled request ended, as an outcome (null: abandoned by us, nothing to judge). */
function dribbleOutcome(
  result: { status: number | null; body: string; error?: string },
  malformed: boolean,
): [Outcome, string] {
  const { status, body } = result;
  if (status === null) {
    return [result.error?.includes("hang") ? "hang" : "connection_error", result.error ?? "no status line"];
  }
  if (status === 503) return ["unavailable_503", ""];
  if (status >= 500) return ["error_5xx", `${status} ${body.slice(0, 200)}`];
  if (malformed) {
    return status >= 400 && body.includes('"error"')
      ? ["refused_4xx", ""]
      : ["malformed_accepted", `${status} ${body.slice(0, 200)}`];
  }
  if (status !== 200) return ["refused_valid", `${status} ${body.slice(0, 200)}`];
  try {
    const json = JSON.parse(body);
    return Array.isArray(json.choices) && json.choices.length === 1 && Number.isInteger(json.policy_version)
      ? ["ok", ""]
      : ["bad_shape", body.slice(0, 200)];
  } catch {
    return ["bad_shape", `not JSON: ${body.slice(0, 200)}`];
  }
}

export interface SlowOptions {
  seed: number;
  deadline: number;
  hangMs: number;
  /** Seconds of a cycle: slow clients run in its first half, the second half is quiet. */
  cycleS: number;
}

/** Runs slow clients in windows until the deadline; `spans` marks the windows. Returns counts of what was sent. */
export async function runSlowClients(base: string, client: OpenAI, tally: Tally, spans: Spans, options: SlowOptions) {
  const rng = Rng.fromSeed(options.seed * 31 + 7);
  const sent = { dribbled: 0, abandoned: 0, slow_readers: 0 };
  const valid = (i: number) =>
    JSON.stringify({ prompt: `slowly sent prompt number ${i}`, max_tokens: 4, seed: i, logprobs: 1 });
  const dribbler = async (i: number, kind: "valid" | "malformed" | "abandoned") => {
    const body = kind === "malformed" ? '{"prompt": "slow", "max_tokens": "many"}' : valid(i);
    const result = await dribble(base, "/v1/completions", body, {
      pieceBytes: 3,
      intervalMs: 150 + Math.floor(rng.nextUniform() * 150),
      abandonAt: kind === "abandoned" ? Math.floor(body.length / 2) : undefined,
      hangMs: options.hangMs,
    });
    sent.dribbled++;
    if (kind === "abandoned") {
      sent.abandoned++;
      return;
    }
    const [outcome, detail] = dribbleOutcome(result, kind === "malformed");
    tally.record("slow", outcome, `dribbled ${kind}: ${detail}`);
  };
  const slowReader = async (i: number) => {
    sent.slow_readers++;
    const request = {
      asked: { route: "chat" as const, choices: 1, topLogprobs: 5, returnTokenIds: false, includeUsage: false },
      body: {
        messages: [{ role: "user", content: `read me slowly ${i}` }],
        max_tokens: 32,
        ignore_eos: true,
        logprobs: true,
        top_logprobs: 5,
        stream: true,
      },
      stream: true,
    };
    const result = await send(client, request, { hangMs: options.hangMs, chunkDelayMs: 250 });
    tally.record("slow", result.outcome, `slow reader: ${result.detail}`);
    tally.checkVersions("slow", result.startedAt, result.versions);
  };
  for (let cycle = 0; performance.now() + options.cycleS * 500 < options.deadline; cycle++) {
    const windowEnd = performance.now() + options.cycleS * 500;
    spans.begin();
    await Promise.all([
      dribbler(cycle * 3, "valid"),
      dribbler(cycle * 3 + 1, "malformed"),
      dribbler(cycle * 3 + 2, "abandoned"),
      slowReader(cycle * 2),
      slowReader(cycle * 2 + 1),
    ]);
    spans.end();
    const quietFor = Math.max(0, windowEnd - performance.now()) + options.cycleS * 500;
    await new Promise((r) => setTimeout(r, Math.min(quietFor, Math.max(0, options.deadline - performance.now()))));
  }
  return sent;
}

/** Probe latencies, by what else was going on when each ran. */
export interface ProbeLatencies {
  quiet: number[];
  slow: number[];
  refit: number[];
}

/**
 * Sends a one-token request every `everyMs` until the deadline (at most 8 in flight: under overload each waits its
 * turn) and sorts its latency by whether slow clients or a refit ran meanwhile.
 */
export async function runProber(
  client: OpenAI,
  tally: Tally,
  spans: { slow: Spans; refits: Spans },
  options: { deadline: number; hangMs: number; everyMs: number },
) {
  const latencies: ProbeLatencies = { quiet: [], slow: [], refit: [] };
  const inFlight = new Set<Promise<void>>();
  const probe = async (i: number) => {
    const request = {
      asked: { route: "completions" as const, choices: 1, topLogprobs: 0, returnTokenIds: false, includeUsage: false },
      body: { prompt: `probe ${i}`, max_tokens: 1, logprobs: 0 },
      stream: false,
    };
    const result = await send(client, request, { hangMs: options.hangMs });
    tally.record("probe", result.outcome, result.detail);
    tally.checkVersions("probe", result.startedAt, result.versions);
    // By what was going on when the probe was sent: sorting by overlap with its whole wait would put every slow
    // probe beside slow clients (a long wait overlaps more), so under overload "quiet" would mean "fast".
    const at = result.startedAt;
    const bucket = spans.refits.overlaps(at, at) ? "refit" : spans.slow.overlaps(at, at) ? "slow" : "quiet";
    if (result.outcome === "ok") latencies[bucket].push(result.ms);
  };
  for (let i = 0; performance.now() < options.deadline; i++) {
    if (inFlight.size < 8) {
      const running: Promise<void> = probe(i).finally(() => inFlight.delete(running));
      inFlight.add(running);
    }
    await new Promise((r) => setTimeout(r, options.everyMs));
  }
  await Promise.all(inFlight);
  return latencies;
}
