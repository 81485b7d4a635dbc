/**
 * Well-formed requests and how they end: a seeded generator of chat, completions and Responses requests (streamed
 * or not, n 1..4 where the route has n, log-probabilities on), and one sender through the official `openai`
 * client (no retries, so that every answer is seen) that sorts each end into an outcome.
 */
import OpenAI from "openai";
import type { Rng } from "../../src/engine/rng.ts";
import { answerProblem, type Asked, type Json, StreamCheck } from "./shapes.ts";
import { isRetriableStreamError, type Outcome } from "./tally.ts";

/** A request ready to send, with what its answer must hold. */
export interface WellFormed {
  asked: Asked;
  body: Record<string, unknown>;
  stream: boolean;
}

/** How it ended. */
export interface Sent {
  outcome: Outcome;
  detail: string;
  /** The whole answer (not streamed), else null. */
  body: Json;
  versions: number[];
  startedAt: number;
  ms: number;
}

const WORDS = [
  "policy",
  "reward",
  "token",
  "river",
  "seven",
  "proof",
  "garden",
  "matrix",
  "quiet",
  "signal",
  "orbit",
  "lemon",
];

const int = (rng: Rng, lo: number, hi: number) => lo + Math.floor(rng.nextUniform() * (hi - lo + 1));
const chance = (rng: Rng, p: number) => rng.nextUniform() < p;
const words = (rng: Rng, count: number) =>
  Array.from({ length: count }, () => WORDS[int(rng, 0, WORDS.length - 1)]).join(" ");
const tokenIds = (rng: Rng, count: number) => Array.from({ length: count }, () => int(rng, 300, 150_000));

/** A random well-formed request: route, streaming, n, sampling and log-probability options drawn from `rng`. */
export function wellFormed(rng: Rng, maxTokens: number): WellFormed {
  const draw = rng.nextUniform();
  const route: Asked["route"] = draw < 0.45 ? "chat" : draw < 0.8 ? "completions" : "responses";
  const stream = chance(rng, 0.5);
  const n = route === "responses" ? 1 : int(rng, 1, 4);
  const greedy = n === 1 && chance(rng, 0.2);
  const topLogprobs = int(rng, 0, 3);
  const sampling: Record<string, unknown> = {
    temperature: greedy ? 0 : [1, 0.7, 1.2][int(rng, 0, 2)],
    ...(chance(rng, 0.5) ? { seed: int(rng, 0, 1_000_000) } : {}),
    ...(chance(rng, 0.2) ? { top_p: 0.9 } : {}),
    ...(chance(rng, 0.3) ? { ignore_eos: true } : {}),
  };
  const tokens = int(rng, 1, maxTokens);
  const returnTokenIds = route !== "responses" && chance(rng, 0.5);
  const includeUsage = stream && route !== "responses" && chance(rng, 0.5);
  const common = { ...sampling, stream, ...(includeUsage ? { stream_options: { include_usage: true } } : {}) };
  let body: Record<string, unknown>;
  let choices = n;
  if (route === "chat") {
    const messages = [
      ...(chance(rng, 0.3) ? [{ role: "system", content: words(rng, 6) }] : []),
      { role: "user", content: words(rng, chance(rng, 0.1) ? int(rng, 300, 1200) : int(rng, 2, 30)) },
      ...(chance(rng, 0.3)
        ? [{ role: "assistant", content: words(rng, 5) }, { role: "user", content: words(rng, 4) }]
        : []),
    ];
    body = {
      messages,
      n,
      max_tokens: tokens,
      logprobs: true,
      top_logprobs: topLogprobs,
      return_token_ids: returnTokenIds,
      ...common,
    };
  } else if (route === "completions") {
    // One prompt in ten is long, as a late turn of a rollout: its prefill spans several steps beside the decoding.
    const one = () =>
      chance(rng, 0.1)
        ? tokenIds(rng, int(rng, 300, 1500))
        : chance(rng, 0.5)
        ? words(rng, int(rng, 2, 40))
        : tokenIds(rng, int(rng, 2, 64));
    const prompt = chance(rng, 0.15) ? [tokenIds(rng, int(rng, 2, 20)), tokenIds(rng, int(rng, 2, 20))] : one();
    if (Array.isArray(prompt) && Array.isArray(prompt[0])) choices = n * prompt.length;
    body = { prompt, n, max_tokens: tokens, logprobs: topLogprobs, return_token_ids: returnTokenIds, ...common };
  } else {
    const input = chance(rng, 0.5)
      ? words(rng, int(rng, 2, 30))
      : [{ role: "user", content: words(rng, int(rng, 2, 20)) }];
    body = {
      input,
      max_output_tokens: tokens,
      top_logprobs: topLogprobs,
      ...(chance(rng, 0.3) ? { instructions: words(rng, 5) } : {}),
      ...common,
    };
  }
  return { asked: { route, choices, topLogprobs, returnTokenIds, includeUsage }, body, stream };
}

/** Options of one send. */
export interface SendOptions {
  /** No answer (or no end of stream) within this long is a hang. */
  hangMs: number;
  /** Hang up after this many chunks of a stream (null: read to the end). */
  hangUpAfter?: number | null;
  /** Wait this long before reading each next chunk: a slow reader. */
  chunkDelayMs?: number;
  /** Hang up when this fires (we stopped waiting: `hung_up`, not a hang). */
  giveUp?: AbortSignal;
}

// deno-lint-ignore no-explicit-any
function create(client: OpenAI, route: Asked["route"], body: any, signal: AbortSignal) {
  if (route === "chat") return client.chat.completions.create(body, { signal }).withResponse();
  if (route === "completions") return client.completions.create(body, { signal }).withResponse();
  return client.responses.create(body, { signal }).withResponse();
}

/** Sends `request` and sorts its end into an outcome (`hung_up` only when we hung up ourselves). */
export async function send(client: OpenAI, request: WellFormed, options: SendOptions): Promise<Sent> {
  const control = new AbortController();
  let timedOut = false;
  let hungUp = false;
  const timer = setTimeout(() => {
    timedOut = true;
    control.abort();
  }, options.hangMs);
  const onGiveUp = () => {
    hungUp = true;
    control.abort();
  };
  if (options.giveUp?.aborted) onGiveUp();
  options.giveUp?.addEventListener("abort", onGiveUp);
  const startedAt = performance.now();
  const end = (outcome: Outcome, detail = "", body: Json = null, versions: number[] = []): Sent => ({
    outcome,
    detail,
    body,
    versions,
    startedAt,
    ms: performance.now() - startedAt,
  });
  const check = new StreamCheck(request.asked);
  try {
    const { data } = await create(client, request.asked.route, request.body, control.signal);
    if (!request.stream) {
      const problem = answerProblem(data, request.asked);
      return end(problem ? "bad_shape" : "ok", problem ?? "", data, [(data as Json).policy_version]);
    }
    for await (const chunk of data as unknown as AsyncIterable<Json>) {
      const error = check.push(chunk);
      if (error) {
        return end(
          isRetriableStreamError(error) ? "retriable_abort" : "error_5xx",
          `stream error event: ${error}`,
          null,
          check.versions,
        );
      }
      if (options.hangUpAfter != null && check.chunks >= options.hangUpAfter) {
        hungUp = true;
        control.abort();
        return end("hung_up", "", null, check.versions);
      }
      if (options.chunkDelayMs) await new Promise((r) => setTimeout(r, options.chunkDelayMs));
    }
    if (hungUp) return end("hung_up", "", null, check.versions);
    if (timedOut) return end("hang", `no end of stream within ${options.hangMs} ms`, null, check.versions);
    const { truncated, problem } = check.end();
    return end(truncated ? "truncated" : problem ? "bad_shape" : "ok", problem ?? "", null, check.versions);
  } catch (err) {
    return end(...classify(err, timedOut, hungUp, options.hangMs), null, check.versions);
  } finally {
    clearTimeout(timer);
    options.giveUp?.removeEventListener("abort", onGiveUp);
  }
}

/** An error's message with those of its causes: a connection error says why only two or three causes down. */
function causes(err: unknown): string {
  const parts: string[] = [];
  for (
    let e = err as { message?: string; code?: string; cause?: unknown } | undefined, depth = 0;
    e && depth < 4;
    e = e.cause as typeof e, depth++
  ) {
    parts.push(`${e.message ?? String(e)}${e.code ? ` (${e.code})` : ""}`);
  }
  return parts.join(" <- ");
}

/** The outcome of a request that threw. */
function classify(err: unknown, timedOut: boolean, hungUp: boolean, hangMs: number): [Outcome, string] {
  if (timedOut) return ["hang", `no answer within ${hangMs} ms`];
  if (hungUp || err instanceof OpenAI.APIUserAbortError) return ["hung_up", ""];
  if (err instanceof OpenAI.APIConnectionError) return ["connection_error", causes(err)];
  if (err instanceof OpenAI.APIError) {
    const message = String(err.error?.message ?? err.message);
    if (err.status === undefined) {
      return isRetriableStreamError(message)
        ? ["retriable_abort", message]
        : ["error_5xx", `stream error event: ${message}`];
    }
    if (err.status === 503) {
      return err.headers?.get("retry-after")
        ? ["unavailable_503", message]
        : ["error_5xx", `503 without Retry-After: ${message}`];
    }
    if (err.status >= 500) return ["error_5xx", `${err.status}: ${message}`];
    return ["refused_valid", `${err.status}: ${message}`];
  }
  return ["connection_error", causes(err)];
}

/** The official client at `base`, with no retries and a timeout past the hang timeout (hangs are ours to see). */
export function openaiClient(base: string, hangMs: number): OpenAI {
  return new OpenAI({ baseURL: `${base}/v1`, apiKey: "chaos", maxRetries: 0, timeout: hangMs + 60_000 });
}
