/**
 * The JSON tool-call format of Llama 3.1+ models: the output is one or more JSON objects
 * `{"name": ..., "parameters": {...}}`, separated by `;`, optionally after `<|python_tag|>`. As vLLM's
 * `llama3_json` parser: an output that does not open with `{` (or the tag) is content; one that does but does not
 * parse stays content too.
 */
import { callFromJson } from "./hermes.ts";
import type { ParsedToolCall, ToolCallDelta, ToolCallExtraction, ToolCallParser, ToolCallStream } from "./format.ts";

const PYTHON_TAG = "<|python_tag|>";

// The index just past the JSON object that starts at `start` (a `{`), or -1 if it does not close.
function objectEnd(text: string, start: number): number {
  let depth = 0;
  let inString = false;
  for (let i = start; i < text.length; i++) {
    const ch = text[i];
    if (inString) {
      if (ch === "\\") i++;
      else if (ch === '"') inString = false;
    } else if (ch === '"') inString = true;
    else if (ch === "{" || ch === "[") depth++;
    else if (ch === "}" || ch === "]") {
      if (--depth === 0) return i + 1;
    }
  }
  return -1;
}

function parseCalls(text: string): ParsedToolCall[] | null {
  let body = text.trimStart();
  if (body.startsWith(PYTHON_TAG)) body = body.slice(PYTHON_TAG.length);
  const calls: ParsedToolCall[] = [];
  let at = 0;
  while (true) {
    while (at < body.length && /[\s;]/.test(body[at])) at++;
    if (at >= body.length) break;
    if (body[at] !== "{") return null;
    const end = objectEnd(body, at);
    if (end < 0) return null;
    let call: ParsedToolCall | null;
    try {
      call = callFromJson(JSON.parse(body.slice(at, end)));
    } catch {
      return null;
    }
    if (!call) return null;
    calls.push(call);
    at = end;
  }
  return calls.length > 0 ? calls : null;
}

function opensCall(text: string): boolean {
  const trimmed = text.trimStart();
  return trimmed.startsWith("{") || trimmed.startsWith(PYTHON_TAG);
}

/** The `llama3_json` parser. */
export class Llama3JsonToolParser implements ToolCallParser {
  readonly name = "llama3_json";

  extract(text: string): ToolCallExtraction {
    if (!opensCall(text)) return { content: text, calls: [] };
    const calls = parseCalls(text);
    return calls ? { content: null, calls } : { content: text, calls: [] };
  }

  stream(): ToolCallStream {
    return new Llama3JsonStream(this);
  }
}

/** Decides at the first visible characters: calls are held to the end and parsed whole, anything else streams. */
class Llama3JsonStream implements ToolCallStream {
  #mode: "undecided" | "content" | "calls" = "undecided";
  #buffer = "";

  constructor(readonly parser: Llama3JsonToolParser) {}

  push(text: string): ToolCallDelta {
    if (this.#mode === "content") return { content: text, calls: [] };
    this.#buffer += text;
    if (this.#mode === "calls") return { content: "", calls: [] };
    const trimmed = this.#buffer.trimStart();
    if (trimmed === "" || (trimmed.length < PYTHON_TAG.length && PYTHON_TAG.startsWith(trimmed))) {
      return { content: "", calls: [] };
    }
    if (opensCall(trimmed)) {
      this.#mode = "calls";
      return { content: "", calls: [] };
    }
    this.#mode = "content";
    const content = this.#buffer;
    this.#buffer = "";
    return { content, calls: [] };
  }

  flush(): ToolCallDelta {
    const text = this.#buffer;
    this.#buffer = "";
    if (this.#mode !== "calls") return { content: text, calls: [] };
    const { content, calls } = this.parser.extract(text);
    return { content: content ?? "", calls };
  }
}
