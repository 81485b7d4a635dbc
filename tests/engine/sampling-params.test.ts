import { describe, test } from "node:test";
import assert from "node:assert/strict";
import {
  checkAgainstVocab,
  isGreedy,
  SamplingParams,
  SamplingParamsError,
  type SamplingParamsInput,
} from "../../src/engine/sampling-params.ts";

function rejects(input: Record<string, unknown>, path: string, message?: RegExp) {
  const result = SamplingParams.safeParse(input);
  assert.equal(result.success, false, `${JSON.stringify(input)} should be rejected`);
  const issue = result.error!.issues.find((i) => i.path.join(".") === path);
  assert.ok(issue, `no issue at ${path}: ${JSON.stringify(result.error!.issues)}`);
  if (message) assert.match(issue.message, message);
}

describe("SamplingParams defaults", () => {
  test("an empty request gets vLLM's defaults", () => {
    assert.deepEqual(SamplingParams.parse({}), {
      n: 1,
      temperature: 1,
      top_p: 1,
      top_k: 0,
      min_p: 0,
      seed: null,
      max_tokens: 16,
      min_tokens: 0,
      stop_token_ids: [],
      ignore_eos: false,
      presence_penalty: 0,
      frequency_penalty: 0,
      repetition_penalty: 1,
      logit_bias: [],
      logprobs: null,
      logprobs_mode: "processed",
      return_sampling_mask: false,
      prompt_logprobs: null,
      prompt_logprob_token_ids: null,
      prompt_logprob_start: 0,
      priority: 0,
      cache_salt: null,
    });
  });

  test("null means the default, as OpenAI clients send it", () => {
    const nulls = Object.fromEntries(Object.keys(SamplingParams.parse({})).map((key) => [key, null]));
    assert.deepEqual(SamplingParams.parse({ ...nulls, max_tokens: 16 }), SamplingParams.parse({}));
  });

  test("max_tokens null means until the context is full", () => {
    assert.equal(SamplingParams.parse({ max_tokens: null }).max_tokens, null);
  });

  test("unknown fields are ignored", () => {
    assert.deepEqual(SamplingParams.parse({ frobnicate: 3 } as SamplingParamsInput), SamplingParams.parse({}));
  });
});

describe("SamplingParams normalisation", () => {
  test("top_k -1 means off, as 0", () => {
    assert.equal(SamplingParams.parse({ top_k: -1 }).top_k, 0);
  });

  test("seed -1 means no seed", () => {
    assert.equal(SamplingParams.parse({ seed: -1 }).seed, null);
    assert.equal(SamplingParams.parse({ seed: -2 }).seed, -2);
  });

  test("temperature 0 is greedy and turns truncation off", () => {
    const p = SamplingParams.parse({ temperature: 0, top_k: 5, top_p: 0.5, min_p: 0.1 });
    assert.ok(isGreedy(p));
    assert.deepEqual([p.temperature, p.top_k, p.top_p, p.min_p], [0, 0, 1, 0]);
    assert.ok(isGreedy(SamplingParams.parse({ temperature: 1e-6 })));
  });

  test("a positive temperature under 0.01 is raised to 0.01", () => {
    assert.equal(SamplingParams.parse({ temperature: 0.001 }).temperature, 0.01);
    assert.equal(SamplingParams.parse({ temperature: 0.5 }).temperature, 0.5);
  });

  test("logit_bias becomes (token id, bias) pairs clamped to [-100, 100]", () => {
    assert.deepEqual(SamplingParams.parse({ logit_bias: { "5": 250, "7": -1000, "9": 1.5 } }).logit_bias, [[5, 100], [7, -100], [9, 1.5]]);
  });

  test("logprobs_mode accepts vLLM's names", () => {
    assert.equal(SamplingParams.parse({ logprobs_mode: "raw_logprobs" }).logprobs_mode, "raw");
    assert.equal(SamplingParams.parse({ logprobs_mode: "processed_logprobs" }).logprobs_mode, "processed");
    assert.equal(SamplingParams.parse({ logprobs_mode: "raw" }).logprobs_mode, "raw");
  });
});

describe("SamplingParams range checks", () => {
  const cases: [Record<string, unknown>, string][] = [
    [{ temperature: -0.1 }, "temperature"],
    [{ temperature: 2.5 }, "temperature"],
    [{ top_p: 0 }, "top_p"],
    [{ top_p: 1.1 }, "top_p"],
    [{ top_k: -2 }, "top_k"],
    [{ top_k: 1.5 }, "top_k"],
    [{ min_p: -0.1 }, "min_p"],
    [{ min_p: 1.1 }, "min_p"],
    [{ n: 0 }, "n"],
    [{ max_tokens: 0 }, "max_tokens"],
    [{ min_tokens: -1 }, "min_tokens"],
    [{ presence_penalty: 2.1 }, "presence_penalty"],
    [{ frequency_penalty: -2.1 }, "frequency_penalty"],
    [{ repetition_penalty: 0 }, "repetition_penalty"],
    [{ logprobs: 21 }, "logprobs"],
    [{ logprobs: -1 }, "logprobs"],
    [{ seed: 0.5 }, "seed"],
    [{ stop_token_ids: [-1] }, "stop_token_ids.0"],
    [{ logit_bias: { abc: 1 } }, "logit_bias.abc"],
    [{ logprobs_mode: "logits" }, "logprobs_mode"],
    [{ ignore_eos: "yes" }, "ignore_eos"],
  ];
  for (const [input, path] of cases) {
    test(`rejects ${JSON.stringify(input)}`, () => rejects(input, path));
  }

  test("rejects min_tokens over max_tokens, saying which", () => {
    rejects({ min_tokens: 20, max_tokens: 10 }, "min_tokens", /max_tokens=10/);
    assert.equal(SamplingParams.parse({ min_tokens: 20, max_tokens: null }).min_tokens, 20);
  });

  test("rejects n > 1 with greedy sampling", () => {
    rejects({ n: 2, temperature: 0 }, "n", /greedy/);
  });

  test("accepts the edges of every range", () => {
    const p = SamplingParams.parse({
      temperature: 2,
      top_p: 1,
      top_k: 1,
      min_p: 1,
      presence_penalty: -2,
      frequency_penalty: 2,
      logprobs: 20,
      min_tokens: 16,
    });
    assert.equal(p.logprobs, 20);
  });
});

describe("checkAgainstVocab", () => {
  test("rejects token ids the model does not have, naming the field", () => {
    assert.throws(
      () => checkAgainstVocab(SamplingParams.parse({ logit_bias: { "200": 1 } }), 100),
      (err: unknown) => err instanceof SamplingParamsError && err.param === "logit_bias" && /200/.test(err.message),
    );
    assert.throws(
      () => checkAgainstVocab(SamplingParams.parse({ stop_token_ids: [100] }), 100),
      (err: unknown) => err instanceof SamplingParamsError && err.param === "stop_token_ids",
    );
    checkAgainstVocab(SamplingParams.parse({ logit_bias: { "99": 1 }, stop_token_ids: [99] }), 100);
  });
});
