/**
 * vLLM's tokens-in / tokens-out routes, which RL frameworks drive instead of the chat route:
 * - POST /inference/v1/generate: token ids and vLLM's sampling_params in, token ids and log-probabilities out, run
 *   through the same Generation as the completions route (no template, no re-tokenization);
 * - POST /v1/chat/completions/render: a chat request -> the GenerateRequest the chat route would run (template,
 *   tools and the on-policy splice, exactly as chat);
 * - POST /v1/chat/completions/derender: a GenerateResponse -> the chat response (text, reasoning and tool calls by the
 *   server's parsers), as the chat route would have answered.
 */
import { Hono } from "hono";
import { z } from "zod";
import { IncrementalDetokenizer, TokenTexts } from "../chat/detokenize.ts";
import { chatPromptIds } from "../chat/prompt.ts";
import { StopStringMatcher } from "../chat/stop.ts";
import { AssistantOutput, type ToolChoice, toolCalling } from "../chat/tools/parser.ts";
import { SamplingParamsError } from "../engine/sampling-params.ts";
import type { PromptTokenScores, TokenEvent } from "../engine/sequence.ts";
import { readJson } from "./body.ts";
import { checkRequest as checkChatRequest, outputParsers } from "./chat-completions.ts";
import type { AppDeps } from "./deps.ts";
import { InvalidRequestError } from "./errors.ts";
import { describeIssues } from "./issues.ts";
import { engineOf, Generation, policyVersionOf, samplingParams, textOptions, versionFields } from "./generate.ts";
import { assertServedModel } from "./models.ts";
import { base64, npyFloat32 } from "./npy.ts";
import { nameRequest } from "./request-names.ts";
import {
  type ChatChoice,
  type ChatCompletion,
  type ChatLogprobContent,
  type ChatLogprobs,
  floorLogprob,
  nowSeconds,
  promptLogprobsOf,
  randomId,
  samplingMasksOf,
  usageOf,
} from "./protocol.ts";
import { ChatCompletionRequest } from "./schemas.ts";
import { SSE_DONE, sseData, sseResponse } from "./sse.ts";
import {
  DerenderChatRequest,
  GenerateRequest,
  type GenerateResponse,
  type GenerateResponseChoice,
  type GenerateStreamResponse,
  type VllmSamplingParams,
} from "./tokens-protocol.ts";
import { constraintFactory, structuredSpec } from "./structured-outputs.ts";

/** Whether a field of vLLM's SamplingParams asks for something: set, and not to its default (or an empty list). */
function asks(value: unknown, ...defaults: unknown[]): boolean {
  if (value == null || defaults.includes(value)) return false;
  if (Array.isArray(value)) return value.length > 0;
  if (typeof value === "object") return Object.keys(value).length > 0;
  return true;
}

/**
 * vLLM sampling fields this server cannot honour: asking for anything with them is a 400. Fields that only steer how
 * vLLM produces its answer (detokenize, flat_logprobs, output_kind, stream_interval, skip_clone,
 * skip_reading_prefix_cache, spaces_between_special_tokens, extra_args, routed_experts_prompt_start) are ignored.
 */
const REFUSED_SAMPLING: [keyof VllmSamplingParams, (sp: VllmSamplingParams) => boolean, string][] = [
  ["best_of", (sp) => asks(sp.best_of, 1, sp.n ?? 1), "best_of is not supported (vLLM's V1 engine dropped it too); ask for n samples"],
  ["allowed_token_ids", (sp) => asks(sp.allowed_token_ids), "allowed_token_ids is not supported"],
  ["bad_words", (sp) => asks(sp.bad_words), "bad_words is not supported"],
  ["logits_processors", (sp) => asks(sp.logits_processors), "custom logits processors are not supported"],
  ["logprob_token_ids", (sp) => asks(sp.logprob_token_ids), "logprob_token_ids is not supported: use logprobs (top 0..20)"],
  ["thinking_token_budget", (sp) => asks(sp.thinking_token_budget, -1), "thinking_token_budget is not supported"],
  ["repetition_detection", (sp) => {
    const r = sp.repetition_detection as { max_pattern_size?: unknown } | null | undefined;
    return r != null && (typeof r !== "object" || asks(r.max_pattern_size, 0));
  }, "repetition_detection is not supported"],
  ["trace_decode_token_ids", (sp) => asks(sp.trace_decode_token_ids), "trace_decode_token_ids (forced decoding) is not supported"],
  ["truncate_prompt_tokens", (sp) => asks(sp.truncate_prompt_tokens), "truncate_prompt_tokens is not supported: send the token ids to run"],
];

/** The grammar of a generate request's sampling_params.structured_outputs (or guided_decoding), or null. */
function generateStructuredSpec(sp: VllmSamplingParams) {
  const given = sp.structured_outputs ?? sp.guided_decoding;
  if (given == null) return null;
  const field = sp.structured_outputs != null ? "structured_outputs" : "guided_decoding";
  if (typeof given !== "object" || Array.isArray(given)) {
    throw new InvalidRequestError(`sampling_params.${field} must be an object`, `sampling_params.${field}`);
  }
  try {
    const requested = structuredSpec({ structured_outputs: given as Record<string, unknown> });
    return requested && { ...requested, param: `sampling_params.${requested.param.replace("structured_outputs", field)}` };
  } catch (err) {
    if (err instanceof InvalidRequestError && err.param) {
      const param = `sampling_params.${err.param.replace("structured_outputs", field)}`;
      throw new InvalidRequestError(`${param}: ${err.message.replace(`${err.param} `, "")}`, param);
    }
    throw err;
  }
}

function isSet(value: unknown): boolean {
  return asks(value);
}

function checkGenerateRequest(request: GenerateRequest): void {
  const sp = request.sampling_params;
  for (const [field, refused, why] of REFUSED_SAMPLING) {
    if (refused(sp)) throw new InvalidRequestError(why, `sampling_params.${field}`);
  }
  for (const field of ["logprobs", "prompt_logprobs"] as const) {
    if ((sp[field] ?? 0) < 0) {
      throw new InvalidRequestError(
        `sampling_params.${field} must be from 0 to 20 (-1, the whole vocabulary, is not supported)`,
        `sampling_params.${field}`,
      );
    }
  }
  if (isSet(request.features)) {
    throw new InvalidRequestError("multimodal features are not supported: this server serves text models", "features");
  }
  if (isSet(request.kv_transfer_params)) {
    throw new InvalidRequestError("kv_transfer_params is not supported: this server does not disaggregate prefill and decode", "kv_transfer_params");
  }
  if (isSet(request.ec_transfer_params)) {
    throw new InvalidRequestError("ec_transfer_params is not supported: this server has no encoder cache to transfer", "ec_transfer_params");
  }
  // priority is checked by the engine, which knows its scheduling policy; cache_salt salts the prefix cache.
  if (sp.prompt_logprob_token_ids != null && request.stream) {
    throw new InvalidRequestError("prompt_logprob_token_ids is not supported with stream (as in vLLM)", "stream");
  }
  if ((sp.prompt_logprob_start ?? 0) !== 0 && sp.prompt_logprob_token_ids == null) {
    throw new InvalidRequestError(
      "prompt_logprob_start applies to prompt_logprob_token_ids, which the request does not send",
      "sampling_params.prompt_logprob_start",
    );
  }
}

/**
 * Teacher scoring's ids, one row per scored position of the prompt: vLLM's one list shared by every position is
 * repeated, a list of lists must have exactly one per position. Null when not asked for.
 */
function promptScores(sp: VllmSamplingParams, promptLength: number, vocabSize: number): { ids: number[][]; start: number } | null {
  const given = sp.prompt_logprob_token_ids;
  if (given == null) return null;
  const outside = given.flat().find((id) => id >= vocabSize);
  if (outside !== undefined) {
    throw new InvalidRequestError(
      `token id ${outside} in prompt_logprob_token_ids is outside the vocabulary (${vocabSize} tokens)`,
      "sampling_params.prompt_logprob_token_ids",
    );
  }
  const start = sp.prompt_logprob_start ?? 0;
  const rows = Math.max(promptLength - 1 - start, 0);
  const param = "sampling_params.prompt_logprob_token_ids";
  const shared = given.length > 0 && given.every((row) => typeof row === "number");
  if (given.length === 0 && rows > 0) throw new InvalidRequestError("prompt_logprob_token_ids must name at least one token id", param);
  if (shared) {
    return { ids: Array.from({ length: rows }, () => given as number[]), start };
  }
  const perRow = given as number[][];
  if (perRow.length !== rows) {
    throw new InvalidRequestError(
      `prompt_logprob_token_ids must have one row per scored position: ${rows} (${promptLength} prompt tokens - 1 - ` +
        `prompt_logprob_start ${start}), got ${perRow.length}`,
      param,
    );
  }
  return { ids: perRow, start };
}

/**
 * A token's logprobs entry as vLLM's generate route writes it: tokens named "token_id:<id>", no bytes, and
 * `top_logprobs` the sampled token first, then the most likely others, max(k, 1) in all.
 */
function tokenLogprobs(token: TokenEvent, top: number): ChatLogprobContent {
  const named = (id: number, logprob: number) => ({ token: `token_id:${id}`, logprob: floorLogprob(logprob), bytes: null });
  const alternatives = [named(token.tokenId, token.logprob)];
  for (const t of token.topLogprobs ?? []) {
    if (alternatives.length >= Math.max(top, 1)) break;
    if (t.tokenId !== token.tokenId) alternatives.push(named(t.tokenId, t.logprob));
  }
  return { ...named(token.tokenId, token.logprob), top_logprobs: alternatives };
}

function generateChoice(
  index: number,
  tokens: TokenEvent[],
  top: number | null,
  finish: string | null,
  masks: boolean,
): GenerateResponseChoice {
  return {
    index,
    logprobs: top === null ? null : { content: tokens.map((t) => tokenLogprobs(t, top)) },
    finish_reason: finish,
    token_ids: tokens.map((t) => t.tokenId),
    routed_experts: null,
    sampling_mask: masks ? samplingMasksOf(tokens) : null,
  };
}

/** Teacher scoring's matrix as vLLM sends it: a base64 .npy float32 [rows, K] (null if the request ended first). */
function tokenScoresOf(scores: PromptTokenScores | undefined): string | null {
  return scores ? base64(npyFloat32(scores.values, [scores.rows, scores.columns])) : null;
}

/** Runs `make`, naming the fields of its errors as fields of `sampling_params` (the prompt's stay `token_ids`). */
function withinSamplingParams<T>(make: () => T): T {
  try {
    return make();
  } catch (err) {
    if (err instanceof z.ZodError) {
      const { message, param } = describeIssues(err.issues.map((issue) => ({ ...issue, path: ["sampling_params", ...issue.path] })));
      throw new InvalidRequestError(message, param);
    }
    if ((err instanceof InvalidRequestError || err instanceof SamplingParamsError) && err.param && err.param !== "token_ids") {
      throw new InvalidRequestError(err.message, `sampling_params.${err.param}`);
    }
    throw err;
  }
}

/** The chat route's text of a sample's ids: detokenized and stop strings applied as the chat route does. */
function sampleText(
  deps: AppDeps,
  ids: readonly number[],
  finishReason: string | null,
  request: ChatCompletionRequest | null,
): { text: string; stopped: boolean } {
  const options = textOptions(request ?? {});
  const detokenizer = new IncrementalDetokenizer(deps.tokenizer, { skipSpecialTokens: options.skipSpecialTokens });
  const stops = new StopStringMatcher(options.stop, { includeStopString: options.includeStopString });
  const minTokens = request?.min_tokens ?? 0;
  let text = "";
  for (const [i, id] of ids.entries()) {
    let piece = detokenizer.push(id);
    // The eos or stop token that ended a sample: its text is left out unless asked for (as the chat route does).
    const endToken = i === ids.length - 1 && finishReason === "stop" &&
      (id === deps.tokenizer.eosTokenId || (request?.stop_token_ids ?? []).includes(id));
    if (endToken && !options.includeStopString) piece = "";
    const check = i + 1 >= minTokens ? stops.push(piece) : { text: piece, stop: null };
    text += check.text;
    if (check.stop !== null) return { text, stopped: true };
  }
  const tail = stops.push(detokenizer.flush());
  text += tail.text;
  if (tail.stop !== null) return { text, stopped: true };
  return { text: text + stops.flush(), stopped: false };
}

/** A derender choice's logprobs with vLLM's "token_id:<id>" names resolved to the tokens' text and bytes. */
function resolvedLogprobs(texts: TokenTexts, logprobs: ChatLogprobs, keepIds: boolean): ChatLogprobs {
  if (!logprobs.content || keepIds) return logprobs;
  const resolve = <T extends { token: string; bytes: number[] | null }>(entry: T): T => {
    const id = /^token_id:(\d+)$/.exec(entry.token);
    if (!id) return entry;
    return { ...entry, token: texts.text(Number(id[1])), bytes: texts.bytes(Number(id[1])) };
  };
  return { content: logprobs.content.map((e) => ({ ...resolve(e), top_logprobs: e.top_logprobs.map(resolve) })) };
}

/** The tokens-in / tokens-out routes. */
export function tokenRoutes(deps: AppDeps): Hono {
  const texts = new TokenTexts(deps.tokenizer);
  const parsers = outputParsers(deps);
  const routes = new Hono();

  routes.post("/inference/v1/generate", async (c) => {
    const request = GenerateRequest.parse(await readJson(c));
    assertServedModel(deps, request.model);
    checkGenerateRequest(request);
    const engine = engineOf(deps);
    const ids = request.token_ids;
    const sp = request.sampling_params;
    const top = sp.logprobs ?? null;
    // vLLM's server-wide switch, or this request's (SGLang's top-level name, or inside sampling_params).
    const masks = (deps.returnSamplingMask || request.return_sampling_mask || sp.return_sampling_mask) ?? false;
    const scores = promptScores(sp, ids.length, deps.tokenizer.vocabSize);
    // priority and cache_salt are the request's, not its sampling_params' (an empty salt is no salt).
    const fields = { ...sp, return_sampling_mask: masks, priority: request.priority, cache_salt: request.cache_salt || null };
    const params = withinSamplingParams(() => samplingParams(deps, fields, {
      promptLength: ids.length,
      maxTokens: sp.max_tokens,
      // As vLLM's generate route: without max_tokens, all the room left in the context.
      defaultMaxTokens: "room",
      topLogprobs: top,
      promptLogprobs: sp.prompt_logprobs ?? null,
      promptParam: "token_ids",
      promptScores: scores,
    }));
    // After the context check, so that a prompt far too long is refused without a look at each of its ids.
    const bad = ids.findIndex((id) => !deps.tokenizer.isKnownId(id));
    if (bad >= 0) {
      throw new InvalidRequestError(`token id ${ids[bad]} is outside the vocabulary (${deps.tokenizer.vocabSize} tokens)`, `token_ids[${bad}]`);
    }
    // vLLM's StructuredOutputsParams (guided_decoding is its older name); the grammar applies from the first token.
    const constraint = await constraintFactory({ ...deps, reasoningParser: null }, generateStructuredSpec(sp));
    const generation = new Generation(
      { engine, tokenizer: deps.tokenizer, params, text: textOptions(sp), signal: c.req.raw.signal, constraint },
      ids,
    );
    // The body's request_id names the generation for /abort_requests, as the x-request-id header does.
    const requestId = nameRequest(request.request_id ?? crypto.randomUUID(), generation);
    if (!request.stream) {
      const results = await generation.collect();
      const tokens = results.flatMap((r) => r.tokens);
      const response: GenerateResponse = {
        request_id: requestId,
        model: deps.servedModelName,
        created: nowSeconds(),
        choices: results.map((r) => generateChoice(r.index, r.tokens, top, r.finishReason, params.return_sampling_mask)),
        usage: usageOf(ids.length, tokens.length),
        prompt_logprobs: sp.prompt_logprobs == null ? null : promptLogprobsOf(texts, results[0]?.tokens[0]?.promptLogprobs),
        prompt_token_id_logprobs: scores === null ? null : tokenScoresOf(results[0]?.tokens[0]?.promptTokenScores),
        kv_transfer_params: null,
        ...versionFields(engine, policyVersionOf(engine.policyVersion, tokens)),
      };
      return c.json(response);
    }
    const usage = { once: request.stream_options?.include_usage ?? false, continuous: request.stream_options?.continuous_usage_stats ?? false };
    const stream = streamTokens(generation, requestId, ids.length, top, usage, engine.policyVersion, params.return_sampling_mask);
    return sseResponse(stream, {
      onCancel: () => generation.abort(),
      signal: c.req.raw.signal,
    });
  });

  routes.post("/v1/chat/completions/render", async (c) => {
    const body = await readJson(c);
    const request = ChatCompletionRequest.parse(body);
    assertServedModel(deps, request.model);
    checkChatRequest(request, body as Record<string, unknown>);
    // Tools are checked as the chat route checks them (a named tool_choice must name a tool).
    toolCalling(parsers.tools, request.tools, request.tool_choice as ToolChoice, request.parallel_tool_calls);
    const tokenIds = chatPromptIds(deps.tokenizer, request);
    const topLogprobs = request.logprobs ? request.top_logprobs ?? 0 : null;
    // The server's --seed sequence is left alone: the seed is drawn when the request runs, as chat draws it.
    const params = samplingParams({ ...deps, nextSeed: null }, request, {
      promptLength: tokenIds.length,
      maxTokens: request.max_completion_tokens ?? request.max_tokens,
      defaultMaxTokens: "room",
      topLogprobs,
      promptLogprobs: request.prompt_logprobs ?? null,
      promptParam: "messages",
    });
    const text = textOptions(request);
    const sampling: VllmSamplingParams = {
      n: params.n,
      temperature: params.temperature,
      top_p: params.top_p,
      top_k: params.top_k,
      min_p: params.min_p,
      seed: params.seed,
      max_tokens: params.max_tokens,
      min_tokens: params.min_tokens,
      stop: [...text.stop],
      stop_token_ids: params.stop_token_ids,
      ignore_eos: params.ignore_eos,
      presence_penalty: params.presence_penalty,
      frequency_penalty: params.frequency_penalty,
      repetition_penalty: params.repetition_penalty,
      logit_bias: request.logit_bias ?? null,
      logprobs: params.logprobs,
      prompt_logprobs: params.prompt_logprobs,
      include_stop_str_in_output: text.includeStopString,
      skip_special_tokens: text.skipSpecialTokens,
      ...(request.logprobs_mode ? { logprobs_mode: request.logprobs_mode } : {}),
      ...(request.return_sampling_mask ? { return_sampling_mask: true } : {}),
    };
    return c.json({
      request_id: randomId("chatcmpl-"),
      token_ids: tokenIds,
      features: null,
      sampling_params: sampling,
      model: request.model ?? null,
      stream: request.stream ?? false,
      stream_options: request.stream ? request.stream_options ?? null : null,
      cache_salt: request.cache_salt ?? null,
      priority: request.priority ?? 0,
      kv_transfer_params: null,
    });
  });

  routes.post("/v1/chat/completions/derender", async (c) => {
    const request = DerenderChatRequest.parse(await readJson(c));
    assertServedModel(deps, request.model);
    if (request.stream) {
      throw new InvalidRequestError("streaming derender (stream: true) is not supported; send the whole generate response", "stream");
    }
    const chat = request.chat_request ?? null;
    const tools = chat
      ? toolCalling(parsers.tools, chat.tools, chat.tool_choice as ToolChoice, chat.parallel_tool_calls)
      : null;
    const keepIds = chat?.return_tokens_as_token_ids ?? deps.returnTokensAsTokenIds ?? false;
    const gen = request.generate_response;
    let generated = 0;
    const choices = gen.choices.map((choice, i): ChatChoice => {
      const ids = choice.token_ids ?? [];
      if (ids.length === 0) {
        throw new InvalidRequestError(`choice ${choice.index} has no token_ids`, `generate_response.choices[${i}].token_ids`);
      }
      const unknown = ids.findIndex((id) => !deps.tokenizer.isKnownId(id));
      if (unknown >= 0) {
        throw new InvalidRequestError(
          `token id ${ids[unknown]} is outside the vocabulary (${deps.tokenizer.vocabSize} tokens)`,
          `generate_response.choices[${i}].token_ids[${unknown}]`,
        );
      }
      generated += ids.length;
      const finish = choice.finish_reason ?? "stop";
      const { text, stopped } = sampleText(deps, ids, finish, chat);
      // Without the chat request, as vLLM: the plain text, no parsing.
      const parsed = chat ? new AssistantOutput(parsers.reasoning, tools).parse(text) : { content: text, reasoning: null, calls: [] };
      const logprobs = choice.logprobs ? resolvedLogprobs(texts, choice.logprobs, keepIds) : null;
      const ended = stopped ? "stop" : finish;
      const finishReason = parsed.calls.length > 0 && ended === "stop" ? "tool_calls" : ended;
      return {
        index: choice.index,
        message: {
          role: "assistant",
          content: parsed.content,
          refusal: null,
          annotations: null,
          audio: null,
          function_call: null,
          ...(parsed.calls.length > 0 ? { tool_calls: parsed.calls } : {}),
          reasoning_content: parsed.reasoning,
          reasoning: parsed.reasoning,
          ...(logprobs?.content
            ? { generation_token_ids: [...ids], generation_log_probs: logprobs.content.map((e) => e.logprob) }
            : {}),
        },
        logprobs,
        finish_reason: finishReason as ChatChoice["finish_reason"],
        stop_reason: null,
        token_ids: chat?.return_token_ids ? [...ids] : null,
      };
    });
    const response: Omit<ChatCompletion, "policy_version" | "weight_version"> = {
      id: gen.request_id ?? randomId("chatcmpl-"),
      object: "chat.completion",
      created: gen.created ?? nowSeconds(),
      model: deps.servedModelName,
      choices,
      service_tier: null,
      system_fingerprint: null,
      usage: usageOf(request.prompt_tokens ?? 0, generated),
      prompt_logprobs: null,
      prompt_token_ids: null,
      kv_transfer_params: null,
    };
    return c.json(response);
  });

  return routes;
}

async function* streamTokens(
  generation: Generation,
  requestId: string,
  promptTokens: number,
  top: number | null,
  usage: { once: boolean; continuous: boolean },
  currentVersion: number,
  masks: boolean,
): AsyncGenerator<string> {
  let version = currentVersion;
  const generated = new Map<number, number>();
  // A sample's last token waits for the next event, so that its chunk carries the finish reason, as vLLM's does.
  const held = new Map<number, TokenEvent>();
  const chunk = (index: number, tokens: TokenEvent[], finish: string | null): string => {
    const out: GenerateStreamResponse = {
      request_id: requestId,
      choices: [generateChoice(index, tokens, top, finish, masks)],
      usage: usage.continuous ? usageOf(promptTokens, generated.get(index) ?? 0) : null,
      ...versionFields(generation.engine, version),
    };
    return sseData(out);
  };
  for await (const event of generation.events()) {
    const waiting = held.get(event.index);
    held.delete(event.index);
    if (event.kind === "token") {
      version = Math.max(version, event.token.policyVersion);
      generated.set(event.index, (generated.get(event.index) ?? 0) + 1);
      if (waiting) yield chunk(event.index, [waiting], null);
      held.set(event.index, event.token);
    } else {
      yield chunk(event.index, waiting ? [waiting] : [], event.finishReason);
    }
  }
  if (usage.once) {
    const total = [...generated.values()].reduce((a, b) => a + b, 0);
    yield sseData({ request_id: requestId, choices: [], usage: usageOf(promptTokens, total), ...versionFields(generation.engine, version) });
  }
  yield SSE_DONE;
}

