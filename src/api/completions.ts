/**
 * POST /v1/completions: text or token-id prompts (one, or a batch of either), n samples each, echo, the legacy
 * logprobs shape, and the RL token fields. Choice i*n + j is sample j of prompt i, as in vLLM. `echo` with
 * `max_tokens: 0` scores the prompt without generating: as vLLM, the engine runs one token, which is not reported.
 */
import { Hono } from "hono";
import { TokenTexts } from "../chat/detokenize.ts";
import { readJson } from "./body.ts";
import { MAX_TOP_LOGPROBS } from "../engine/sampling-params.ts";
import type { AppDeps } from "./deps.ts";
import { InvalidRequestError } from "./errors.ts";
import {
  engineOf,
  Generation,
  type GenerationSetup,
  mergeAsync,
  policyVersionOf,
  samplingParams,
  textOptions,
  versionFields,
} from "./generate.ts";
import { nameRequests } from "./request-names.ts";
import { assertServedModel } from "./models.ts";
import {
  type Completion,
  type CompletionChoice,
  type CompletionLogprobs,
  legacyLogprobs,
  legacyPromptLogprobs,
  nowSeconds,
  promptLogprobsOf,
  randomId,
  samplingMasksOf,
  TokenNames,
  usageOf,
} from "./protocol.ts";
import { CompletionRequest } from "./schemas.ts";
import { SSE_DONE, sseData, sseResponse } from "./sse.ts";
import { constraintFactory, structuredSpec } from "./structured-outputs.ts";

/** One prompt of the request: its token ids and the text echo repeats. */
interface Prompt {
  ids: number[];
  text: string;
}

function checkRequest(request: CompletionRequest): void {
  if (request.suffix != null) throw new InvalidRequestError("suffix is not supported", "suffix");
  if (request.max_tokens === 0 && !request.echo) {
    throw new InvalidRequestError(
      "max_tokens must be at least 1; 0 is accepted only with echo, to score the prompt without generating",
      "max_tokens",
    );
  }
  const promptTop = request.prompt_logprobs;
  if (promptTop != null && (promptTop < 0 || promptTop > MAX_TOP_LOGPROBS)) {
    throw new InvalidRequestError(`prompt_logprobs must be from 0 to ${MAX_TOP_LOGPROBS}, got ${promptTop}`, "prompt_logprobs");
  }
  if (request.stream && (request.prompt_logprobs != null || (request.echo && request.logprobs != null))) {
    throw new InvalidRequestError("prompt log-probabilities (prompt_logprobs, echo with logprobs) are not supported with stream yet", "stream");
  }
  if (request.stream_options && !request.stream) {
    throw new InvalidRequestError("stream_options can only be given when stream is true", "stream_options");
  }
}

/** Top alternatives per prompt token the request needs: for prompt_logprobs, and for echo with logprobs. */
function promptLogprobsWanted(request: CompletionRequest): number | null {
  const echoed = request.echo && request.logprobs != null ? request.logprobs : null;
  if (request.prompt_logprobs == null) return echoed;
  return Math.max(request.prompt_logprobs, echoed ?? 0);
}

function promptsOf(deps: AppDeps, request: CompletionRequest): Prompt[] {
  const { prompt } = request;
  const fromText = (text: string): Prompt => ({
    ids: deps.tokenizer.encode(text, { addSpecialTokens: request.add_special_tokens }),
    text,
  });
  const fromIds = (ids: number[], param: string): Prompt => {
    const bad = ids.findIndex((id) => !deps.tokenizer.isKnownId(id));
    if (bad >= 0) throw new InvalidRequestError(`token id ${ids[bad]} is outside the vocabulary`, `${param}[${bad}]`);
    // The text is only echoed: decoding a prompt that is then refused for its length would be wasted time.
    return { ids, text: request.echo && ids.length < deps.maxModelLen ? deps.tokenizer.decode(ids) : "" };
  };
  if (typeof prompt === "string") return [fromText(prompt)];
  if (prompt.every((p) => typeof p === "number")) return [fromIds(prompt as number[], "prompt")];
  return (prompt as (string | number[])[]).map((p, i) => typeof p === "string" ? fromText(p) : fromIds(p, `prompt[${i}]`));
}

/** The completion routes. */
export function completionRoutes(deps: AppDeps): Hono {
  const texts = new TokenTexts(deps.tokenizer);
  const routes = new Hono();

  routes.post("/v1/completions", async (c) => {
    const request = CompletionRequest.parse(await readJson(c));
    assertServedModel(deps, request.model);
    checkRequest(request);
    const engine = engineOf(deps);
    const prompts = promptsOf(deps, request);
    const scoreOnly = request.echo === true && request.max_tokens === 0;
    // Completions have no reasoning section: the grammar applies from the first token.
    const structured = structuredSpec(request);
    const constraint = scoreOnly ? undefined : await constraintFactory({ ...deps, reasoningParser: null }, structured);
    const generations: Generation[] = [];
    try {
      for (const [i, prompt] of prompts.entries()) {
        const setup: GenerationSetup = {
          engine,
          tokenizer: deps.tokenizer,
          params: samplingParams(deps, request, {
            promptLength: prompt.ids.length,
            maxTokens: scoreOnly ? 1 : request.max_tokens,
            defaultMaxTokens: 16,
            topLogprobs: request.logprobs ?? null,
            promptLogprobs: promptLogprobsWanted(request),
            promptParam: "prompt",
          }),
          text: textOptions(request),
          signal: c.req.raw.signal,
          constraint,
        };
        generations.push(new Generation(setup, prompt.ids, i * setup.params.n));
      }
    } catch (err) {
      for (const generation of generations) generation.abort();
      throw err;
    }
    const shape: CompletionShape = {
      id: nameRequests(randomId("cmpl-"), generations),
      created: nowSeconds(),
      model: deps.servedModelName,
      prompts,
      n: generations[0].requests.length,
      echo: request.echo ?? false,
      scoreOnly,
      names: new TokenNames(texts, request.return_tokens_as_token_ids ?? deps.returnTokensAsTokenIds ?? false),
      topLogprobs: request.logprobs ?? null,
      promptLogprobs: request.prompt_logprobs != null,
      returnTokenIds: request.return_token_ids ?? false,
      samplingMask: request.return_sampling_mask ?? false,
      version: engine.policyVersion,
    };
    if (!request.stream) return c.json(await complete(generations, shape));
    const usage = request.stream_options?.include_usage ?? false;
    return sseResponse(stream(generations, shape, usage), {
      onCancel: () => generations.forEach((g) => g.abort()),
      signal: c.req.raw.signal,
    });
  });

  return routes;
}

interface CompletionShape {
  id: string;
  created: number;
  model: string;
  prompts: Prompt[];
  n: number;
  echo: boolean;
  /** echo with max_tokens 0: the prompt alone, with its log-probabilities; the token the engine ran is dropped. */
  scoreOnly: boolean;
  names: TokenNames;
  topLogprobs: number | null;
  /** The request asked for prompt_logprobs (echo with logprobs puts them in `logprobs` instead). */
  promptLogprobs: boolean;
  returnTokenIds: boolean;
  /** Each choice carries sampling_mask (return_sampling_mask). */
  samplingMask: boolean;
  version: number;
}

/** The echoed prompt's legacy logprobs followed by the generation's. */
function withEchoedPrompt(prompt: CompletionLogprobs | null, generated: CompletionLogprobs): CompletionLogprobs {
  if (!prompt) return generated;
  return {
    text_offset: [...prompt.text_offset, ...generated.text_offset],
    token_logprobs: [...prompt.token_logprobs, ...generated.token_logprobs],
    tokens: [...prompt.tokens, ...generated.tokens],
    top_logprobs: [...prompt.top_logprobs, ...generated.top_logprobs],
  };
}

function promptTokens(shape: CompletionShape): number {
  return shape.prompts.reduce((sum, p) => sum + p.ids.length, 0);
}

async function complete(generations: Generation[], shape: CompletionShape): Promise<Completion> {
  const results = (await Promise.all(generations.map((g) => g.collect()))).flat();
  const choices = results.map((result): CompletionChoice => {
    const prompt = shape.prompts[Math.floor(result.index / shape.n)];
    const echoed = shape.echo ? prompt.text : "";
    const entries = result.tokens[0]?.promptLogprobs;
    const generated = shape.scoreOnly ? [] : result.tokens;
    return {
      index: result.index,
      text: echoed + (shape.scoreOnly ? "" : result.text),
      logprobs: shape.topLogprobs === null ? null : withEchoedPrompt(
        shape.echo && entries ? legacyPromptLogprobs(shape.names, prompt.ids, entries, shape.topLogprobs) : null,
        legacyLogprobs(shape.names, generated, shape.topLogprobs, echoed.length),
      ),
      finish_reason: shape.scoreOnly && result.finishReason !== "abort" ? "length" : result.finishReason,
      stop_reason: shape.scoreOnly ? null : result.stopReason,
      prompt_logprobs: shape.promptLogprobs ? promptLogprobsOf(shape.names.texts, entries) : null,
      ...(shape.returnTokenIds ? { prompt_token_ids: prompt.ids, token_ids: generated.map((t) => t.tokenId) } : {}),
      ...(shape.samplingMask ? { sampling_mask: samplingMasksOf(generated) } : {}),
    };
  });
  const tokens = results.flatMap((r) => r.tokens);
  const generatedCount = shape.scoreOnly ? 0 : tokens.length;
  return {
    id: shape.id,
    object: "text_completion",
    created: shape.created,
    model: shape.model,
    choices,
    service_tier: null,
    system_fingerprint: null,
    usage: usageOf(promptTokens(shape), generatedCount),
    ...(shape.returnTokenIds && shape.prompts.length === 1 ? { prompt_token_ids: shape.prompts[0].ids } : {}),
    kv_transfer_params: null,
    ...versionFields(generations[0].engine, policyVersionOf(shape.version, tokens)),
  };
}

async function* stream(generations: Generation[], shape: CompletionShape, includeUsage: boolean): AsyncGenerator<string> {
  let version = shape.version;
  let generated = 0;
  // Characters of each choice's text so far (text_offset), and whether its first chunk went out (echo, prompt ids).
  const offsets = new Map<number, number>();
  const chunk = (choice: CompletionChoice | null, extra: Partial<Completion> = {}) =>
    sseData({
      id: shape.id,
      object: "text_completion",
      created: shape.created,
      model: shape.model,
      choices: choice ? [choice] : [],
      system_fingerprint: null,
      usage: null,
      ...extra,
      ...versionFields(generations[0].engine, version),
    } satisfies Completion);
  for await (const event of mergeAsync(generations.map((g) => g.events()))) {
    const prompt = shape.prompts[Math.floor(event.index / shape.n)];
    if (shape.scoreOnly) {
      // Only the echoed prompt, in the last chunk: the token the engine ran is not part of the answer.
      if (event.kind === "token") version = Math.max(version, event.token.policyVersion);
      else {
        yield chunk({
          index: event.index,
          text: prompt.text,
          logprobs: null,
          finish_reason: event.finishReason === "abort" ? "abort" : "length",
          stop_reason: null,
          ...(shape.returnTokenIds ? { prompt_token_ids: prompt.ids, token_ids: [] } : {}),
        });
      }
      continue;
    }
    let text = event.text;
    let firstFields = {};
    if (!offsets.has(event.index)) {
      if (shape.echo) text = prompt.text + text;
      if (shape.returnTokenIds) firstFields = { prompt_token_ids: prompt.ids };
      offsets.set(event.index, shape.echo ? prompt.text.length : 0);
    }
    const offset = offsets.get(event.index)!;
    const choice: CompletionChoice = { index: event.index, text, logprobs: null, finish_reason: null, stop_reason: null, ...firstFields };
    if (event.kind === "token") {
      generated++;
      version = Math.max(version, event.token.policyVersion);
      if (shape.topLogprobs !== null) choice.logprobs = legacyLogprobs(shape.names, [event.token], shape.topLogprobs, offset);
      if (shape.returnTokenIds) choice.token_ids = [event.token.tokenId];
      if (shape.samplingMask) choice.sampling_mask = samplingMasksOf([event.token]);
    } else {
      choice.finish_reason = event.finishReason;
      choice.stop_reason = event.stopReason;
    }
    offsets.set(event.index, offset + event.text.length);
    yield chunk(choice);
  }
  if (includeUsage) yield chunk(null, { usage: usageOf(promptTokens(shape), generated) });
  yield SSE_DONE;
}
