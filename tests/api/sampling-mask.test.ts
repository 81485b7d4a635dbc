/**
 * Sampling masks through HTTP on the real tiny model: vLLM's `sampling_mask` in /inference/v1/generate's choices
 * (per generated token, the ids it was drawn from; on every request under --enable-return-sampling-mask, or per
 * request with `return_sampling_mask`, SGLang's name, at the top level or in sampling_params), and the same field
 * on chat and completions choices, streamed one token's mask per chunk.
 */
import { after, test } from "node:test";
import assert from "node:assert/strict";
import { ServerConfig } from "../../src/config.ts";
import { silentLogger } from "../../src/log.ts";
import { LOGPROB_FLOOR } from "../../kernels/sampling.ts";
import { startServer } from "../../src/server.ts";
import { testCacheDir } from "../support/served.ts";

const SLOW = { timeout: 300_000 };
const VOCAB = 151_936;
const PROMPT = [9707, 1879, 11, 847];

async function serve(flags: Record<string, unknown>) {
  const server = await startServer(
    ServerConfig.parse({
      port: 0,
      device: "cpu",
      cacheDir: testCacheDir(),
      maxModelLen: 512,
      logRequests: false,
      ...flags,
    }),
    silentLogger,
  );
  after(() => server.close());
  await server.ready;
  return `http://127.0.0.1:${server.port}`;
}

const plain = await serve({});
const everyRequest = await serve({ enableReturnSamplingMask: true });

async function ok(base: string, path: string, body: unknown): Promise<Record<string, any>> {
  const res = await fetch(`${base}${path}`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  const text = await res.text();
  assert.equal(res.status, 200, `${path}: ${text}`);
  return JSON.parse(text);
}

/** The JSON chunks of an SSE answer. */
async function chunks(base: string, path: string, body: unknown): Promise<Record<string, any>[]> {
  const res = await fetch(`${base}${path}`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  assert.equal(res.status, 200);
  const text = await res.text();
  return text.split("\n").filter((l) => l.startsWith("data: ") && l !== "data: [DONE]").map((l) =>
    JSON.parse(l.slice(6))
  );
}

/** Each mask: ascending ids of the vocabulary, without repeats, holding its token. */
function assertMasks(masks: number[][], tokens: number[], what: string): void {
  assert.equal(masks.length, tokens.length, `${what}: one mask per token`);
  masks.forEach((mask, i) => {
    assert.ok(mask.length > 0, `${what}: mask ${i} is not empty`);
    assert.ok(
      mask.every((id, j) => Number.isInteger(id) && id >= 0 && id < VOCAB && (j === 0 || id > mask[j - 1])),
      `${what}: mask ${i} ascending`,
    );
    assert.ok(mask.includes(tokens[i]), `${what}: token ${tokens[i]} is in mask ${i}`);
  });
}

test(
  "generate: a per-request return_sampling_mask gives each token its top-k set, the k tokens of its processed log-probs",
  SLOW,
  async () => {
    for (const where of ["top level", "sampling_params"]) {
      const sp = { temperature: 1, top_k: 7, max_tokens: 6, seed: 3, logprobs: 20 };
      const body = where === "top level"
        ? { token_ids: PROMPT, return_sampling_mask: true, sampling_params: sp }
        : { token_ids: PROMPT, sampling_params: { ...sp, return_sampling_mask: true } };
      const out = await ok(plain, "/inference/v1/generate", body);
      const choice = out.choices[0];
      assertMasks(choice.sampling_mask, choice.token_ids, where);
      choice.sampling_mask.forEach((mask: number[], i: number) => {
        assert.equal(mask.length, 7, `${where}: top_k 7 keeps 7`);
        // The processed distribution is the one over the mask: its finite top log-probs name exactly the mask's ids
        // and add up to 1.
        const kept = choice.logprobs.content[i].top_logprobs.filter((t: { logprob: number }) =>
          t.logprob > LOGPROB_FLOOR
        );
        const ids = kept.map((t: { token: string }) => Number(t.token.slice("token_id:".length)));
        assert.deepEqual([...new Set<number>(ids)].sort((a, b) => a - b), mask, `${where}: token ${i}`);
        const mass = [
          ...new Map(kept.map((t: { token: string; logprob: number }) => [t.token, Math.exp(t.logprob)])).values(),
        ]
          .reduce((a: number, b) => a + (b as number), 0);
        assert.ok(Math.abs(mass - 1) < 1e-5, `${where}: mass ${mass}`);
      });
    }
  },
);

test(
  "generate: without the switch sampling_mask is null; --enable-return-sampling-mask sets it on every request",
  SLOW,
  async () => {
    const body = { token_ids: PROMPT, sampling_params: { temperature: 1, top_p: 0.5, max_tokens: 3, seed: 5 } };
    const off = await ok(plain, "/inference/v1/generate", body);
    assert.equal(off.choices[0].sampling_mask, null);
    const on = await ok(everyRequest, "/inference/v1/generate", body);
    assertMasks(on.choices[0].sampling_mask, on.choices[0].token_ids, "server flag");
    // The same seed draws the same tokens with or without masks.
    assert.deepEqual(on.choices[0].token_ids, off.choices[0].token_ids);
    // top_p 0.5 of a near-flat distribution: about half the vocabulary, never all of it.
    for (const mask of on.choices[0].sampling_mask) {
      assert.ok(
        mask.length > 1000 && mask.length < VOCAB,
        `${mask.length}`,
      );
    }
    // The flag is for the generate route: chat answers as it did.
    const chat = await ok(everyRequest, "/v1/chat/completions", {
      messages: [{ role: "user", content: "hi" }],
      max_tokens: 2,
    });
    assert.equal("sampling_mask" in chat.choices[0], false);
  },
);

test(
  "generate: greedy keeps the argmax alone; no cut keeps every token; streamed chunks carry their tokens' masks",
  SLOW,
  async () => {
    const greedy = await ok(plain, "/inference/v1/generate", {
      token_ids: PROMPT,
      return_sampling_mask: true,
      sampling_params: { temperature: 0, max_tokens: 3 },
    });
    assert.deepEqual(greedy.choices[0].sampling_mask, greedy.choices[0].token_ids.map((id: number) => [id]));
    const all = await ok(plain, "/inference/v1/generate", {
      token_ids: PROMPT,
      return_sampling_mask: true,
      sampling_params: { temperature: 1, max_tokens: 1, seed: 1 },
    });
    assert.equal(all.choices[0].sampling_mask[0].length, VOCAB);
    const stream = await chunks(plain, "/inference/v1/generate", {
      token_ids: PROMPT,
      stream: true,
      return_sampling_mask: true,
      sampling_params: { temperature: 1, top_k: 4, max_tokens: 5, seed: 9, n: 2 },
    });
    const tokens = new Map<number, number[]>();
    const masks = new Map<number, number[][]>();
    for (const c of stream) {
      for (const choice of c.choices) {
        tokens.set(choice.index, [...tokens.get(choice.index) ?? [], ...choice.token_ids]);
        masks.set(choice.index, [...masks.get(choice.index) ?? [], ...choice.sampling_mask]);
      }
    }
    assert.equal(tokens.size, 2);
    for (const [index, ids] of tokens) {
      assert.equal(ids.length, 5);
      assertMasks(masks.get(index)!, ids, `streamed sample ${index}`);
      for (const mask of masks.get(index)!) assert.equal(mask.length, 4);
    }
  },
);

test("chat and completions take return_sampling_mask per request, whole and streamed", SLOW, async () => {
  const sampling = {
    temperature: 0.8,
    top_k: 12,
    max_tokens: 5,
    seed: 11,
    return_sampling_mask: true,
    return_token_ids: true,
  };
  const chat = await ok(plain, "/v1/chat/completions", {
    messages: [{ role: "user", content: "hi" }],
    ...sampling,
    ignore_eos: true,
  });
  assertMasks(chat.choices[0].sampling_mask, chat.choices[0].token_ids, "chat");
  assert.ok(chat.choices[0].sampling_mask.every((m: number[]) => m.length === 12));
  const completion = await ok(plain, "/v1/completions", { prompt: "Hello", ...sampling, ignore_eos: true });
  assertMasks(completion.choices[0].sampling_mask, completion.choices[0].token_ids, "completions");
  const chatStream = await chunks(plain, "/v1/chat/completions", {
    messages: [{ role: "user", content: "hi" }],
    ...sampling,
    ignore_eos: true,
    stream: true,
  });
  const streamed = chatStream.flatMap((c) => c.choices).filter((c) => c.token_ids?.length);
  assert.equal(streamed.length, 5);
  for (const c of streamed) assertMasks(c.sampling_mask, c.token_ids, "chat chunk");
  const completionStream = await chunks(plain, "/v1/completions", {
    prompt: "Hello",
    ...sampling,
    ignore_eos: true,
    stream: true,
  });
  const pieces = completionStream.flatMap((c) => c.choices).filter((c) => c.token_ids?.length);
  assert.equal(pieces.length, 5);
  for (const c of pieces) assertMasks(c.sampling_mask, c.token_ids, "completion chunk");
  // Not asked: no field.
  const without = await ok(plain, "/v1/completions", { prompt: "Hello", max_tokens: 2 });
  assert.equal("sampling_mask" in without.choices[0], false);
  // Render carries the switch into the GenerateRequest it answers.
  const rendered = await ok(plain, "/v1/chat/completions/render", {
    messages: [{ role: "user", content: "hi" }],
    return_sampling_mask: true,
  });
  assert.equal(rendered.sampling_params.return_sampling_mask, true);
});
