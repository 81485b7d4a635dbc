/** POST /v1/chat/completions: JSON or a stream of chunks, with tools, reasoning, logprobs and the RL token fields. */
import { Hono } from "hono";
import { TokenTexts } from "../chat/detokenize.ts";
import { chatPromptIds } from "../chat/prompt.ts";
import { reasoningParser } from "../chat/reasoning.ts";
import { type AssistantDelta, AssistantOutput, type ToolChoice, toolCalling, toolCallParser } from "../chat/tools/parser.ts";
import type { TokenEvent } from "../engine/sequence.ts";
import { readJson } from "./body.ts";
import type { AppDeps } from "./deps.ts";
import { InvalidRequestError } from "./errors.ts";
import { engineOf, Generation, policyVersionOf, samplingParams, textOptions, versionFields } from "./generate.ts";
import { nameRequest } from "./request-names.ts";
import { assertServedModel } from "./models.ts";
import {
  type ChatChoice,
  type ChatChunkChoice,
  type ChatCompletion,
  type ChatCompletionChunk,
  type ChatDelta,
  type FinishReason,
  floorLogprob,
  nowSeconds,
  promptLogprobsOf,
  randomId,
  samplingMasksOf,
  TokenNames,
  usageOf,
} from "./protocol.ts";
import { ChatCompletionRequest } from "./schemas.ts";
import { SSE_DONE, sseData, sseResponse } from "./sse.ts";
import { constraintFactory, structuredSpec, toolChoiceSpec } from "./structured-outputs.ts";

/** Checks the fields that are valid one by one but not together, and those not supported (render checks the same). */
export function checkRequest(request: ChatCompletionRequest, body: Record<string, unknown>): void {
  if (request.logprobs && "top_logprobs" in body && body.top_logprobs === null) {
    throw new InvalidRequestError("`top_logprobs` must be an integer from 0 to 20 when `logprobs` is true, not null", "top_logprobs");
  }
  if (!request.logprobs && (request.top_logprobs ?? 0) > 0) {
    throw new InvalidRequestError("when using `top_logprobs`, `logprobs` must be set to true", "top_logprobs");
  }
  if (request.prompt_logprobs != null && request.stream) {
    throw new InvalidRequestError("prompt_logprobs is not supported with stream yet", "prompt_logprobs");
  }
  if (request.stream_options && !request.stream) {
    throw new InvalidRequestError("stream_options can only be given when stream is true", "stream_options");
  }
}

/** The parsers a server is configured with, checked once when the app is built. */
export function outputParsers(deps: AppDeps) {
  const reasoning = deps.reasoningParser ? reasoningParser(deps.reasoningParser) : null;
  const tools = deps.toolCallParser === undefined ? "hermes" : deps.toolCallParser;
  if (tools !== null) toolCallParser(tools);
  return { reasoning, tools };
}

/** The chat completion routes. */
export function chatCompletionRoutes(deps: AppDeps): Hono {
  const texts = new TokenTexts(deps.tokenizer);
  const parsers = outputParsers(deps);
  const routes = new Hono();

  routes.post("/v1/chat/completions", async (c) => {
    const body = await readJson(c);
    const request = ChatCompletionRequest.parse(body);
    assertServedModel(deps, request.model);
    checkRequest(request, body as Record<string, unknown>);
    const engine = engineOf(deps);
    const tools = toolCalling(parsers.tools, request.tools, request.tool_choice as ToolChoice, request.parallel_tool_calls);
    // A forced tool call (tool_choice "required" or named) takes the place of any other structured output.
    const structured = structuredSpec(request);
    const forced = toolChoiceSpec(parsers.tools, request.tools, request.tool_choice, request.parallel_tool_calls);
    const constraint = await constraintFactory(deps, forced ?? structured);
    const promptIds = chatPromptIds(deps.tokenizer, request);
    const params = samplingParams(deps, request, {
      promptLength: promptIds.length,
      maxTokens: request.max_completion_tokens ?? request.max_tokens,
      defaultMaxTokens: "room",
      topLogprobs: request.logprobs ? request.top_logprobs ?? 0 : null,
      promptLogprobs: request.prompt_logprobs ?? null,
      promptParam: "messages",
    });
    const generation = new Generation({
      engine,
      tokenizer: deps.tokenizer,
      params,
      text: textOptions(request),
      signal: c.req.raw.signal,
      constraint,
    }, promptIds);
    const shape: ChatShape = {
      id: nameRequest(randomId("chatcmpl-"), generation),
      created: nowSeconds(),
      model: deps.servedModelName,
      promptIds: generation.promptIds,
      names: new TokenNames(texts, request.return_tokens_as_token_ids ?? deps.returnTokensAsTokenIds ?? false),
      topLogprobs: request.logprobs ? request.top_logprobs ?? 0 : null,
      returnTokenIds: request.return_token_ids ?? false,
      samplingMask: params.return_sampling_mask,
      output: () => new AssistantOutput(parsers.reasoning, tools),
    };
    if (!request.stream) return c.json(await completeChat(generation, shape, engine.policyVersion));
    const streamOptions = { usage: request.stream_options?.include_usage ?? false, continuous: request.stream_options?.continuous_usage_stats ?? false };
    return sseResponse(streamChat(generation, shape, streamOptions, engine.policyVersion), {
      onCancel: () => generation.abort(),
      signal: c.req.raw.signal,
    });
  });

  return routes;
}

/** What shapes a response besides the generated tokens. */
interface ChatShape {
  id: string;
  created: number;
  model: string;
  promptIds: readonly number[];
  names: TokenNames;
  /** Top log-probabilities per token; null: no logprobs at all. */
  topLogprobs: number | null;
  returnTokenIds: boolean;
  /** Each choice carries sampling_mask (return_sampling_mask). */
  samplingMask: boolean;
  output: () => AssistantOutput;
}

function finishReasonOf(reason: FinishReason, calledTools: boolean): FinishReason {
  return calledTools && reason === "stop" ? "tool_calls" : reason;
}

function trainingFields(shape: ChatShape, tokens: readonly TokenEvent[]) {
  return {
    prompt_token_ids: [...shape.promptIds],
    generation_token_ids: tokens.map((t) => t.tokenId),
    generation_log_probs: tokens.map((t) => floorLogprob(t.logprob)),
  };
}

async function completeChat(generation: Generation, shape: ChatShape, currentVersion: number): Promise<ChatCompletion> {
  const results = await generation.collect();
  const withLogprobs = shape.topLogprobs !== null;
  const choices = results.map((result): ChatChoice => {
    const text = shape.output().parse(result.text);
    return {
      index: result.index,
      message: {
        role: "assistant",
        content: text.content,
        refusal: null,
        annotations: null,
        audio: null,
        function_call: null,
        ...(text.calls.length > 0 ? { tool_calls: text.calls } : {}),
        reasoning_content: text.reasoning,
        reasoning: text.reasoning,
        ...(withLogprobs ? trainingFields(shape, result.tokens) : {}),
      },
      logprobs: withLogprobs ? { content: result.tokens.map((t) => shape.names.content(t, shape.topLogprobs!)) } : null,
      finish_reason: finishReasonOf(result.finishReason, text.calls.length > 0),
      stop_reason: result.stopReason,
      token_ids: shape.returnTokenIds ? result.tokens.map((t) => t.tokenId) : null,
      ...(shape.samplingMask ? { sampling_mask: samplingMasksOf(result.tokens) } : {}),
    };
  });
  const tokens = results.flatMap((r) => r.tokens);
  return {
    id: shape.id,
    object: "chat.completion",
    created: shape.created,
    model: shape.model,
    choices,
    service_tier: null,
    system_fingerprint: null,
    usage: usageOf(shape.promptIds.length, tokens.length),
    prompt_logprobs: promptLogprobsOf(shape.names.texts, results[0]?.tokens[0]?.promptLogprobs),
    prompt_token_ids: shape.returnTokenIds ? [...shape.promptIds] : null,
    kv_transfer_params: null,
    ...versionFields(generation.engine, policyVersionOf(currentVersion, tokens)),
  };
}

function isEmptyDelta(delta: ChatDelta): boolean {
  return Object.keys(delta).length === 0;
}

/** A streamed assistant piece as a chat delta; `calls` counts the choice's tool calls so far (their indices). */
export function chatDelta(piece: AssistantDelta, calls: { count: number }, into: ChatDelta = {}): ChatDelta {
  if (piece.reasoning) {
    into.reasoning_content = (into.reasoning_content ?? "") + piece.reasoning;
    into.reasoning = into.reasoning_content;
  }
  if (piece.content) into.content = (into.content ?? "") + piece.content;
  for (const call of piece.calls) {
    (into.tool_calls ??= []).push({ index: calls.count++, id: call.id, type: "function", function: { ...call.function } });
  }
  return into;
}

async function* streamChat(
  generation: Generation,
  shape: ChatShape,
  options: { usage: boolean; continuous: boolean },
  currentVersion: number,
): AsyncGenerator<string> {
  const n = generation.requests.length;
  const withLogprobs = shape.topLogprobs !== null;
  let version = currentVersion;
  let generated = 0;
  const usage = () => usageOf(shape.promptIds.length, generated);
  const chunk = (choices: ChatChunkChoice[], extra: Partial<ChatCompletionChunk> = {}): string => {
    const out: ChatCompletionChunk = {
      id: shape.id,
      object: "chat.completion.chunk",
      created: shape.created,
      model: shape.model,
      choices,
      // With include_usage every chunk but the last carries usage as null, as OpenAI streams it.
      ...(options.continuous ? { usage: usage() } : options.usage ? { usage: null } : {}),
      ...extra,
      ...versionFields(generation.engine, version),
    };
    return sseData(out);
  };
  for (let i = 0; i < n; i++) {
    const delta: ChatDelta = { role: "assistant", content: "" };
    if (withLogprobs) delta.prompt_token_ids = [...shape.promptIds];
    const first = i === 0 && shape.returnTokenIds ? { prompt_token_ids: [...shape.promptIds] } : {};
    yield chunk([{ index: i, delta, logprobs: null, finish_reason: null, stop_reason: null }], first);
  }
  const outputs = Array.from({ length: n }, () => shape.output());
  const calls = Array.from({ length: n }, () => ({ count: 0 }));
  for await (const event of generation.events()) {
    const output = outputs[event.index];
    const delta = chatDelta(output.push(event.text), calls[event.index]);
    if (event.kind === "token") {
      const { token } = event;
      generated++;
      version = Math.max(version, token.policyVersion);
      if (withLogprobs) {
        delta.generation_token_ids = [token.tokenId];
        delta.generation_log_probs = [floorLogprob(token.logprob)];
      }
      if (isEmptyDelta(delta) && !withLogprobs && !shape.returnTokenIds && !shape.samplingMask) continue;
      yield chunk([{
        index: event.index,
        delta,
        logprobs: withLogprobs ? { content: [shape.names.content(token, shape.topLogprobs!)] } : null,
        finish_reason: null,
        stop_reason: null,
        ...(shape.returnTokenIds ? { token_ids: [token.tokenId] } : {}),
        ...(shape.samplingMask ? { sampling_mask: samplingMasksOf([token]) } : {}),
      }]);
    } else {
      chatDelta(output.flush(), calls[event.index], delta);
      const finish = finishReasonOf(event.finishReason, output.calledTools);
      yield chunk([{ index: event.index, delta, logprobs: null, finish_reason: finish, stop_reason: event.stopReason }]);
    }
  }
  if (options.usage) yield chunk([], { usage: usage() });
  yield SSE_DONE;
}
