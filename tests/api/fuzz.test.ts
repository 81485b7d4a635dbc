/**
 * Table-driven fuzzing of every route of a real server on loopback: malformed and non-object JSON, wrong types,
 * huge and negative numbers, token ids outside the vocabulary, empty and odd messages, unknown roles, bad UTF-8,
 * a 10 MB body and one over the body limit. No answer may be a 5xx, every error is OpenAI's JSON shape with a message
 * about the request (never the schema library's wording), and the server serves normally afterwards.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { ErrorBody } from "../../src/api/errors.ts";
import { ServerConfig } from "../../src/config.ts";
import { silentLogger } from "../../src/log.ts";
import { type ServedModel, type StartedServer, startServer } from "../../src/server.ts";
import { testCacheDir } from "../support/served.ts";

const SLOW = { timeout: 300_000 };

let server: StartedServer;
let served: ServedModel;
let base: string;

before(async () => {
  // A short context keeps any request the fuzzer makes valid by chance cheap to serve.
  const config = ServerConfig.parse({ port: 0, device: "cpu", cacheDir: testCacheDir(), maxModelLen: 64, maxNumSeqs: 4, logRequests: false });
  server = await startServer(config, silentLogger);
  served = await server.ready;
  base = `http://127.0.0.1:${server.port}`;
});
after(() => server.close());

const encoder = new TextEncoder();

/** Field values of every wrong kind: types, magnitudes, signs, ids outside the vocabulary, odd strings. */
const VALUES: unknown[] = [
  null,
  true,
  "x",
  "",
  -1,
  0,
  1.5,
  1e308,
  -1e308,
  2 ** 63,
  [],
  {},
  ["a"],
  [-1],
  [1e9],
  [0.5],
  { a: 1 },
  "\ud800",
  "a".repeat(5000),
];

/** Each generating route: a valid body with small limits, and the fields worth breaking besides its own. */
const GENERATING: Record<string, { body: Record<string, unknown>; fields: string[] }> = {
  "/v1/chat/completions": {
    body: { messages: [{ role: "user", content: "hi" }], max_tokens: 2 },
    fields: ["messages", "model", "max_tokens", "max_completion_tokens", "n", "temperature", "top_p", "top_k", "min_p", "seed",
      "stop", "stop_token_ids", "logit_bias", "logprobs", "top_logprobs", "min_tokens", "presence_penalty", "repetition_penalty",
      "tools", "tool_choice", "stream", "stream_options", "response_format", "chat_template_kwargs", "required_prefix_token_ids",
      "logprobs_mode", "return_token_ids", "priority", "cache_salt"],
  },
  "/v1/completions": {
    body: { prompt: "hi", max_tokens: 2 },
    fields: ["prompt", "model", "max_tokens", "n", "temperature", "top_k", "seed", "stop", "logprobs", "echo", "logit_bias",
      "stream", "ignore_eos", "min_tokens", "frequency_penalty", "suffix", "add_special_tokens", "priority", "cache_salt"],
  },
  "/v1/responses": {
    body: { input: "hi", max_output_tokens: 2 },
    fields: ["input", "model", "max_output_tokens", "temperature", "top_p", "instructions", "tools", "stream", "reasoning", "text",
      "priority", "cache_salt"],
  },
  "/tokenize": { body: { prompt: "hi" }, fields: ["prompt", "messages", "add_special_tokens", "tools", "add_generation_prompt"] },
  "/detokenize": { body: { tokens: [1, 2] }, fields: ["tokens"] },
  // vLLM's tokens-in / tokens-out routes; a dotted field is one inside an object of the body.
  "/inference/v1/generate": {
    body: { token_ids: [9707, 1879], sampling_params: { max_tokens: 2 } },
    fields: ["token_ids", "sampling_params", "model", "stream", "stream_options", "priority", "cache_salt", "request_id",
      "features", "kv_transfer_params", "sampling_params.n", "sampling_params.temperature", "sampling_params.top_p",
      "sampling_params.top_k", "sampling_params.seed", "sampling_params.max_tokens", "sampling_params.min_tokens",
      "sampling_params.stop", "sampling_params.stop_token_ids", "sampling_params.logprobs", "sampling_params.prompt_logprobs",
      "sampling_params.logit_bias", "sampling_params.best_of", "sampling_params.thinking_token_budget",
      "sampling_params.repetition_detection", "sampling_params.output_kind", "sampling_params.prompt_logprob_token_ids",
      "sampling_params.prompt_logprob_start"],
  },
  // SGLang's native generate.
  "/generate": {
    body: { input_ids: [9707, 1879], sampling_params: { max_new_tokens: 2 } },
    fields: ["input_ids", "text", "sampling_params", "rid", "stream", "return_logprob", "logprob_start_len", "top_logprobs_num",
      "return_text_in_logprobs", "image_data", "token_ids_logprob", "sampling_params.max_new_tokens", "sampling_params.n",
      "sampling_params.temperature", "sampling_params.top_k", "sampling_params.stop", "sampling_params.stop_token_ids",
      "sampling_params.sampling_seed", "sampling_params.no_stop_trim", "sampling_params.regex"],
  },
  "/v1/chat/completions/render": {
    body: { messages: [{ role: "user", content: "hi" }], max_tokens: 2 },
    fields: ["messages", "model", "tools", "tool_choice", "max_tokens", "seed", "logprobs", "top_logprobs", "stream",
      "required_prefix_token_ids", "chat_template_kwargs", "response_format"],
  },
  "/v1/chat/completions/derender": {
    body: {
      generate_response: { request_id: "g", choices: [{ index: 0, token_ids: [9707], finish_reason: "length" }] },
      chat_request: { messages: [{ role: "user", content: "hi" }] },
    },
    fields: ["generate_response", "chat_request", "prompt_tokens", "stream", "model", "generate_response.choices",
      "generate_response.request_id", "chat_request.tools", "chat_request.tool_choice"],
  },
  // Never valid weights, whatever the mutation: nothing gets loaded.
  "/update_weights": {
    body: { update_info: { path: "/nonexistent/weights" } },
    fields: ["update_info", "update_info.path", "path", "mode", "policy_version", "weight_version", "model_path"],
  },
  "/update_weights_from_disk": {
    body: { model_path: "/nonexistent/weights" },
    fields: ["model_path", "weight_version", "abort_all_requests", "flush_cache", "load_format", "mode", "policy_version"],
  },
  "/init_weight_transfer_engine": { body: { init_info: {} }, fields: ["init_info"] },
  "/finish_weight_update": { body: { weight_version: "fuzz" }, fields: ["weight_version", "baseline"] },
  "/update_weight_version": { body: { new_version: "fuzz" }, fields: ["new_version", "abort_all_requests"] },
  "/weight_checker": {
    body: { action: "compare", baseline: { lm_head: "00" } },
    fields: ["action", "baseline", "checksums", "baseline.lm_head"],
  },
};
// return_sampling_mask on the routes that report sampling masks (at full vocabulary size, the largest answers).
for (const route of ["/v1/chat/completions", "/v1/completions"]) GENERATING[route].fields.push("return_sampling_mask");
GENERATING["/inference/v1/generate"].fields.push("return_sampling_mask", "sampling_params.return_sampling_mask");

/** `body` with `field` (a dotted path for one inside an object of the body) set to `value`. */
function withField(body: Record<string, unknown>, field: string, value: unknown): Record<string, unknown> {
  const [head, ...rest] = field.split(".");
  if (rest.length === 0) return { ...body, [head]: value };
  return { ...body, [head]: withField((body[head] ?? {}) as Record<string, unknown>, rest.join("."), value) };
}

// Structured outputs: every way to ask for a grammar, each broken (a wrong type, a schema or regex that does not
// compile) must be a 400, never a 5xx or a hang in the grammar engine.
for (const route of ["/v1/chat/completions", "/v1/completions"]) {
  GENERATING[route].fields.push("response_format.type", "response_format.json_schema", "response_format.json_schema.schema",
    "structured_outputs", "structured_outputs.json", "structured_outputs.regex", "structured_outputs.choice", "structured_outputs.grammar",
    "structured_outputs.structural_tag", "structured_outputs.disable_any_whitespace", "guided_json", "guided_regex", "guided_choice",
    "guided_grammar");
}
GENERATING["/v1/completions"].fields.push("response_format");
GENERATING["/v1/responses"].fields.push("text.format", "text.format.type", "text.format.schema", "tool_choice");
GENERATING["/inference/v1/generate"].fields.push("sampling_params.structured_outputs", "sampling_params.structured_outputs.json",
  "sampling_params.structured_outputs.regex", "sampling_params.guided_decoding");

/** Messages that are wrong in every way a client gets them wrong. */
const MESSAGES: unknown[] = [
  [],
  [{}],
  [{ role: "wizard", content: "x" }],
  [{ role: "user" }],
  [{ role: "user", content: 5 }],
  [{ role: "user", content: [{ type: "image_url", image_url: { url: "http://x" } }] }],
  [{ role: "user", content: [{ type: "text" }] }],
  [{ role: "tool", content: "x" }],
  [{ role: "assistant", content: "x", prompt_token_ids: [1e9], generation_token_ids: [-1] }],
  [{ role: "assistant", content: "x", prompt_token_ids: [1, 2], generation_token_ids: [3] }, { role: "user", content: "y" }],
  [{ role: "assistant", tool_calls: [{ id: 1, type: "function", function: { name: 5, arguments: {} } }] }],
  [{ role: "system", content: null }],
  [{ role: "user", content: "\ud800\udfff\u0000" }],
];

/** Whole bodies that are not a request at all, for every POST route. */
function bodies(): [string, BodyInit][] {
  const tenMegabytes = JSON.stringify({ prompt: "hi", max_tokens: 1, junk: "z".repeat(10 * 1024 * 1024) });
  const badUtf8 = new Uint8Array([...encoder.encode('{"prompt":"'), 0xff, 0xfe, 0xc3, 0x28, 0xed, 0xa0, 0x80, ...encoder.encode('","x":1}')]);
  return [
    ["empty", ""],
    ["truncated", '{"a":'],
    ["unterminated string", '{"prompt":"hi'],
    ["array", "[]"],
    ["null", "null"],
    ["number", "123"],
    ["string", '"x"'],
    ["deep nesting", "[".repeat(20000) + "]".repeat(20000)],
    ["deep objects", '{"a":'.repeat(5000) + "1" + "}".repeat(5000)],
    ["bad UTF-8 in a string", badUtf8],
    ["bad UTF-8 outside strings", new Uint8Array([0x7b, 0xff, 0x80, 0x7d])],
    ["byte order mark", "\ufeff{}"],
    ["NUL bytes", "{\u0000}"],
    ["10 MB body", tenMegabytes],
    ["over the body limit", new Uint8Array(33 * 1024 * 1024).fill(0x20)],
  ];
}

/** Zod's own wording, which names the schema rather than the request: no error message may carry it. */
const SCHEMA_WORDING = /Invalid input|Invalid option|Invalid discriminator|expected \w+, received|Too (big|small):|Unrecognized key/;

interface Probe {
  method: string;
  path: string;
  body?: BodyInit;
  contentType?: string;
}

async function probe(p: Probe): Promise<void> {
  const what = `${p.method} ${p.path} ${typeof p.body === "string" ? p.body.slice(0, 120) : `<${(p.body as Uint8Array)?.length ?? 0} bytes>`}`;
  let res: Response;
  let text: string;
  try {
    res = await fetch(base + p.path, {
      method: p.method,
      headers: p.body === undefined ? {} : { "content-type": p.contentType ?? "application/json" },
      body: p.body,
      signal: AbortSignal.timeout(60_000),
    });
    text = await res.text();
  } catch (err) {
    // A body over the limit may be cut off while it is sent: the server answering early and closing is fine.
    if (p.body instanceof Uint8Array && p.body.length > 32 * 1024 * 1024) return;
    throw new Error(`${what}: ${(err as Error).message}`);
  }
  assert.ok(res.status < 500, `${what} -> ${res.status} ${text.slice(0, 300)}`);
  if (res.status >= 400 && p.method !== "HEAD") {
    assert.match(res.headers.get("content-type") ?? "", /application\/json/, what);
    const { message } = ErrorBody.parse(JSON.parse(text)).error;
    assert.doesNotMatch(message, SCHEMA_WORDING, `${what}: the message speaks of the request, not of the schema`);
  }
}

test("generating and tokenizing routes: every field broken every way is a 4xx or a normal answer", SLOW, async () => {
  for (const [path, { body, fields }] of Object.entries(GENERATING)) {
    for (const field of fields) {
      const values = field === "messages" || field === "input" ? [...VALUES, ...MESSAGES] : VALUES;
      for (const value of values) await probe({ method: "POST", path, body: JSON.stringify(withField(body, field, value)) });
    }
    // Fields dropped one at a time, and unknown ones added.
    for (const field of Object.keys(body)) {
      const { [field]: _, ...rest } = body;
      await probe({ method: "POST", path, body: JSON.stringify(rest) });
    }
    await probe({ method: "POST", path, body: JSON.stringify({ ...body, not_a_field: { deep: [1, 2, 3] } }) });
  }
});

test("every POST route: bodies that are not a request are 4xx, never 5xx", SLOW, async () => {
  const routes = [...Object.keys(GENERATING), "/start_weight_update", "/sleep", "/wake_up", "/reset_prefix_cache"];
  for (const path of routes) {
    for (const [, body] of bodies()) {
      // Control routes accept an empty body (their options are optional): skip those that would act.
      if (body === "" && ["/sleep", "/wake_up", "/reset_prefix_cache"].includes(path)) continue;
      await probe({ method: "POST", path, body });
    }
    await probe({ method: "POST", path, body: JSON.stringify(GENERATING[path]?.body ?? {}), contentType: "text/plain" });
  }
  for (const level of VALUES.filter((v) => v !== 1 && v !== true)) {
    if (level === 0 || level === -1 || level === 1.5 || typeof level !== "number") {
      await probe({ method: "POST", path: "/sleep", body: JSON.stringify({ level, mode: "never" }) });
    }
  }
  for (const query of ["level=3", "level=-1", "level=x", "level=1e308", "level="]) {
    await probe({ method: "POST", path: `/sleep?${query}`, body: "" });
  }
  assert.equal(served.control.status().sleepLevel, 0, "no fuzz case put the server to sleep");
});

test("GET routes and wrong methods: odd paths, queries and methods answer 2xx or 4xx", SLOW, async () => {
  const paths = ["/", "/v1", "/health", "/v1/models", "/v1/models/gym-edge/tiny", "/v1/models/%00", "/v1/models/..%2F..",
    "/metrics", "/version", "/is_sleeping", "/v1/chat/completions", "/tokenize", "/%ff", "/" + "a".repeat(8000), "/v1//models",
    "/weight_info", "/get_weight_version", "/weight_version", "/get_world_size"];
  for (const path of paths) {
    for (const method of ["GET", "HEAD", "PUT", "DELETE", "PATCH", "OPTIONS"]) {
      await probe({ method, path: `${path}?x=%ff&y=${"b".repeat(100)}` });
    }
  }
});

test("a text or id prompt far longer than the context is refused before tokenizing or decoding, and n is bounded", SLOW, async () => {
  const word = "a".repeat(10_000_000);
  const started = performance.now();
  for (const [route, body] of [
    ["/v1/chat/completions", { messages: [{ role: "user", content: word }], max_tokens: 1 }],
    ["/v1/completions", { prompt: word, max_tokens: 1 }],
    // Two million ids (12 MB of JSON): refused by their count, never decoded to text.
    ["/v1/completions", { prompt: new Array(2_000_000).fill(9707), max_tokens: 1 }],
    ["/inference/v1/generate", { token_ids: new Array(2_000_000).fill(9707), sampling_params: { max_tokens: 1 } }],
    ["/tokenize", { prompt: word }],
  ] as const) {
    const res = await fetch(base + route, { method: "POST", body: JSON.stringify(body) });
    assert.equal(res.status, 400, route);
    assert.match((await res.json()).error.message, /context length/, route);
  }
  // Tokenizing ten million characters takes minutes here; the refusal must not.
  assert.ok(performance.now() - started < 30_000, "refused without tokenizing");
  const many = await fetch(base + "/v1/chat/completions", {
    method: "POST",
    body: JSON.stringify({ messages: [{ role: "user", content: "hi" }], n: 100_000, max_tokens: 1 }),
  });
  assert.equal(many.status, 400);
  assert.equal((await many.json()).error.param, "n");
});

test("after all that the server serves normally and holds nothing", SLOW, async () => {
  const health = await fetch(`${base}/health`);
  assert.equal(health.status, 200);
  const res = await fetch(`${base}/v1/completions`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ prompt: "hello", max_tokens: 3, ignore_eos: true }),
  });
  assert.equal(res.status, 200);
  assert.equal((await res.json()).usage.completion_tokens, 3);
  const deadline = performance.now() + 10_000;
  while (served.engine.stats().running + served.engine.stats().waiting > 0 && performance.now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  assert.equal(served.engine.stats().running, 0);
  assert.equal(served.engine.cache.totalRefs, 0);
});
