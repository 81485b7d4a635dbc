/**
 * The Hermes tool-call format of Qwen models: each call is `<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>`.
 * As vLLM's `hermes` parser: the content is the text before the first call; a final call left unclosed (generation
 * stopped) still counts; if any call is not valid JSON the whole text stays content.
 */
import { partialTagLength } from "../stop.ts";
import type { ParsedToolCall, ToolCallDelta, ToolCallExtraction, ToolCallParser, ToolCallStream } from "./format.ts";

const OPEN = "<tool_call>";
const CLOSE = "</tool_call>";

/** A parsed JSON value as a call: an object with a string `name` and `arguments` (or `parameters`). */
export function callFromJson(value: unknown): ParsedToolCall | null {
  if (typeof value !== "object" || value === null || Array.isArray(value)) return null;
  const { name, arguments: args, parameters } = value as Record<string, unknown>;
  if (typeof name !== "string" || name === "") return null;
  const given = args ?? parameters ?? {};
  return { name, arguments: typeof given === "string" ? given : JSON.stringify(given) };
}

function parseCall(body: string): ParsedToolCall | null {
  try {
    return callFromJson(JSON.parse(body));
  } catch {
    return null;
  }
}

/** The `hermes` parser. */
export class HermesToolParser implements ToolCallParser {
  readonly name = "hermes";

  extract(text: string): ToolCallExtraction {
    const first = text.indexOf(OPEN);
    if (first < 0) return { content: text, calls: [] };
    const calls: ParsedToolCall[] = [];
    let at = first;
    while (at >= 0) {
      const start = at + OPEN.length;
      const end = text.indexOf(CLOSE, start);
      const call = parseCall(text.slice(start, end < 0 ? text.length : end));
      if (!call) return { content: text, calls: [] };
      calls.push(call);
      at = end < 0 ? -1 : text.indexOf(OPEN, end + CLOSE.length);
    }
    const content = text.slice(0, first);
    return { content: content === "" ? null : content, calls };
  }

  stream(): ToolCallStream {
    return new HermesStream();
  }
}

/** Streams content until a `<tool_call>` opens, then holds each call until it closes and emits it whole. */
class HermesStream implements ToolCallStream {
  #buffer = "";
  #inCall = false;
  #sawCall = false;

  push(text: string): ToolCallDelta {
    const out: ToolCallDelta = { content: "", calls: [] };
    this.#buffer += text;
    while (true) {
      if (!this.#inCall) {
        const at = this.#buffer.indexOf(OPEN);
        const end = at >= 0 ? at : this.#buffer.length - partialTagLength(this.#buffer, OPEN);
        // After the first call, text between calls is dropped, as the whole-text parse drops it.
        if (!this.#sawCall) out.content += this.#buffer.slice(0, end);
        if (at < 0) {
          this.#buffer = this.#buffer.slice(end);
          return out;
        }
        this.#buffer = this.#buffer.slice(at + OPEN.length);
        this.#inCall = true;
      }
      const close = this.#buffer.indexOf(CLOSE);
      if (close < 0) return out;
      this.#finishCall(this.#buffer.slice(0, close), true, out);
      this.#buffer = this.#buffer.slice(close + CLOSE.length);
      this.#inCall = false;
    }
  }

  flush(): ToolCallDelta {
    const out: ToolCallDelta = { content: "", calls: [] };
    if (this.#inCall) this.#finishCall(this.#buffer, false, out);
    else if (!this.#sawCall) out.content = this.#buffer;
    this.#buffer = "";
    this.#inCall = false;
    return out;
  }

  #finishCall(body: string, closed: boolean, out: ToolCallDelta): void {
    const call = parseCall(body);
    if (call) {
      out.calls.push(call);
      this.#sawCall = true;
    } else {
      out.content += OPEN + body + (closed ? CLOSE : "");
    }
  }
}
