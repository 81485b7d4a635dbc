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
import { type AssistantDelta, AssistantOutput, type AssistantText, toolCalling } from "../chat/tools/parser.ts";
import { readJson } from "./body.ts";
import { outputParsers } from "./chat-completions.ts";
import type { AppDeps } from "./deps.ts";
import { InvalidRequestError } from "./errors.ts";
import { engineOf, Generation, type SampleResult, samplingParams, textOptions } from "./generate.ts";
import { assertServedModel } from "./models.ts";
import { floorLogprob, nowSeconds, randomId, TokenNames } from "./protocol.ts";
import { type ResponseInputItem, ResponsesRequest } from "./schemas.ts";
import { sseEvent, sseResponse } from "./sse.ts";

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
      messages.push({ role: item.role === "developer" ? "system" : item.role, content: partsText(item.content) });
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
  const format = request.text?.format?.type;
  if (format != null && format !== "text") {
    throw new InvalidRequestError(`text.format of type '${format}' is not supported yet (structured output is not implemented)`, "text.format");
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
    }, promptIds);
    const items = new ResponseItems({
      id: randomId("resp_"),
      createdAt: nowSeconds(),
      model: deps.servedModelName,
      request,
      promptIds: generation.promptIds,
      names: new TokenNames(texts, request.return_tokens_as_token_ids ?? deps.returnTokensAsTokenIds ?? false),
      topLogprobs: withLogprobs ? request.top_logprobs ?? 0 : null,
      version: engine.policyVersion,
    });
    const output = new AssistantOutput(parsers.reasoning, calling);
    if (!request.stream) {
      const [result] = await generation.collect();
      return c.json(items.complete(output.parse(result.text), result));
    }
    return sseResponse(streamResponse(generation, output, items), {
      onCancel: () => generation.abort(),
      signal: c.req.raw.signal,
      formatError: (body) => sseEvent("error", { type: "error", ...(body as { error: object }).error }),
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

type Status = "completed" | "incomplete" | "cancelled";
type OutputItem = Record<string, unknown> & { id: string; type: "reasoning" | "message" | "function_call" };

/** Everything a response says besides its output. */
export interface ResponseSetup {
  id: string;
  createdAt: number;
  model: string;
  request: ResponsesRequest;
  promptIds: readonly number[];
  names: TokenNames;
  topLogprobs: number | null;
  version: number;
}

function statusOf(result: SampleResult): Status {
  return result.finishReason === "length" ? "incomplete" : result.finishReason === "abort" ? "cancelled" : "completed";
}

const reasoningItem = (id: string, text: string, status: string): OutputItem => ({
  id,
  type: "reasoning",
  summary: [],
  content: [{ type: "reasoning_text", text }],
  encrypted_content: null,
  status,
});
const textPart = (text: string, logprobs: unknown[]) => ({ type: "output_text", text, annotations: [], logprobs });
const messageItem = (id: string, text: string, status: string, logprobs: unknown[]): OutputItem => ({
  id,
  type: "message",
  role: "assistant",
  status,
  content: [textPart(text, logprobs)],
});
const callItem = (id: string, call: AssistantText["calls"][number], status: string, args = call.function.arguments): OutputItem => ({
  id,
  type: "function_call",
  call_id: call.id,
  name: call.function.name,
  arguments: args,
  status,
});

/** Builds a response's output items, whole or as the stream of events that adds them one by one. */
export class ResponseItems {
  version: number;
  readonly #setup: ResponseSetup;
  readonly #items: OutputItem[] = [];
  // The newest item: its done event waits until the next item opens or the response ends (the last item gets
  // the token fields).
  #open: OutputItem | null = null;
  #text = "";
  #sequence = 0;

  constructor(setup: ResponseSetup) {
    this.#setup = setup;
    this.version = setup.version;
  }

  /** The non-streaming response. */
  complete(text: AssistantText, result: SampleResult): Record<string, unknown> {
    const status = statusOf(result);
    if (text.reasoning !== null) this.#items.push(reasoningItem(randomId("rs_"), text.reasoning, status));
    if ((text.content ?? "") !== "" || (this.#items.length === 0 && text.calls.length === 0)) {
      this.#items.push(messageItem(randomId("msg_"), text.content ?? "", status, this.#logprobs(result)));
    }
    for (const call of text.calls) this.#items.push(callItem(randomId("fc_"), call, "completed"));
    Object.assign(this.#items[this.#items.length - 1], this.#tokenFields(result));
    for (const token of result.tokens) this.version = Math.max(this.version, token.policyVersion);
    return this.#response(status, result);
  }

  /** The events that open a stream. */
  *start(): Generator<string> {
    const response = this.#response("in_progress", null);
    yield this.#event("response.created", { response });
    yield this.#event("response.in_progress", { response });
  }

  /** The events of a streamed piece of output. */
  *delta(piece: AssistantDelta): Generator<string> {
    if (piece.reasoning) {
      if (this.#open?.type !== "reasoning") yield* this.#openItem(reasoningItem(randomId("rs_"), "", "in_progress"), { type: "reasoning_text", text: "" });
      this.#text += piece.reasoning;
      yield this.#event("response.reasoning_text.delta", { ...this.#where(), delta: piece.reasoning });
    }
    if (piece.content) {
      if (this.#open?.type !== "message") yield* this.#openItem(messageItem(randomId("msg_"), "", "in_progress", []), textPart("", []));
      this.#text += piece.content;
      yield this.#event("response.output_text.delta", { ...this.#where(), delta: piece.content, logprobs: [] });
    }
    for (const call of piece.calls) {
      yield* this.#openItem(callItem(randomId("fc_"), call, "in_progress", ""), null);
      const { item_id, output_index } = this.#where();
      const args = call.function.arguments;
      yield this.#event("response.function_call_arguments.delta", { item_id, output_index, delta: args });
      yield this.#event("response.function_call_arguments.done", { item_id, output_index, name: call.function.name, arguments: args });
      this.#open = callItem(this.#open!.id, call, "completed");
      this.#items[output_index] = this.#open;
    }
  }

  /** The events that end a stream, the last one holding the whole response. */
  *finish(result: SampleResult): Generator<string> {
    const status = statusOf(result);
    if (this.#items.length === 0) yield* this.#openItem(messageItem(randomId("msg_"), "", "in_progress", []), textPart("", []));
    yield* this.#closeOpen(status, result);
    const type = status === "incomplete" ? "response.incomplete" : "response.completed";
    yield this.#event(type, { response: this.#response(status, result) });
  }

  *#openItem(item: OutputItem, part: Record<string, unknown> | null): Generator<string> {
    yield* this.#closeOpen("completed", null);
    this.#items.push(item);
    this.#open = item;
    this.#text = "";
    // An item opens empty; its content part follows in its own event.
    const added = "content" in item ? { ...item, content: [] } : item;
    yield this.#event("response.output_item.added", { output_index: this.#items.length - 1, item: added });
    if (part) yield this.#event("response.content_part.added", { ...this.#where(), part });
  }

  // Closes the newest item; at the end (result given) with the final status and the token fields.
  *#closeOpen(status: Status, result: SampleResult | null): Generator<string> {
    const open = this.#open;
    if (!open) return;
    this.#open = null;
    const where = this.#where(this.#items.indexOf(open), open.id);
    let done: OutputItem = open;
    if (open.type === "reasoning") {
      done = reasoningItem(open.id, this.#text, status);
      yield this.#event("response.reasoning_text.done", { ...where, text: this.#text });
      yield this.#event("response.content_part.done", { ...where, part: { type: "reasoning_text", text: this.#text } });
    } else if (open.type === "message") {
      const logprobs = result ? this.#logprobs(result) : [];
      done = messageItem(open.id, this.#text, status, logprobs);
      yield this.#event("response.output_text.done", { ...where, text: this.#text, logprobs });
      yield this.#event("response.content_part.done", { ...where, part: textPart(this.#text, logprobs) });
    }
    if (result) done = { ...done, ...this.#tokenFields(result) };
    this.#items[where.output_index] = done;
    yield this.#event("response.output_item.done", { output_index: where.output_index, item: done });
  }

  #where(index = this.#items.length - 1, id = this.#items[index].id) {
    return { item_id: id, output_index: index, content_index: 0 };
  }

  #event(type: string, fields: Record<string, unknown>): string {
    return sseEvent(type, { type, sequence_number: this.#sequence++, ...fields, policy_version: this.version });
  }

  #logprobs(result: SampleResult): unknown[] {
    const top = this.#setup.topLogprobs;
    return top === null ? [] : result.tokens.map((t) => this.#setup.names.content(t, top));
  }

  #tokenFields(result: SampleResult) {
    return {
      prompt_token_ids: [...this.#setup.promptIds],
      generation_token_ids: result.tokens.map((t) => t.tokenId),
      generation_log_probs: result.tokens.map((t) => floorLogprob(t.logprob)),
    };
  }

  #response(status: Status | "in_progress", result: SampleResult | null): Record<string, unknown> {
    const { request } = this.#setup;
    const outputTokens = result?.tokens.length ?? 0;
    const inputTokens = this.#setup.promptIds.length;
    return {
      id: this.#setup.id,
      object: "response",
      created_at: this.#setup.createdAt,
      model: this.#setup.model,
      status,
      background: false,
      error: null,
      incomplete_details: status === "incomplete" ? { reason: "max_output_tokens" } : null,
      instructions: request.instructions ?? null,
      max_output_tokens: request.max_output_tokens ?? null,
      max_tool_calls: null,
      metadata: request.metadata ?? {},
      output: result ? this.#items : [],
      parallel_tool_calls: request.parallel_tool_calls ?? true,
      previous_response_id: null,
      reasoning: null,
      service_tier: "auto",
      store: false,
      temperature: request.temperature ?? 1,
      text: { format: { type: "text" } },
      tool_choice: request.tool_choice ?? "auto",
      tools: request.tools ?? [],
      top_logprobs: request.top_logprobs ?? null,
      top_p: request.top_p ?? 1,
      truncation: "disabled",
      usage: result
        ? {
          input_tokens: inputTokens,
          input_tokens_details: { cached_tokens: 0 },
          output_tokens: outputTokens,
          output_tokens_details: { reasoning_tokens: 0 },
          total_tokens: inputTokens + outputTokens,
        }
        : null,
      user: null,
      policy_version: this.version,
    };
  }
}
