/**
 * SGLang's native POST /generate, which slime and AReaL call: `text` or `input_ids` (one prompt or a batch),
 * `sampling_params` in SGLang's names, and `return_logprob` / `logprob_start_len` / `top_logprobs_num`, answered as
 * SGLang answers: `{text, output_ids, meta_info}` (a list for a batch or n > 1), whose `meta_info` holds the
 * finish reason as an object and the log-probabilities as `[logprob, token_id, text]` triples. Streamed, each SSE
 * chunk carries everything so far (text, ids and log-probabilities), as SGLang streams by default, then [DONE].
 */
import { Hono } from "hono";
import { z } from "zod";
import { TokenIds } from "../chat/messages.ts";
import { TokenTexts } from "../chat/detokenize.ts";
import type { PromptLogprob, TokenEvent } from "../engine/sequence.ts";
import { readJson } from "./body.ts";
import type { AppDeps } from "./deps.ts";
import { InvalidRequestError } from "./errors.ts";
import { engineOf, Generation, policyVersionOf, type SampleEvent, samplingParams, versionFields } from "./generate.ts";
import { nameRequest } from "./request-names.ts";
import { SSE_DONE, sseData, sseResponse } from "./sse.ts";
import { samplingMasksOf } from "./protocol.ts";

const nullableNumber = z.number().nullish();
const nullableInt = z.int().nullish();
const nullableBool = z.boolean().nullish();

/** SGLang's SamplingParams (sampling_params.py), the fields this server reads or refuses. */
export const SglangSamplingParams = z.object({
  max_new_tokens: z.int().min(1).nullish(),
  min_new_tokens: nullableInt,
  stop: z.union([z.string(), z.array(z.string())], { error: "stop must be a string or an array of strings" }).nullish(),
  stop_token_ids: z.array(z.int().nonnegative()).nullish(),
  temperature: nullableNumber,
  top_p: nullableNumber,
  top_k: nullableInt,
  min_p: nullableNumber,
  frequency_penalty: nullableNumber,
  presence_penalty: nullableNumber,
  repetition_penalty: nullableNumber,
  logit_bias: z.record(z.string(), z.number()).nullish(),
  n: nullableInt,
  ignore_eos: nullableBool,
  skip_special_tokens: nullableBool,
  no_stop_trim: nullableBool,
  sampling_seed: nullableInt,
  // Steer only how SGLang renders text or streams: accepted and ignored.
  spaces_between_special_tokens: nullableBool,
  stream_interval: nullableInt,
  // Read only to refuse them when they ask for something.
  json_schema: z.unknown().optional(),
  regex: z.unknown().optional(),
  ebnf: z.unknown().optional(),
  structural_tag: z.unknown().optional(),
  stop_regex: z.unknown().optional(),
  custom_params: z.unknown().optional(),
});
export type SglangSamplingParams = z.infer<typeof SglangSamplingParams>;

/** SGLang's GenerateReqInput (io_struct.py), the fields this server reads or refuses. */
export const SglangGenerateRequest = z.object({
  text: z.union([z.string(), z.array(z.string()).min(1)], { error: "text must be a string or an array of strings" }).nullish(),
  input_ids: z.union([TokenIds.min(1), z.array(TokenIds.min(1)).min(1)], {
    error: "input_ids must be an array of token ids or an array of arrays of token ids (token ids are integers from 0)",
  }).nullish(),
  sampling_params: SglangSamplingParams.nullish(),
  // One id for the request, or one per prompt of a batch.
  rid: z.union([z.string(), z.array(z.string())], { error: "rid must be a string or an array of strings" }).nullish(),
  return_logprob: nullableBool,
  logprob_start_len: z.int().min(-1).nullish(),
  top_logprobs_num: z.int().min(0).max(20).nullish(),
  return_text_in_logprobs: nullableBool,
  // Per generated token, the ids it was drawn from: meta_info.output_token_sampling_mask.
  return_sampling_mask: nullableBool,
  stream: nullableBool,
  // Read only to refuse them when they ask for something.
  input_embeds: z.unknown().optional(),
  image_data: z.unknown().optional(),
  video_data: z.unknown().optional(),
  audio_data: z.unknown().optional(),
  token_ids_logprob: z.unknown().optional(),
  lora_path: z.unknown().optional(),
  custom_logit_processor: z.unknown().optional(),
  return_hidden_states: z.unknown().optional(),
});
export type SglangGenerateRequest = z.infer<typeof SglangGenerateRequest>;

/** SGLang's log-probability entry: [logprob, token_id, text] (text only with return_text_in_logprobs). */
type LogprobTriple = [number | null, number, string | null];

/** Whether a field asks for something: set, and not empty or false. */
function asks(value: unknown): boolean {
  if (value == null || value === false) return false;
  if (Array.isArray(value)) return value.length > 0;
  if (typeof value === "object") return Object.keys(value).length > 0;
  return true;
}

const REFUSED: [string, (r: SglangGenerateRequest) => unknown, string][] = [
  ["input_embeds", (r) => r.input_embeds, "input_embeds is not supported: send text or input_ids"],
  ["image_data", (r) => r.image_data, "image_data is not supported: this server serves text models"],
  ["video_data", (r) => r.video_data, "video_data is not supported: this server serves text models"],
  ["audio_data", (r) => r.audio_data, "audio_data is not supported: this server serves text models"],
  ["token_ids_logprob", (r) => r.token_ids_logprob, "token_ids_logprob is not supported: use top_logprobs_num"],
  ["lora_path", (r) => r.lora_path, "LoRA adapters are not served"],
  ["custom_logit_processor", (r) => r.custom_logit_processor, "custom logit processors are not supported"],
  ["return_hidden_states", (r) => r.return_hidden_states, "return_hidden_states is not supported"],
  ["sampling_params.json_schema", (r) => r.sampling_params?.json_schema, "json_schema is not supported on /generate: use response_format on the OpenAI routes"],
  ["sampling_params.regex", (r) => r.sampling_params?.regex, "regex is not supported on /generate: use structured outputs on the OpenAI routes"],
  ["sampling_params.ebnf", (r) => r.sampling_params?.ebnf, "ebnf is not supported on /generate: use structured outputs on the OpenAI routes"],
  ["sampling_params.structural_tag", (r) => r.sampling_params?.structural_tag, "structural_tag is not supported"],
  ["sampling_params.stop_regex", (r) => r.sampling_params?.stop_regex, "stop_regex is not supported: use stop strings"],
  ["sampling_params.custom_params", (r) => r.sampling_params?.custom_params, "custom_params is not supported (no custom logit processors)"],
];

/** One prompt of the request: its ids and the field it came from, for errors. */
interface Prompt {
  ids: number[];
  param: string;
}

function promptsOf(deps: AppDeps, request: SglangGenerateRequest): { prompts: Prompt[]; batch: boolean } {
  const { text, input_ids: inputIds } = request;
  if ((text == null) === (inputIds == null)) {
    throw new InvalidRequestError("send exactly one of text and input_ids", text == null ? "text" : "input_ids");
  }
  const fromIds = (ids: number[], param: string): Prompt => {
    const bad = ids.findIndex((id) => !deps.tokenizer.isKnownId(id));
    if (bad >= 0) {
      throw new InvalidRequestError(`token id ${ids[bad]} is outside the vocabulary (${deps.tokenizer.vocabSize} tokens)`, `${param}[${bad}]`);
    }
    return { ids, param };
  };
  const fromText = (t: string, param: string): Prompt => {
    // Refused before tokenizing when it cannot fit: no token of a text model spans 64 characters.
    if (t.length > deps.maxModelLen * 64) throw new InvalidRequestError(`the text is far longer than the context length (${deps.maxModelLen} tokens)`, param);
    if (t.length === 0) throw new InvalidRequestError("text must not be empty", param);
    return { ids: deps.tokenizer.encode(t), param };
  };
  if (typeof text === "string") return { prompts: [fromText(text, "text")], batch: false };
  if (Array.isArray(text)) return { prompts: text.map((t, i) => fromText(t, `text[${i}]`)), batch: true };
  const ids = inputIds!;
  if (ids.every((id) => typeof id === "number")) return { prompts: [fromIds(ids as number[], "input_ids")], batch: false };
  return { prompts: (ids as number[][]).map((p, i) => fromIds(p, `input_ids[${i}]`)), batch: true };
}

/** How a request's log-probabilities are gathered and shaped. */
interface LogprobPlan {
  /** First prompt position reported in input_token_logprobs (SGLang's logprob_start_len, -1 resolved). */
  start: number;
  top: number;
  withText: boolean;
}

/** SGLang's finish reason object for a sample. */
function finishReasonOf(event: Extract<SampleEvent, { kind: "finish" }>, last: TokenEvent | undefined, generated: number) {
  if (event.finishReason === "length") return { type: "length", length: generated };
  if (event.finishReason === "stop") return { type: "stop", matched: event.stopReason ?? last?.tokenId ?? null };
  return { type: "abort", message: "the request was aborted" };
}

/** The SGLang routes. */
export function sglangRoutes(deps: AppDeps): Hono {
  const texts = new TokenTexts(deps.tokenizer);
  const routes = new Hono();

  const triple = (logprob: number | null, id: number, withText: boolean): LogprobTriple =>
    [logprob, id, withText ? texts.text(id) : null];
  const tops = (entries: { tokenId: number; logprob: number }[] | undefined, top: number, withText: boolean) =>
    (entries ?? []).slice(0, top).map((t) => triple(t.logprob, t.tokenId, withText));

  routes.post("/generate", async (c) => {
    const request = SglangGenerateRequest.parse(await readJson(c));
    for (const [param, value, why] of REFUSED) if (asks(value(request))) throw new InvalidRequestError(why, param);
    const engine = engineOf(deps);
    const { prompts, batch } = promptsOf(deps, request);
    const sp = request.sampling_params ?? {};
    const n = sp.n ?? 1;
    if (request.stream && (batch || n > 1)) {
      throw new InvalidRequestError("streaming is supported for one prompt and n = 1", "stream");
    }
    const wantLogprobs = request.return_logprob ?? false;
    const top = wantLogprobs ? request.top_logprobs_num ?? 0 : 0;
    const fields = {
      n: sp.n,
      temperature: sp.temperature,
      top_p: sp.top_p,
      top_k: sp.top_k,
      min_p: sp.min_p,
      seed: sp.sampling_seed,
      min_tokens: sp.min_new_tokens,
      stop_token_ids: sp.stop_token_ids,
      ignore_eos: sp.ignore_eos,
      presence_penalty: sp.presence_penalty,
      frequency_penalty: sp.frequency_penalty,
      repetition_penalty: sp.repetition_penalty,
      logit_bias: sp.logit_bias,
      return_sampling_mask: (deps.returnSamplingMask || request.return_sampling_mask) ?? false,
    };
    const text = {
      skipSpecialTokens: sp.skip_special_tokens ?? true,
      stop: sp.stop == null ? [] : typeof sp.stop === "string" ? [sp.stop] : sp.stop,
      includeStopString: sp.no_stop_trim ?? false,
    };
    const generations: Generation[] = [];
    const plans: (LogprobPlan | null)[] = [];
    try {
      for (const [i, prompt] of prompts.entries()) {
        const length = prompt.ids.length;
        let plan: LogprobPlan | null = null;
        if (wantLogprobs) {
          const asked = request.logprob_start_len ?? -1;
          if (asked >= length) {
            throw new InvalidRequestError(`logprob_start_len (${asked}) must be less than the prompt's ${length} tokens`, "logprob_start_len");
          }
          plan = { start: asked === -1 ? length - 1 : asked, top, withText: request.return_text_in_logprobs ?? false };
        }
        // Input log-probabilities: with top alternatives, the whole prompt's (prompt_logprobs); without, only the
        // positions asked for, as teacher scoring of the prompt's own tokens (the prefix before them may be cached).
        const from = plan ? Math.max(plan.start, 1) - 1 : 0;
        const params = samplingParams(deps, fields, {
          promptLength: length,
          maxTokens: sp.max_new_tokens,
          // SGLang's default max_new_tokens.
          defaultMaxTokens: 128,
          topLogprobs: plan ? top : null,
          promptLogprobs: plan && top > 0 ? top : null,
          promptScores: plan && top === 0 && length > 1
            ? { ids: prompt.ids.slice(from + 1).map((id) => [id]), start: from }
            : null,
          promptParam: prompt.param,
        });
        generations.push(new Generation({ engine, tokenizer: deps.tokenizer, params, text, signal: c.req.raw.signal }, prompt.ids, i * n));
        plans.push(plan);
      }
    } catch (err) {
      for (const generation of generations) generation.abort();
      throw err;
    }
    const given = request.rid;
    if (Array.isArray(given) && given.length !== prompts.length) {
      for (const generation of generations) generation.abort();
      throw new InvalidRequestError(`rid has ${given.length} ids for ${prompts.length} prompts`, "rid");
    }
    const rid = typeof given === "string" ? given : crypto.randomUUID().replaceAll("-", "");
    // A batch's own ids name its prompts; one id names them all.
    const ridOf = (p: number) => Array.isArray(given) ? given[p] : rid;
    generations.forEach((generation, p) => nameRequest(ridOf(p), generation));
    const started = performance.now();

    /** The input log-probabilities of a prompt, from its first token event. */
    const inputLogprobs = (prompt: Prompt, plan: LogprobPlan, first: TokenEvent | undefined) => {
      const tokens: LogprobTriple[] = [];
      const topLists: (LogprobTriple[] | null)[] = [];
      const scores = first?.promptTokenScores;
      const entries: (PromptLogprob | null)[] | undefined = first?.promptLogprobs;
      for (let p = plan.start; p < prompt.ids.length; p++) {
        const id = prompt.ids[p];
        if (p === 0) {
          tokens.push(triple(null, id, plan.withText));
          topLists.push(null);
        } else if (entries) {
          const entry = entries[p];
          tokens.push(triple(entry?.logprob ?? null, id, plan.withText));
          topLists.push(tops(entry?.topLogprobs, plan.top, plan.withText));
        } else {
          const row = p - 1 - (scores?.start ?? 0);
          tokens.push(triple(scores ? scores.values[row] : null, id, plan.withText));
          topLists.push([]);
        }
      }
      return { tokens, topLists };
    };

    /** One sample's answer in SGLang's shape, from its tokens so far and how it ended (null: not yet). */
    const answer = (
      index: number,
      tokens: TokenEvent[],
      sampleText: string,
      finish: ReturnType<typeof finishReasonOf> | null,
    ) => {
      const p = Math.floor(index / n);
      const prompt = prompts[p];
      const plan = plans[p];
      const generation = generations[p];
      const meta: Record<string, unknown> = {
        id: Array.isArray(given) ? (n > 1 ? `${given[p]}-${index - p * n}` : given[p]) : batch || n > 1 ? `${rid}-${index}` : rid,
        finish_reason: finish,
        prompt_tokens: prompt.ids.length,
        completion_tokens: tokens.length,
        cached_tokens: generation.requests[index - p * n]?.cachedPromptTokens ?? 0,
        ...versionFields(engine, policyVersionOf(engine.policyVersion, tokens)),
        e2e_latency: (performance.now() - started) / 1000,
      };
      if (plan) {
        const input = inputLogprobs(prompt, plan, tokens[0]);
        meta.input_token_logprobs = input.tokens;
        meta.output_token_logprobs = tokens.map((t) => triple(t.logprob, t.tokenId, plan.withText));
        if (plan.top > 0) {
          meta.input_top_logprobs = input.topLists;
          meta.output_top_logprobs = tokens.map((t) => tops(t.topLogprobs, plan.top, plan.withText));
        }
      }
      if (fields.return_sampling_mask) meta.output_token_sampling_mask = samplingMasksOf(tokens);
      return { text: sampleText, output_ids: tokens.map((t) => t.tokenId), meta_info: meta };
    };

    if (!request.stream) {
      const results = (await Promise.all(generations.map((g) => g.collect()))).flat();
      const out = results.map((r) => {
        const finish = finishReasonOf(
          { kind: "finish", index: r.index, text: "", finishReason: r.finishReason, stopReason: r.stopReason },
          r.tokens.at(-1),
          r.tokens.length,
        );
        return answer(r.index, r.tokens, r.text, finish);
      });
      return c.json(batch || n > 1 ? out : out[0]);
    }

    const generation = generations[0];
    async function* chunks(): AsyncGenerator<string> {
      const tokens: TokenEvent[] = [];
      let soFar = "";
      for await (const event of generation.events()) {
        soFar += event.text;
        if (event.kind === "token") {
          tokens.push(event.token);
          yield sseData(answer(0, tokens, soFar, null));
        } else {
          yield sseData(answer(0, tokens, soFar, finishReasonOf(event, tokens.at(-1), tokens.length)));
        }
      }
      yield SSE_DONE;
    }
    return sseResponse(chunks(), { onCancel: () => generation.abort(), signal: c.req.raw.signal });
  });

  return routes;
}
