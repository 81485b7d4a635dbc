/**
 * The malformed storm: requests a client gets wrong in every way (bad JSON, wrong types, values out of range, token
 * ids outside the vocabulary, prompts longer than the context, unknown roles, huge n, unknown routes and methods),
 * sent raw while the load runs. Each must get a 4xx in OpenAI's error shape: never a 5xx, never a 2xx.
 */
import { Rng } from "../../src/engine/rng.ts";
import type { Outcome, Tally } from "./tally.ts";

/** One malformed request: route, method (POST by default) and a body, raw text or a value sent as JSON. */
interface Malformed {
  name: string;
  path: string;
  method?: string;
  body?: string | Uint8Array<ArrayBuffer> | Record<string, unknown> | unknown[] | null;
}

const user = [{ role: "user", content: "hi" }];
const chat = (fields: Record<string, unknown>): Record<string, unknown> => ({
  messages: user,
  max_tokens: 2,
  ...fields,
});
const completion = (fields: Record<string, unknown>): Record<string, unknown> => ({
  prompt: "hi",
  max_tokens: 2,
  ...fields,
});
const response = (fields: Record<string, unknown>): Record<string, unknown> => ({
  input: "hi",
  max_output_tokens: 2,
  ...fields,
});

/** The storm's cases; `maxModelLen` sizes the prompts that do not fit. */
export function malformedCases(maxModelLen: number): Malformed[] {
  const C = "/v1/chat/completions";
  const P = "/v1/completions";
  const R = "/v1/responses";
  const tooLong = Array.from({ length: maxModelLen + 16 }, (_, i) => 1000 + (i % 5000));
  return [
    { name: "truncated JSON", path: C, body: '{"messages": [{"role": "user", "content": "hi"' },
    { name: "not JSON", path: P, body: "prompt=hi&max_tokens=2" },
    { name: "empty body", path: C, body: "" },
    { name: "JSON array body", path: C, body: [1, 2, 3] },
    { name: "JSON null body", path: P, body: null },
    { name: "invalid UTF-8", path: C, body: new Uint8Array([0x7b, 0x22, 0xff, 0xfe, 0x22, 0x3a, 0x31, 0x7d]) },
    { name: "messages not a list", path: C, body: { messages: "hi" } },
    { name: "no messages", path: C, body: { max_tokens: 2 } },
    { name: "unknown role", path: C, body: chat({ messages: [{ role: "wizard", content: "hi" }] }) },
    { name: "content of a wrong type", path: C, body: chat({ messages: [{ role: "user", content: { text: 5 } }] }) },
    { name: "temperature a string", path: C, body: chat({ temperature: "hot" }) },
    { name: "temperature negative", path: P, body: completion({ temperature: -1 }) },
    { name: "top_p zero", path: C, body: chat({ top_p: 0 }) },
    { name: "max_tokens zero", path: P, body: completion({ max_tokens: 0 }) },
    { name: "max_tokens fractional", path: C, body: chat({ max_tokens: 1.5 }) },
    { name: "huge n", path: C, body: chat({ n: 1_000_000 }) },
    { name: "n zero", path: P, body: completion({ n: 0 }) },
    { name: "n greedy above one", path: P, body: completion({ n: 4, temperature: 0 }) },
    { name: "top_logprobs above 20", path: C, body: chat({ logprobs: true, top_logprobs: 21 }) },
    { name: "completions logprobs above 20", path: P, body: completion({ logprobs: 50 }) },
    { name: "token id outside the vocabulary", path: P, body: completion({ prompt: [9707, 1_000_000_000] }) },
    { name: "negative token id", path: P, body: completion({ prompt: [-1, 5] }) },
    { name: "fractional token id", path: P, body: completion({ prompt: [1.5] }) },
    { name: "empty prompt list", path: P, body: completion({ prompt: [] }) },
    { name: "prompt ids longer than the context", path: P, body: completion({ prompt: tooLong }) },
    {
      name: "chat longer than the context",
      path: C,
      body: chat({ messages: [{ role: "user", content: "hello ".repeat(maxModelLen + 64) }] }),
    },
    { name: "stop_token_ids negative", path: C, body: chat({ stop_token_ids: [-3] }) },
    { name: "logit_bias of strings", path: P, body: completion({ logit_bias: { "5": "up" } }) },
    { name: "seed a string", path: C, body: chat({ seed: "lucky" }) },
    { name: "stream a string", path: C, body: chat({ stream: "yes" }) },
    { name: "stream with bad sampling", path: P, body: completion({ stream: true, top_k: -5 }) },
    {
      name: "required_prefix_token_ids outside the vocabulary",
      path: C,
      body: chat({ required_prefix_token_ids: [2 ** 31] }),
    },
    { name: "unknown model", path: C, body: chat({ model: "no-such-model" }) },
    { name: "response_format json_schema", path: C, body: chat({ response_format: { type: "json_schema" } }) },
    { name: "tool_choice unknown", path: C, body: chat({ tool_choice: "sometimes" }) },
    { name: "suffix", path: P, body: completion({ suffix: "end" }) },
    { name: "responses input a number", path: R, body: response({ input: 42 }) },
    { name: "responses empty input list", path: R, body: response({ input: [] }) },
    { name: "responses max_output_tokens negative", path: R, body: response({ max_output_tokens: -1 }) },
    { name: "responses previous_response_id", path: R, body: response({ previous_response_id: "resp_x" }) },
    { name: "responses unknown role", path: R, body: response({ input: [{ role: "oracle", content: "hi" }] }) },
    { name: "tokenize prompt a number", path: "/tokenize", body: { prompt: 5 } },
    { name: "detokenize id outside the vocabulary", path: "/detokenize", body: { tokens: [10_000_000] } },
    { name: "update_weights without a path", path: "/update_weights", body: {} },
    { name: "update_weights unknown mode", path: "/update_weights", body: { path: "/nonexistent", mode: "explode" } },
    { name: "update_weights path a number", path: "/update_weights", body: { path: 5 } },
    { name: "update_weights path missing on disk", path: "/update_weights", body: { path: "/nonexistent/weights" } },
    { name: "top_k a string", path: P, body: completion({ top_k: "ten" }) },
    { name: "min_p above one", path: C, body: chat({ min_p: 2 }) },
    { name: "unknown route", path: "/v1/nothing-here", body: {} },
    { name: "wrong method", path: C, method: "GET" },
  ];
}

const errorShaped = (body: unknown): boolean => {
  const error = (body as { error?: Record<string, unknown> } | null)?.error;
  return !!error && typeof error.message === "string" && typeof error.type === "string" &&
    "param" in error && "code" in error && (error.param === null || typeof error.param === "string") &&
    (error.code === null || typeof error.code === "string");
};

/** Sends one malformed request raw and sorts its answer. */
export async function sendMalformed(
  base: string,
  item: Malformed,
  hangMs: number,
): Promise<{ outcome: Outcome; detail: string }> {
  const body = item.body === undefined
    ? undefined
    : typeof item.body === "string" || item.body instanceof Uint8Array
    ? item.body
    : JSON.stringify(item.body);
  try {
    const res = await fetch(base + item.path, {
      method: item.method ?? "POST",
      headers: { "content-type": "application/json" },
      body,
      signal: AbortSignal.timeout(hangMs),
    });
    const text = await res.text();
    const where = `${item.name}: ${res.status} ${text.slice(0, 200)}`;
    // Overload's answer (queue full) may come before validation; with Retry-After it is a clean refusal too.
    if (res.status === 503 && res.headers.get("retry-after")) return { outcome: "unavailable_503", detail: where };
    if (res.status >= 500) return { outcome: "error_5xx", detail: where };
    if (res.status < 400) {
      return { outcome: res.status < 300 ? "malformed_accepted" : "bad_error_shape", detail: where };
    }
    let parsed: unknown = null;
    try {
      parsed = JSON.parse(text);
    } catch { /* not JSON: the shape check below fails */ }
    return errorShaped(parsed) ? { outcome: "refused_4xx", detail: "" } : { outcome: "bad_error_shape", detail: where };
  } catch (err) {
    const timeout = (err as Error).name === "TimeoutError";
    return { outcome: timeout ? "hang" : "connection_error", detail: `${item.name}: ${(err as Error).message}` };
  }
}

/** `workers` storm clients sending random cases until the deadline; every case is sent at least once. */
export async function runStorm(
  base: string,
  tally: Tally,
  options: { workers: number; seed: number; deadline: number; hangMs: number; maxModelLen: number },
) {
  const cases = malformedCases(options.maxModelLen);
  const seen = new Map<string, number>();
  const one = async (worker: number) => {
    const rng = Rng.fromSeed(options.seed * 7919 + worker);
    for (let i = worker; performance.now() < options.deadline || i < cases.length; i += options.workers) {
      const item = i < cases.length ? cases[i] : cases[Math.floor(rng.nextUniform() * cases.length)];
      const { outcome, detail } = await sendMalformed(base, item, options.hangMs);
      tally.record("storm", outcome, detail);
      seen.set(item.name, (seen.get(item.name) ?? 0) + 1);
      await new Promise((r) => setTimeout(r, 20 + Math.floor(rng.nextUniform() * 80)));
    }
  };
  await Promise.all(Array.from({ length: options.workers }, (_, i) => one(i)));
  return { cases: cases.length, kinds_sent: seen.size };
}
