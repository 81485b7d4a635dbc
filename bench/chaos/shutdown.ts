/**
 * Graceful shutdown under load: requests in flight when SIGTERM arrives must still get their answer (or a
 * retriable error), requests sent while it drains get 503 with Retry-After (or find the port closed once it is),
 * and the process exits 0.
 */
import type OpenAI from "openai";
import { Rng } from "../../src/engine/rng.ts";
import { send, wellFormed } from "./requests.ts";
import type { ServerProcess } from "./server.ts";
import type { Tally } from "./tally.ts";
import { metricValue } from "./watch.ts";

/** Waits (up to `withinMs`) until the engine holds at least `sequences` sequences, running or waiting. */
async function engineHolds(base: string, sequences: number, withinMs: number): Promise<number> {
  const deadline = performance.now() + withinMs;
  let held = 0;
  while (performance.now() < deadline) {
    const text = await fetch(`${base}/metrics`).then((r) => r.text(), () => "");
    held = (metricValue(text, "vllm:num_requests_running") ?? 0) +
      (metricValue(text, "vllm:num_requests_waiting") ?? 0);
    if (held >= sequences) break;
    await new Promise((r) => setTimeout(r, 50));
  }
  return held;
}

export async function runShutdown(
  server: ServerProcess,
  client: OpenAI,
  tally: Tally,
  options: { seed: number; hangMs: number; inFlight: number },
) {
  const rng = Rng.fromSeed(options.seed * 17 + 3);
  // Long enough to be mid-generation when the signal comes.
  const inFlight = Array.from({ length: options.inFlight }, () => {
    const request = wellFormed(rng, 8);
    const length = request.asked.route === "responses" ? { max_output_tokens: 24 } : { max_tokens: 24 };
    return { ...request, body: { ...request.body, ...length, ignore_eos: true } };
  });
  const answers = inFlight.map((request) => send(client, request, { hangMs: options.hangMs }));
  // SIGTERM once most requests are in the engine (or after 5 s).
  const sequences = inFlight.reduce((sum, r) => sum + r.asked.choices, 0);
  const held = await engineHolds(server.url, Math.ceil(sequences * 0.75), 5_000);
  const signalledAt = performance.now();
  const stopped = server.stop(options.hangMs);
  await new Promise((r) => setTimeout(r, 100));
  const late = await Promise.all(
    Array.from({ length: 4 }, () => send(client, wellFormed(rng, 8), { hangMs: options.hangMs })),
  );
  const after = (sent: { startedAt: number; ms: number }) =>
    `ended ${Math.round(sent.startedAt + sent.ms - signalledAt)} ms after SIGTERM`;
  for (const [i, sent] of (await Promise.all(answers)).entries()) {
    const what = `${inFlight[i].asked.route}${inFlight[i].stream ? " stream" : ""}`;
    tally.record("shutdown", sent.outcome, `in flight at SIGTERM (${what}), ${after(sent)}: ${sent.detail}`);
  }
  let lateRefused = 0;
  for (const sent of late) {
    // Once the port is closed a new connection is refused: the server said it was going away, nothing was lost.
    if (sent.outcome === "connection_error" && /ECONNREFUSED|Connection refused|ConnectionRefused/i.test(sent.detail)) {
      lateRefused++;
    } else if (sent.outcome !== "ok") {
      tally.record("shutdown", sent.outcome, `sent while draining, ${after(sent)}: ${sent.detail}`);
    } else tally.record("shutdown", "ok");
  }
  const { code, signal, graceful } = await stopped;
  const exitMs = Math.round(performance.now() - signalledAt);
  if (!graceful || code !== 0) {
    tally.fail(
      "shutdown_exit",
      `exit code ${code}${signal ? `, ended by ${signal}` : ""}${
        graceful ? "" : " (killed: no exit in time)"
      } after ${exitMs} ms`,
    );
  }
  return {
    in_flight: options.inFlight,
    sequences_held_at_sigterm: held,
    late: late.length,
    late_refused: lateRefused,
    exit_code: code,
    exit_signal: signal,
    exit_ms: exitMs,
  };
}
