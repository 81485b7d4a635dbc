/**
 * The output items of a Responses API answer (reasoning, message, function_call), built whole or streamed as the
 * events that add them one by one; the last item carries the RL token fields, as NeMo Gym reads them.
 */
import type { AssistantDelta, AssistantText } from "../chat/tools/parser.ts";
import type { ErrorBody } from "./errors.ts";
import type { SampleResult } from "./generate.ts";
import { floorLogprob, randomId, type TokenNames } from "./protocol.ts";
import type { ResponsesRequest } from "./schemas.ts";
import { sseEvent } from "./sse.ts";
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
  /** The trainer's name of a policy version's weights (weight_version); none: null. */
  weightVersionOf?: (policyVersion: number) => string | null;
  /** The sampling the engine runs (a pinned server's values, a request's defaults filled in). */
  sampling: { temperature: number; topP: number };
  /** Prompt tokens the prefix cache held (known once the request is scheduled). */
  cachedTokens: () => number;
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

  /** The event that ends a stream that failed: OpenAI's ResponseErrorEvent, numbered after the events before it. */
  error(body: ErrorBody): string {
    const { code, message, param, type } = body.error;
    // `type` names the event: the error's own type ("server_error") is kept as its code when it has none.
    return sseEvent("error", { type: "error", sequence_number: this.#sequence++, code: code ?? type, message, param });
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
    return sseEvent(type, { type, sequence_number: this.#sequence++, ...fields, ...this.#versions() });
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
      temperature: this.#setup.sampling.temperature,
      text: { format: { type: "text" } },
      tool_choice: request.tool_choice ?? "auto",
      tools: request.tools ?? [],
      top_logprobs: request.top_logprobs ?? null,
      top_p: this.#setup.sampling.topP,
      truncation: "disabled",
      usage: result
        ? {
          input_tokens: inputTokens,
          input_tokens_details: { cached_tokens: this.#setup.cachedTokens() },
          output_tokens: outputTokens,
          output_tokens_details: { reasoning_tokens: 0 },
          total_tokens: inputTokens + outputTokens,
        }
        : null,
      user: null,
      ...this.#versions(),
    };
  }

  /** policy_version, and weight_version beside it. */
  #versions(): { policy_version: number; weight_version: string | null } {
    return { policy_version: this.version, weight_version: this.#setup.weightVersionOf?.(this.version) ?? null };
  }
}
