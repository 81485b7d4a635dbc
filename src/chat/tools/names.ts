/**
 * The tool-call parsers' names, apart from the parsers: the config's `--tool-call-parser` enum and the parser
 * registry (parser.ts) both read this list, and neither has to load the other.
 */

/** The names `--tool-call-parser` accepts. */
export const TOOL_CALL_PARSERS = ["hermes", "llama3_json"] as const;
export type ToolCallParserName = (typeof TOOL_CALL_PARSERS)[number];
