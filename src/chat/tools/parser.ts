/**
 * Tool-call parsers: the generated text -> the function calls the model wrote, in the format its chat template
 * taught it. Chosen by name (`--tool-call-parser`). Text that does not parse stays content: never an error.
 * AssistantOutput puts the reasoning parser and the tool-call parser together over one generation's text.
 */
import { type ReasoningParserName, ReasoningStream, splitReasoning } from "../reasoning.ts";
import type { ParsedToolCall, ToolCallParser, ToolCallStream } from "./format.ts";
import { HermesToolParser } from "./hermes.ts";
import { Llama3JsonToolParser } from "./llama3-json.ts";
import { TOOL_CALL_PARSERS } from "./names.ts";

/** An unknown parser name. */
export class UnknownToolCallParserError extends Error {
  constructor(name: string) {
    super(`unknown tool call parser '${name}'; known: ${TOOL_CALL_PARSERS.join(", ")}`);
    this.name = "UnknownToolCallParserError";
  }
}

/** The parser called `name`. */
export function toolCallParser(name: string): ToolCallParser {
  switch (name) {
    case "hermes":
      return new HermesToolParser();
    case "llama3_json":
      return new Llama3JsonToolParser();
    default:
      throw new UnknownToolCallParserError(name);
  }
}

/** The request's `tool_choice`: OpenAI's strings or a named function. */
export type ToolChoice = "none" | "auto" | "required" | { type?: "function"; function: { name: string } } | null | undefined;

/** A tool_choice that cannot be met (a named function not among the tools, or no tools at all). */
export class ToolChoiceError extends Error {
  readonly param = "tool_choice";
  constructor(message: string) {
    super(message);
    this.name = "ToolChoiceError";
  }
}

/** How one request's tool calls are read: the parser, and which calls tool_choice and parallel_tool_calls keep. */
export interface ToolCalling {
  parser: ToolCallParser;
  /** Keep only calls of this function (a named tool_choice). */
  only: string | null;
  /** Keep more than one call. */
  parallel: boolean;
}

/**
 * The tool calling of a request, or null when its output is not parsed for calls (no tools, tool_choice "none",
 * or no parser). "required" and a named choice are enforced while generating by a grammar of the parser's format
 * (api/structured-outputs.ts); the output is parsed as with "auto", and a named choice keeps only its own calls.
 */
export function toolCalling(
  parserName: string | null,
  tools: readonly { function: { name: string } }[] | null | undefined,
  choice: ToolChoice,
  parallel: boolean | null | undefined,
): ToolCalling | null {
  const names = (tools ?? []).map((tool) => tool.function.name);
  const named = typeof choice === "object" && choice !== null ? choice.function.name : null;
  if ((named !== null || choice === "required") && names.length === 0) {
    throw new ToolChoiceError(`tool_choice ${named !== null ? `'${named}'` : "'required'"} needs \`tools\``);
  }
  if (named !== null && !names.includes(named)) {
    throw new ToolChoiceError(`tool_choice names the function '${named}', which is not among the request's tools`);
  }
  if (names.length === 0 || choice === "none" || parserName === null) return null;
  return { parser: toolCallParser(parserName), only: named, parallel: parallel ?? true };
}

/** A call as the API returns it: with its id ("chatcmpl-tool-" + 32 hex digits, as vLLM). */
export interface IdentifiedToolCall {
  id: string;
  type: "function";
  function: ParsedToolCall;
}

/** A whole assistant output: reasoning, content and calls (null when it has none of the text). */
export interface AssistantText {
  reasoning: string | null;
  content: string | null;
  calls: IdentifiedToolCall[];
}

/** What one streamed piece of an assistant output gives ("" when none). */
export interface AssistantDelta {
  reasoning: string;
  content: string;
  calls: IdentifiedToolCall[];
}

/** One generation's text -> reasoning (by the reasoning parser), then content and tool calls (by the tool parser). */
export class AssistantOutput {
  readonly #reasoningParser: ReasoningParserName | null;
  readonly #reasoning: ReasoningStream | null;
  readonly #tools: ToolCalling | null;
  readonly #toolStream: ToolCallStream | null;
  #calls = 0;

  constructor(reasoning: ReasoningParserName | null, tools: ToolCalling | null) {
    this.#reasoningParser = reasoning;
    this.#reasoning = reasoning ? new ReasoningStream(reasoning) : null;
    this.#tools = tools;
    this.#toolStream = tools ? tools.parser.stream() : null;
  }

  /** Whether any tool call was returned. */
  get calledTools(): boolean {
    return this.#calls > 0;
  }

  /** Splits a whole generated text. */
  parse(text: string): AssistantText {
    const split = this.#reasoningParser ? splitReasoning(this.#reasoningParser, text) : { reasoning: null, content: text };
    if (!this.#tools) return { ...split, calls: [] };
    const extracted = this.#tools.parser.extract(split.content ?? "");
    const calls = this.#accept(extracted.calls);
    if (calls.length === 0) return { ...split, calls: [] };
    return { reasoning: split.reasoning, content: extracted.content, calls };
  }

  /** Adds a streamed piece of generated text. */
  push(text: string): AssistantDelta {
    const split = this.#reasoning ? this.#reasoning.push(text) : { reasoning: "", content: text };
    return { reasoning: split.reasoning, ...this.#pushContent(split.content, false) };
  }

  /** What is held back when generation ends. */
  flush(): AssistantDelta {
    const split = this.#reasoning ? this.#reasoning.flush() : { reasoning: "", content: "" };
    return { reasoning: split.reasoning, ...this.#pushContent(split.content, true) };
  }

  #pushContent(content: string, end: boolean): { content: string; calls: IdentifiedToolCall[] } {
    if (!this.#toolStream) return { content, calls: [] };
    const first = this.#toolStream.push(content);
    const last = end ? this.#toolStream.flush() : { content: "", calls: [] };
    return { content: first.content + last.content, calls: this.#accept([...first.calls, ...last.calls]) };
  }

  #accept(calls: readonly ParsedToolCall[]): IdentifiedToolCall[] {
    const kept: IdentifiedToolCall[] = [];
    for (const call of calls) {
      if (this.#tools!.only !== null && call.name !== this.#tools!.only) continue;
      if (!this.#tools!.parallel && this.#calls > 0) continue;
      this.#calls++;
      kept.push({ id: `chatcmpl-tool-${crypto.randomUUID().replaceAll("-", "")}`, type: "function", function: call });
    }
    return kept;
  }
}
