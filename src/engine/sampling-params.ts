/**
 * The sampling parameters the engine uses, with vLLM's defaults and range checks. A bad value fails the zod
 * parse (the API answers 400); `null` means "the default", as OpenAI clients often send it.
 */
import { z } from "zod";

/** Below this temperature a request is greedy (vLLM's _SAMPLING_EPS). */
export const GREEDY_TEMPERATURE = 1e-5;
/** vLLM raises positive temperatures under 0.01 to 0.01: dividing by less overflows float32 logits. */
export const MIN_SAMPLING_TEMPERATURE = 0.01;
/** The most top log-probabilities a request may ask for (OpenAI's and vLLM's default limit). */
export const MAX_TOP_LOGPROBS = 20;
/** The most candidate ids one scored prompt position may name (prompt_logprob_token_ids). */
export const MAX_PROMPT_SCORE_IDS = 256;
/** OpenAI clamps logit_bias values to this magnitude. */
export const MAX_LOGIT_BIAS = 100;

function nullable<T extends z.ZodType<number | boolean | string>>(schema: T, fallback: z.output<T>) {
  return schema.nullish().transform((value) => (value ?? fallback) as z.output<T>);
}

const tokenId = z.int().nonnegative();
const penalty = z.number().min(-2).max(2);

const LogitBias = z
  .record(z.string().regex(/^\d+$/, "logit_bias keys must be token ids"), z.number())
  .nullish()
  .transform((bias) =>
    // As pairs, clamped: the sampler walks them once per token.
    Object.entries(bias ?? {}).map(([id, value]): [number, number] => [
      Number(id),
      Math.min(MAX_LOGIT_BIAS, Math.max(-MAX_LOGIT_BIAS, value)),
    ])
  );

const LogprobsMode = z
  .enum(["processed", "raw", "processed_logprobs", "raw_logprobs"])
  .nullish()
  .transform((mode) => (mode === "raw" || mode === "raw_logprobs" ? "raw" : "processed"));

/** Every sampling parameter of a request, as the engine reads it. */
export const SamplingParams = z
  .object({
    // OpenAI's limit; unbounded, one request could occupy the server for minutes.
    n: nullable(z.int().min(1).max(128), 1),
    temperature: nullable(z.number().min(0).max(2), 1),
    top_p: nullable(z.number().gt(0).max(1), 1),
    // -1 and 0 both mean off; the engine sees 0.
    top_k: nullable(z.int().min(-1), 0).transform((k) => (k < 0 ? 0 : k)),
    min_p: nullable(z.number().min(0).max(1), 0),
    // vLLM reads seed -1 as "no seed".
    seed: z.int().nullish().transform((seed) => (seed == null || seed === -1 ? null : seed)),
    // null: until the context is full (the API decides); vLLM's engine default is 16.
    max_tokens: z.int().min(1).nullish().transform((max) => (max === undefined ? 16 : max)),
    min_tokens: nullable(z.int().min(0), 0),
    stop_token_ids: z.array(tokenId).nullish().transform((ids) => ids ?? []),
    ignore_eos: nullable(z.boolean(), false),
    presence_penalty: nullable(penalty, 0),
    frequency_penalty: nullable(penalty, 0),
    repetition_penalty: nullable(z.number().gt(0), 1),
    logit_bias: LogitBias,
    /** How many top log-probabilities to return per token; null: none (the sampled token's own is always there). */
    logprobs: z.int().min(0).max(MAX_TOP_LOGPROBS).nullish().transform((n) => n ?? null),
    logprobs_mode: LogprobsMode,
    /** Report each token's sampling mask, the ids it was drawn from (vLLM's sampling_mask). */
    return_sampling_mask: nullable(z.boolean(), false),
    /** Log-probabilities of the prompt's tokens with this many top alternatives each; null: none. */
    prompt_logprobs: z.int().min(0).max(MAX_TOP_LOGPROBS).nullish().transform((n) => n ?? null),
    /**
     * Teacher scoring (vLLM's prompt_logprob_token_ids): the token ids whose log-probabilities to report at each
     * scored prompt position, one list per position (-1 pads a short list and scores -Infinity); null: none.
     */
    prompt_logprob_token_ids: z.array(z.array(z.int().min(-1)).max(MAX_PROMPT_SCORE_IDS)).nullish()
      .transform((rows) => rows ?? null),
    /** The first position scored: row i scores prompt token prompt_logprob_start + i + 1. */
    prompt_logprob_start: nullable(z.int().min(0), 0),
    // How the request is scheduled, not sampled (vLLM's request fields, not its SamplingParams).
    /** Lower runs first under --scheduling-policy priority; ties keep arrival order. */
    priority: nullable(z.int(), 0),
    /** Requests with different salts never share prefix-cache blocks (null: the unsalted cache). */
    cache_salt: z.string().min(1).nullish().transform((salt) => salt ?? null),
  })
  .superRefine((p, ctx) => {
    if (p.max_tokens !== null && p.min_tokens > p.max_tokens) {
      ctx.addIssue({
        code: "custom",
        path: ["min_tokens"],
        message: `min_tokens must be less than or equal to max_tokens=${p.max_tokens}, got ${p.min_tokens}`,
      });
    }
    if (p.temperature < GREEDY_TEMPERATURE && p.n > 1) {
      ctx.addIssue({ code: "custom", path: ["n"], message: `n must be 1 when using greedy sampling, got ${p.n}` });
    }
  })
  .transform((p) => {
    if (p.temperature < GREEDY_TEMPERATURE) {
      // Greedy ignores truncation, as in vLLM: its processed log-probs are then over the whole vocabulary.
      return { ...p, temperature: 0, top_p: 1, top_k: 0, min_p: 0 };
    }
    return { ...p, temperature: Math.max(p.temperature, MIN_SAMPLING_TEMPERATURE) };
  });
export type SamplingParams = z.output<typeof SamplingParams>;
export type SamplingParamsInput = z.input<typeof SamplingParams>;

/** A sampling parameter that does not fit the served model (the API answers 400 naming `param`). */
export class SamplingParamsError extends Error {
  constructor(message: string, readonly param: string) {
    super(message);
    this.name = "SamplingParamsError";
  }
}

/** Whether a request samples greedily (temperature 0). */
export function isGreedy(params: SamplingParams): boolean {
  return params.temperature < GREEDY_TEMPERATURE;
}

/** Checks the token ids a request names against the model's vocabulary size. */
export function checkAgainstVocab(params: SamplingParams, vocabSize: number): void {
  for (const [id] of params.logit_bias) {
    if (id >= vocabSize) {
      throw new SamplingParamsError(`token_id ${id} in logit_bias is out of the vocabulary (size ${vocabSize})`, "logit_bias");
    }
  }
  for (const row of params.prompt_logprob_token_ids ?? []) {
    const bad = row.find((id) => id >= vocabSize);
    if (bad !== undefined) {
      throw new SamplingParamsError(
        `token_id ${bad} in prompt_logprob_token_ids is out of the vocabulary (size ${vocabSize})`,
        "prompt_logprob_token_ids",
      );
    }
  }
  for (const id of params.stop_token_ids) {
    if (id >= vocabSize) {
      throw new SamplingParamsError(`token_id ${id} in stop_token_ids is out of the vocabulary (size ${vocabSize})`, "stop_token_ids");
    }
  }
}
