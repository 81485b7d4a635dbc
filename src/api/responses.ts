/**
 * POST /v1/responses: the Responses API over the chat pipeline. Input items become chat messages (an earlier
 * response's output items, token fields included, become one assistant turn, so the splice continues it on
 * policy); the generation becomes output items (reasoning, message, function_call), the last of which carries
 * the RL token fields, as NeMo Gym reads them.
 */
import { Hono } from "hono";
import { TokenTexts } from "../chat/detokenize.ts";
import type { ChatMessage } from "../chat/messages.ts";
import { chatPromptIds } from "../chat/prompt.ts";
import { AssistantOutput, toolCalling } from "../chat/tools/parser.ts";
import { readJson } from "./body.ts";
import { outputParsers } from "./chat-completions.ts";
import type { AppDeps } from "./deps.ts";
import { InvalidRequestError } from "./errors.ts";
import { engineOf, Generation, type SampleResult, samplingParams, textOptions } from "./generate.ts";
import { assertServedModel } from "./models.ts";
import { nowSeconds, randomId, TokenNames } from "./protocol.ts";
import { nameRequest } from "./request-names.ts";
import { type ResponseInputItem, ResponsesRequest } from "./schemas.ts";
import { sseResponse } from "./sse.ts";
import { ResponseItems } from "./response-items.ts";
import { constraintFactory, responseFormatSpec, toolChoiceSpec } from "./structured-outputs.ts";

function partsText(content: string | { type: string; text?: string }[]): string {
  return typeof content === "string" ? content : content.map((part) => part.text ?? "").join("");
}

/** The chat messages of a Responses request. */
export function inputMessages(request: ResponsesRequest): ChatMessage[] {
  const messages: ChatMessage[] = [];
  if (request.instructions) messages.push({ role: "system", content: request.instructions });
  if (typeof request.input === "string") {
    messages.push({ role: "user", content: request.input });
    return messages;
  }
  // Consecutive output items (reasoning, assistant message, function calls) are one assistant turn.
  let turn = null as ChatMessage | null;
  const open = (): ChatMessage => {
    if (!turn) messages.push(turn = { role: "assistant", content: null });
    return turn;
  };
  const carry = (message: ChatMessage, item: Extract<ResponseInputItem, { prompt_token_ids?: unknown }>) => {
    if (item.prompt_token_ids != null) {
      message.prompt_token_ids = item.prompt_token_ids;
      message.generation_token_ids = item.generation_token_ids ?? [];
    }
  };
  for (const item of request.input) {
    if (item.type === "message" && item.role === "assistant") {
      const message = open();
      message.content = (message.content ?? "") + partsText(item.content);
      carry(message, item);
    } else if (item.type === "message") {
      turn = null;
      messages.push({ role: item.role, content: partsText(item.content) });
    } else if (item.type === "function_call") {
      const message = open();
      (message.tool_calls ??= []).push({ id: item.call_id, type: "function", function: { name: item.name, arguments: item.arguments } });
      carry(message, item);
    } else if (item.type === "function_call_output") {
      turn = null;
      messages.push({ role: "tool", tool_call_id: item.call_id, content: partsText(item.output) });
    } else {
      // Reasoning opens a turn: after content or calls it is the next one.
      if (turn && (turn.content != null || turn.tool_calls)) turn = null;
      const message = open();
      message.reasoning_content = partsText(item.content?.length ? item.content : item.summary);
      carry(message, item);
    }
  }
  return messages;
}

function checkRequest(request: ResponsesRequest): void {
  if (request.previous_response_id != null) {
    throw new InvalidRequestError("previous_response_id is not supported: this server stores no responses; send the whole input", "previous_response_id");
  }
}

/** The Responses routes. */
export function responseRoutes(deps: AppDeps): Hono {
  const texts = new TokenTexts(deps.tokenizer);
  const parsers = outputParsers(deps);
  const routes = new Hono();

  routes.post("/v1/responses", async (c) => {
    const request = ResponsesRequest.parse(await readJson(c));
    assertServedModel(deps, request.model);
    checkRequest(request);
    const engine = engineOf(deps);
    const tools = (request.tools ?? []).map(({ type: _type, name, description, parameters }) => ({
      type: "function" as const,
      function: { name, description, parameters },
    }));
    const choice = typeof request.tool_choice === "object" && request.tool_choice !== null
      ? { function: { name: request.tool_choice.name } }
      : request.tool_choice;
    const calling = toolCalling(parsers.tools, tools, choice, request.parallel_tool_calls);
    // text.format json_schema carries its schema beside its type (Responses' flat shape).
    const format = request.text?.format;
    const structured = format && format.type !== "text" ? responseFormatSpec(format, "text.format", false, true) : null;
    const forced = toolChoiceSpec(parsers.tools, tools, choice, request.parallel_tool_calls);
    const constraint = await constraintFactory(deps, forced ?? structured);
    const promptIds = chatPromptIds(deps.tokenizer, {
      messages: inputMessages(request),
      tools: tools.length > 0 ? tools : null,
      chat_template_kwargs: request.chat_template_kwargs,
      add_generation_prompt: true,
      required_prefix_token_ids: request.required_prefix_token_ids,
    });
    const withLogprobs = request.top_logprobs != null || (request.include ?? []).includes("message.output_text.logprobs");
    const params = samplingParams(deps, request, {
      promptLength: promptIds.length,
      maxTokens: request.max_output_tokens,
      defaultMaxTokens: "room",
      topLogprobs: withLogprobs ? request.top_logprobs ?? 0 : null,
      promptParam: "input",
    });
    const generation = new Generation({
      engine,
      tokenizer: deps.tokenizer,
      params,
      text: textOptions(request),
      signal: c.req.raw.signal,
      constraint,
    }, promptIds);
    const items = new ResponseItems({
      id: nameRequest(randomId("resp_"), generation),
      createdAt: nowSeconds(),
      model: deps.servedModelName,
      request,
      promptIds: generation.promptIds,
      names: new TokenNames(texts, request.return_tokens_as_token_ids ?? deps.returnTokensAsTokenIds ?? false),
      topLogprobs: withLogprobs ? request.top_logprobs ?? 0 : null,
      version: engine.policyVersion,
      weightVersionOf: (version) => engine.weightVersionOf?.(version) ?? null,
      sampling: { temperature: params.temperature, topP: params.top_p },
      cachedTokens: () => generation.requests[0].cachedPromptTokens,
    });
    const output = new AssistantOutput(parsers.reasoning, calling);
    if (!request.stream) {
      const [result] = await generation.collect();
      return c.json(items.complete(output.parse(result.text), result));
    }
    return sseResponse(streamResponse(generation, output, items), {
      onCancel: () => generation.abort(),
      signal: c.req.raw.signal,
      formatError: (body) => items.error(body),
    });
  });

  return routes;
}

async function* streamResponse(generation: Generation, output: AssistantOutput, items: ResponseItems): AsyncGenerator<string> {
  yield* items.start();
  const result: SampleResult = { index: 0, tokens: [], text: "", finishReason: "abort", stopReason: null };
  for await (const event of generation.events()) {
    result.text += event.text;
    yield* items.delta(output.push(event.text));
    if (event.kind === "token") {
      result.tokens.push(event.token);
      items.version = Math.max(items.version, event.token.policyVersion);
    } else {
      yield* items.delta(output.flush());
      Object.assign(result, { finishReason: event.finishReason, stopReason: event.stopReason });
    }
  }
  yield* items.finish(result);
}
