/**
 * SGLang's native POST /generate against a real server on loopback (the tiny model, its real tokenizer). The
 * expected shapes are written from SGLang's definitions (GenerateReqInput, SamplingParams, and the meta_info its
 * tokenizer manager writes: finish_reason objects and [logprob, token_id, text] triples), not from this server's
 * answers; the values are held to what /inference/v1/generate reports for the same greedy request.
 */
import { after, test } from "node:test";
import assert from "node:assert/strict";
import { z } from "zod";
import { ServerConfig } from "../../src/config.ts";
import { silentLogger } from "../../src/log.ts";
import { startServer } from "../../src/server.ts";
import { testCacheDir } from "../support/served.ts";

const server = await startServer(
  ServerConfig.parse({ port: 0, device: "cpu", cacheDir: testCacheDir(), maxModelLen: 512, logRequests: false }),
  silentLogger,
);
after(() => server.close());
await server.ready;
const base = `http://127.0.0.1:${server.port}`;
const SLOW = { timeout: 300_000 };
const PROMPT = [9707, 1879, 374, 264, 1273, 315];

// SGLang's shapes.
const Triple = z.tuple([z.number().nullable(), z.int().nonnegative(), z.string().nullable()]);
const FinishReason = z.union([
  z.object({ type: z.literal("length"), length: z.int() }),
  z.object({ type: z.literal("stop"), matched: z.union([z.int(), z.string()]) }),
  z.object({ type: z.literal("abort"), message: z.string() }),
]);
const MetaInfo = z.object({
  id: z.string(),
  finish_reason: FinishReason.nullable(),
  prompt_tokens: z.int(),
  completion_tokens: z.int(),
  cached_tokens: z.int(),
  e2e_latency: z.number(),
  input_token_logprobs: z.array(Triple).optional(),
  output_token_logprobs: z.array(Triple).optional(),
  input_top_logprobs: z.array(z.array(Triple).nullable()).optional(),
  output_top_logprobs: z.array(z.array(Triple)).optional(),
});
const Output = z.object({ text: z.string(), output_ids: z.array(z.int().nonnegative()), meta_info: MetaInfo });
type Output = z.infer<typeof Output>;

function post(path: string, body: unknown): Promise<Response> {
  return fetch(`${base}${path}`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });
}

async function json(path: string, body: unknown): Promise<unknown> {
  const res = await post(path, body);
  const text = await res.text();
  assert.equal(res.status, 200, text);
  return JSON.parse(text);
}

const generate = async (body: unknown): Promise<Output> => Output.parse(await json("/generate", body));

async function refused(body: unknown): Promise<{ param: string | null; message: string }> {
  const res = await post("/generate", body);
  const text = await res.text();
  assert.equal(res.status, 400, text);
  return JSON.parse(text).error;
}

test("input_ids with return_logprob: SGLang's meta_info, values as the vLLM route reports them", SLOW, async () => {
  const out = await generate({
    input_ids: PROMPT,
    rid: "sg-1",
    sampling_params: { temperature: 0, max_new_tokens: 5, ignore_eos: true },
    return_logprob: true,
  });
  assert.equal(out.output_ids.length, 5);
  assert.deepEqual(out.meta_info.finish_reason, { type: "length", length: 5 });
  assert.equal(out.meta_info.id, "sg-1");
  assert.equal(out.meta_info.prompt_tokens, PROMPT.length);
  assert.equal(out.meta_info.completion_tokens, 5);
  const outputLogprobs = out.meta_info.output_token_logprobs!;
  assert.deepEqual(outputLogprobs.map((t) => t[1]), out.output_ids);
  assert.ok(outputLogprobs.every((t) => t[2] === null), "no text unless return_text_in_logprobs");
  // logprob_start_len defaults to -1: the prompt's last token only.
  const input = out.meta_info.input_token_logprobs!;
  assert.equal(input.length, 1);
  assert.equal(input[0][1], PROMPT.at(-1));
  assert.equal(out.meta_info.input_top_logprobs, undefined, "top lists only with top_logprobs_num");

  const vllm = await json("/inference/v1/generate", {
    token_ids: PROMPT,
    sampling_params: { temperature: 0, max_tokens: 5, ignore_eos: true, logprobs: 0, prompt_logprobs: 0 },
  }) as { choices: { token_ids: number[]; logprobs: { content: { logprob: number }[] } }[]; prompt_logprobs: Record<string, { logprob: number }>[] };
  assert.deepEqual(out.output_ids, vllm.choices[0].token_ids);
  outputLogprobs.forEach((t, j) => assert.ok(Math.abs(t[0]! - vllm.choices[0].logprobs.content[j].logprob) < 1e-5, `token ${j}`));
  const last = vllm.prompt_logprobs[PROMPT.length - 1][String(PROMPT.at(-1))].logprob;
  assert.ok(Math.abs(input[0][0]! - last) < 1e-5, `input ${input[0][0]} vs ${last}`);
});

test("logprob_start_len 0 and top_logprobs_num: every prompt position, top lists, texts on request", SLOW, async () => {
  const out = await generate({
    input_ids: PROMPT,
    sampling_params: { temperature: 0, max_new_tokens: 3, ignore_eos: true },
    return_logprob: true,
    logprob_start_len: 0,
    top_logprobs_num: 2,
    return_text_in_logprobs: true,
  });
  const input = out.meta_info.input_token_logprobs!;
  assert.deepEqual(input.map((t) => t[1]), PROMPT);
  assert.equal(input[0][0], null, "the first token has nothing before it");
  assert.ok(input.slice(1).every((t) => typeof t[0] === "number" && t[0] <= 0));
  assert.ok(input.every((t) => typeof t[2] === "string"), "texts with return_text_in_logprobs");
  const inputTops = out.meta_info.input_top_logprobs!;
  assert.equal(inputTops.length, PROMPT.length);
  assert.equal(inputTops[0], null);
  assert.ok(inputTops.slice(1).every((list) => list!.length === 2 && list![0][0]! >= list![1][0]!));
  const outputTops = out.meta_info.output_top_logprobs!;
  assert.equal(outputTops.length, 3);
  // Greedy: each output token is its position's most likely one.
  outputTops.forEach((list, j) => assert.equal(list[0][1], out.output_ids[j]));
  // A start inside the prompt reports from there on.
  const from3 = await generate({
    input_ids: PROMPT,
    sampling_params: { temperature: 0, max_new_tokens: 1 },
    return_logprob: true,
    logprob_start_len: 3,
  });
  const tail = from3.meta_info.input_token_logprobs!;
  assert.deepEqual(tail.map((t) => t[1]), PROMPT.slice(3));
  tail.forEach((t, i) => assert.ok(Math.abs(t[0]! - input[3 + i][0]!) < 1e-5, `position ${3 + i}`));
});

test("text prompts, seeds, n, batches, stop ids and strings", SLOW, async () => {
  const sp = { temperature: 1, sampling_seed: 11, max_new_tokens: 6, ignore_eos: true };
  const a = await generate({ text: "The capital of France is", sampling_params: sp });
  const b = await generate({ text: "The capital of France is", sampling_params: sp });
  assert.deepEqual(a.output_ids, b.output_ids, "a seed reproduces the sample");
  assert.equal(typeof a.text, "string");
  const tokenized = await json("/tokenize", { prompt: "The capital of France is" }) as { tokens: number[] };
  assert.equal(a.meta_info.prompt_tokens, tokenized.tokens.length);

  const many = await json("/generate", { input_ids: PROMPT, rid: "r", sampling_params: { ...sp, n: 2 } });
  const samples = z.array(Output).length(2).parse(many);
  assert.deepEqual(samples.map((s) => s.meta_info.id), ["r-0", "r-1"]);
  const batch = z.array(Output).length(2).parse(await json("/generate", { input_ids: [PROMPT, PROMPT.slice(0, 3)], sampling_params: sp }));
  assert.deepEqual(batch.map((s) => s.meta_info.prompt_tokens), [PROMPT.length, 3]);
  const named = z.array(Output).parse(await json("/generate", { input_ids: [PROMPT, PROMPT.slice(0, 3)], rid: ["a", "b"], sampling_params: sp }));
  assert.deepEqual(named.map((s) => s.meta_info.id), ["a", "b"], "a batch's rids name its prompts");

  const greedy = await generate({ input_ids: PROMPT, sampling_params: { temperature: 0, max_new_tokens: 8, ignore_eos: true } });
  const stopId = greedy.output_ids[2];
  const stopped = await generate({ input_ids: PROMPT, sampling_params: { temperature: 0, max_new_tokens: 8, ignore_eos: true, stop_token_ids: [stopId] } });
  assert.deepEqual(stopped.meta_info.finish_reason, { type: "stop", matched: stopId });
  assert.deepEqual(stopped.output_ids, greedy.output_ids.slice(0, greedy.output_ids.indexOf(stopId) + 1));
  const word = greedy.text.trim().split(/\s+/)[1];
  if (word) {
    const byString = await generate({ input_ids: PROMPT, sampling_params: { temperature: 0, max_new_tokens: 8, ignore_eos: true, stop: [word] } });
    assert.deepEqual(byString.meta_info.finish_reason, { type: "stop", matched: word });
    assert.ok(!byString.text.includes(word), "the stop string is trimmed");
    const kept = await generate({ input_ids: PROMPT, sampling_params: { temperature: 0, max_new_tokens: 8, ignore_eos: true, stop: [word], no_stop_trim: true } });
    assert.ok(kept.text.endsWith(word), "no_stop_trim keeps it");
  }
});

test("return_sampling_mask: meta_info.output_token_sampling_mask, per token the ids it was drawn from", SLOW, async () => {
  const res = await post("/generate", {
    input_ids: PROMPT,
    sampling_params: { max_new_tokens: 6, temperature: 1, top_k: 5, sampling_seed: 3, ignore_eos: true },
    return_sampling_mask: true,
  });
  assert.equal(res.status, 200);
  const out = Output.extend({ meta_info: MetaInfo.extend({ output_token_sampling_mask: z.array(z.array(z.int())) }) })
    .parse(await res.json());
  const masks = out.meta_info.output_token_sampling_mask;
  assert.equal(masks.length, out.output_ids.length);
  masks.forEach((set, i) => {
    // top_k 5 keeps five ids, ascending, and the token drawn is one of them.
    assert.equal(set.length, 5, `token ${i}`);
    assert.deepEqual(set, [...set].sort((a, b) => a - b));
    assert.ok(set.includes(out.output_ids[i]), `token ${i}: ${out.output_ids[i]} in ${set}`);
  });
  // Not asked, not there.
  const plain = await (await post("/generate", { input_ids: PROMPT, sampling_params: { max_new_tokens: 2 } })).json();
  assert.equal("output_token_sampling_mask" in plain.meta_info, false);
});

test("stream: SSE chunks with everything so far, the finish reason on the last, then [DONE]", SLOW, async () => {
  const body = { input_ids: PROMPT, sampling_params: { temperature: 0, max_new_tokens: 4, ignore_eos: true }, return_logprob: true };
  const whole = await generate(body);
  const res = await post("/generate", { ...body, stream: true });
  assert.equal(res.status, 200);
  assert.match(res.headers.get("content-type") ?? "", /text\/event-stream/);
  const events = (await res.text()).split("\n\n").filter(Boolean).map((e) => e.replace(/^data: /, ""));
  assert.equal(events.at(-1), "[DONE]");
  const chunks = events.slice(0, -1).map((e) => Output.parse(JSON.parse(e)));
  chunks.slice(0, -1).forEach((chunk, i) => {
    assert.equal(chunk.meta_info.finish_reason, null);
    assert.equal(chunk.output_ids.length, i + 1, "ids so far");
  });
  const last = chunks.at(-1)!;
  assert.deepEqual(last.meta_info.finish_reason, { type: "length", length: 4 });
  assert.deepEqual(last.output_ids, whole.output_ids);
  assert.equal(last.text, whole.text);
  assert.deepEqual(last.meta_info.output_token_logprobs, whole.meta_info.output_token_logprobs);
});

test("bad input is a 400 naming the field", SLOW, async () => {
  assert.equal((await refused({ text: "hi", input_ids: PROMPT })).param, "input_ids");
  assert.equal((await refused({ sampling_params: {} })).param, "text");
  assert.equal((await refused({ input_ids: [9707, 1e9] })).param, "input_ids[1]");
  assert.equal((await refused({ input_ids: PROMPT, image_data: "x.png" })).param, "image_data");
  assert.equal((await refused({ input_ids: PROMPT, return_logprob: true, logprob_start_len: PROMPT.length })).param, "logprob_start_len");
  assert.equal((await refused({ input_ids: PROMPT, top_logprobs_num: 21 })).param, "top_logprobs_num");
  assert.equal((await refused({ input_ids: PROMPT, sampling_params: { temperature: "hot" } })).param, "sampling_params.temperature");
  assert.equal((await refused({ input_ids: PROMPT, sampling_params: { regex: "a+" } })).param, "sampling_params.regex");
  assert.equal((await refused({ input_ids: PROMPT, sampling_params: { n: 2 }, stream: true })).param, "stream");
  assert.equal((await refused({ input_ids: PROMPT, sampling_params: { max_new_tokens: 0 } })).param, "sampling_params.max_new_tokens");
  assert.equal((await refused({ input_ids: [PROMPT, PROMPT], rid: ["only-one"] })).param, "rid");
});
