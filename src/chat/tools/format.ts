/**
 * What a tool-call format is: the calls it reads out of a generated text, whole or as the text streams. The
 * formats (hermes.ts, llama3-json.ts) implement it; parser.ts picks one by name.
 */

/** One call as the model wrote it: the function's name and its arguments as a JSON string. */
export interface ParsedToolCall {
  name: string;
  arguments: string;
}

/** A whole text split into content (null when none is left) and calls. */
export interface ToolCallExtraction {
  content: string | null;
  calls: ParsedToolCall[];
}

/** What one streamed piece of text gives: content to show now, and the calls it completed. */
export interface ToolCallDelta {
  content: string;
  calls: ParsedToolCall[];
}

/** Parses one generation's text as it streams. */
export interface ToolCallStream {
  push(text: string): ToolCallDelta;
  /** What is held back when generation ends. */
  flush(): ToolCallDelta;
}

/** A tool-call format. */
export interface ToolCallParser {
  readonly name: string;
  /** Splits a whole generated text. */
  extract(text: string): ToolCallExtraction;
  /** A parser for one streamed generation. */
  stream(): ToolCallStream;
}
