/**
 * Structured outputs: the request fields that constrain what is generated, and the grammar each sample gets.
 * - OpenAI's `response_format` (json_object, json_schema) on chat and completions, `text.format` on responses;
 * - vLLM's `structured_outputs` {json | regex | choice | grammar | json_object | structural_tag} with its
 *   `disable_any_whitespace`, and the older `guided_json`, `guided_regex`, `guided_choice`, `guided_grammar`;
 * - `tool_choice` "required" or a named function: a grammar of the tool parser's call format, arguments valid
 *   against the tool's parameters.
 * Whitespace: JSON is constrained to one line (", " and ": " between items) unless a request sets
 * `disable_any_whitespace: false`: a model that drifts can otherwise spend max_tokens on spaces and newlines.
 */
import { z } from "zod";
import type { ChatTokenizer } from "../chat/template.ts";
import type { TokenConstraint } from "../engine/constraint.ts";
import { type CompiledConstraint, GrammarError, Grammars, type GrammarSpec } from "../engine/grammar/grammars.ts";
import { ReasoningGate, type ReasoningTags } from "../engine/grammar/reasoning-gate.ts";
import { InvalidRequestError } from "./errors.ts";

/** The request fields of vLLM's structured outputs (chat and completions); checked by structuredSpec. */
export const StructuredOutputFields = {
  structured_outputs: z.looseObject({}).nullish(),
  guided_json: z.unknown().optional(),
  guided_regex: z.unknown().optional(),
  guided_choice: z.unknown().optional(),
  guided_grammar: z.unknown().optional(),
  guided_whitespace_pattern: z.unknown().optional(),
};

/** A grammar asked for, and the field that asked (named by a 400 when it does not compile). */
export interface RequestedGrammar {
  spec: GrammarSpec;
  param: string;
}

interface StructuredRequest {
  response_format?: { type: string; [key: string]: unknown } | null;
  structured_outputs?: Record<string, unknown> | null;
  guided_json?: unknown;
  guided_regex?: unknown;
  guided_choice?: unknown;
  guided_grammar?: unknown;
  guided_whitespace_pattern?: unknown;
}

/** The grammar a chat or completions request asks for, or null; a 400 naming the field when it is malformed. */
export function structuredSpec(request: StructuredRequest): RequestedGrammar | null {
  const so = request.structured_outputs ?? {};
  const anyWhitespace = so.disable_any_whitespace === false;
  if (so.disable_any_whitespace != null && typeof so.disable_any_whitespace !== "boolean") {
    throw new InvalidRequestError("structured_outputs.disable_any_whitespace must be a boolean", "structured_outputs.disable_any_whitespace");
  }
  for (const [param, value] of [["structured_outputs.whitespace_pattern", so.whitespace_pattern], ["guided_whitespace_pattern", request.guided_whitespace_pattern]] as const) {
    if (value != null) {
      throw new InvalidRequestError(`${param} is not supported (set structured_outputs.disable_any_whitespace instead)`, param);
    }
  }
  const found: RequestedGrammar[] = [];
  const format = request.response_format;
  if (format && format.type !== "text") found.push(responseFormatSpec(format, "response_format", anyWhitespace));
  const sources: [string, unknown][] = [
    ["structured_outputs.json", so.json],
    ["structured_outputs.regex", so.regex],
    ["structured_outputs.choice", so.choice],
    ["structured_outputs.grammar", so.grammar],
    ["structured_outputs.structural_tag", so.structural_tag],
    ["guided_json", request.guided_json],
    ["guided_regex", request.guided_regex],
    ["guided_choice", request.guided_choice],
    ["guided_grammar", request.guided_grammar],
  ];
  if (so.json_object === true) found.push({ spec: { kind: "json_object", anyWhitespace }, param: "structured_outputs.json_object" });
  for (const [param, value] of sources) {
    if (value == null) continue;
    const kind = param.replace(/^(structured_outputs\.|guided_)/, "");
    found.push({ spec: fieldSpec(kind, value, param, anyWhitespace), param });
  }
  if (found.length > 1) {
    throw new InvalidRequestError(
      `only one structured output may be asked for; the request gives ${found.map((f) => f.param).join(", ")}`,
      found[1].param,
    );
  }
  return found[0] ?? null;
}

/** The grammar of a response_format (chat, completions) or text.format (responses; `flat` puts schema beside type). */
export function responseFormatSpec(
  format: { type: string; [key: string]: unknown },
  param: string,
  anyWhitespace = false,
  flat = false,
): RequestedGrammar {
  switch (format.type) {
    case "json_object":
      return { spec: { kind: "json_object", anyWhitespace }, param };
    case "json_schema": {
      const holder = flat ? format : format.json_schema;
      const at = flat ? param : `${param}.json_schema`;
      if (!isObject(holder)) throw new InvalidRequestError(`${at} must be an object with a schema`, at);
      const schema = holder.schema ?? holder.json_schema;
      return { spec: jsonSchemaSpec(schema, `${at}.schema`, anyWhitespace), param: `${at}.schema` };
    }
    case "structural_tag":
      return { spec: structuralTagSpec(format, param), param };
    default:
      throw new InvalidRequestError(
        `${param}.type must be "text", "json_object", "json_schema" or "structural_tag", not '${format.type}'`,
        `${param}.type`,
      );
  }
}

function fieldSpec(kind: string, value: unknown, param: string, anyWhitespace: boolean): GrammarSpec {
  switch (kind) {
    case "json":
      return jsonSchemaSpec(typeof value === "string" ? parseJson(value, param) : value, param, anyWhitespace);
    case "regex":
      if (typeof value !== "string") throw new InvalidRequestError(`${param} must be a string`, param);
      return { kind: "regex", pattern: value };
    case "choice":
      if (!Array.isArray(value) || value.length === 0 || !value.every((v) => typeof v === "string")) {
        throw new InvalidRequestError(`${param} must be a non-empty array of strings`, param);
      }
      return { kind: "choice", choices: value };
    case "grammar":
      if (typeof value !== "string" || value.trim() === "") throw new InvalidRequestError(`${param} must be an EBNF grammar (a string)`, param);
      return { kind: "grammar", ebnf: value };
    default:
      return structuralTagSpec(typeof value === "string" ? parseJson(value, param) : value, param);
  }
}

function jsonSchemaSpec(schema: unknown, param: string, anyWhitespace: boolean): GrammarSpec {
  if (typeof schema !== "boolean" && !isObject(schema)) {
    throw new InvalidRequestError(`${param} must be a JSON Schema: an object`, param);
  }
  return { kind: "json_schema", schema: JSON.stringify(schema), anyWhitespace };
}

/**
 * XGrammar's structural tag ({"type": "structural_tag", "format": ...}), or vLLM's older form
 * ({"structures": [{"begin", "schema", "end"}], "triggers": [...]}), as the newer one.
 */
function structuralTagSpec(value: unknown, param: string): GrammarSpec {
  if (!isObject(value)) throw new InvalidRequestError(`${param} must be a structural tag object`, param);
  if (Array.isArray(value.structures) && Array.isArray(value.triggers)) {
    const tags = value.structures.map((s: Record<string, unknown>) => ({
      type: "tag",
      begin: s.begin,
      content: { type: "json_schema", json_schema: s.schema ?? {} },
      end: s.end,
    }));
    return {
      kind: "structural_tag",
      tag: JSON.stringify({ type: "structural_tag", format: { type: "triggered_tags", triggers: value.triggers, tags } }),
    };
  }
  if (!isObject(value.format)) throw new InvalidRequestError(`${param} must have a format (or structures and triggers)`, param);
  return { kind: "structural_tag", tag: JSON.stringify({ type: "structural_tag", format: value.format }) };
}

/** The grammar that forces tool calls (tool_choice "required" or named), or null when tool_choice leaves it free. */
export function toolChoiceSpec(
  parser: string | null,
  tools: readonly { function: { name: string; parameters?: Record<string, unknown> | null } }[] | null | undefined,
  choice: unknown,
  parallel: boolean | null | undefined,
): RequestedGrammar | null {
  const named = isObject(choice) && isObject(choice.function) && typeof choice.function.name === "string"
    ? choice.function.name
    : null;
  if (choice !== "required" && named === null) return null;
  if (!tools?.length || parser === null) return null;
  if (parser !== "hermes" && parser !== "llama3_json") return null;
  const chosen = tools.filter((t) => named === null || t.function.name === named);
  const argumentsKey = parser === "hermes" ? "arguments" : "parameters";
  const calls = chosen.map((t) => ({
    type: "object",
    properties: { name: { const: t.function.name }, [argumentsKey]: t.function.parameters ?? { type: "object" } },
    required: ["name", argumentsKey],
    additionalProperties: false,
  }));
  const call = calls.length === 1 ? calls[0] : { anyOf: calls };
  // A named function is one call; "required" is one or more unless parallel_tool_calls is false.
  return {
    spec: { kind: "tool_calls", format: parser, call: JSON.stringify(call), parallel: named === null && (parallel ?? true) },
    param: "tools",
  };
}

/** The grammars of a server (absent: ones over the tokenizer's vocabulary alone, see tokenizerGrammars). */
export interface ConstraintSetup {
  grammars?: Grammars | null;
  tokenizer: ChatTokenizer;
  reasoningParser?: string | null;
}

/**
 * Compiles a requested grammar and returns what makes each sample's matcher (behind a reasoning gate when a
 * reasoning parser is on); a grammar that does not compile is a 400 naming the field.
 */
export async function constraintFactory(
  setup: ConstraintSetup,
  requested: RequestedGrammar | null,
): Promise<(() => TokenConstraint) | undefined> {
  if (!requested) return undefined;
  const grammars = setup.grammars ?? tokenizerGrammars(setup.tokenizer);
  let compiled: CompiledConstraint;
  try {
    compiled = await grammars.compile(requested.spec);
  } catch (err) {
    if (err instanceof GrammarError) throw new InvalidRequestError(`${requested.param}: ${err.message}`, requested.param);
    throw err;
  }
  const tags = setup.reasoningParser ? reasoningTags(setup.tokenizer, setup.reasoningParser) : null;
  return tags ? () => new ReasoningGate(compiled.matcher(), tags) : () => compiled.matcher();
}

const byTokenizer = new WeakMap<ChatTokenizer, Grammars>();

/**
 * Grammars for an app built without the model's (a library user's createApp): the tokenizer's vocabulary, its
 * end-of-sequence token. Ids the model has beyond the tokenizer's (padding) are never allowed: the engine's mask
 * words past the grammar's stay 0.
 */
function tokenizerGrammars(tokenizer: ChatTokenizer): Grammars {
  let grammars = byTokenizer.get(tokenizer);
  if (!grammars) {
    grammars = new Grammars(() => ({
      tokens: tokenizer.tokenStrings(Array.from({ length: tokenizer.vocabSize }, (_, i) => i)),
      vocabSize: tokenizer.vocabSize,
      stopTokenIds: tokenizer.eosTokenId === null ? [] : [tokenizer.eosTokenId],
    }));
    byTokenizer.set(tokenizer, grammars);
  }
  return grammars;
}

/** The reasoning section's tags as single token ids, or null when the vocabulary does not have them so. */
function reasoningTags(tokenizer: ChatTokenizer, parser: string): ReasoningTags | null {
  const one = (text: string) => {
    const ids = tokenizer.encode(text, { addSpecialTokens: false });
    return ids.length === 1 ? ids[0] : null;
  };
  const open = one("<think>");
  const close = one("</think>");
  if (close === null || open === null) return null;
  return { open: parser === "deepseek_r1" ? null : open, close };
}

function parseJson(text: string, param: string): unknown {
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new InvalidRequestError(`${param} is not JSON: ${(err as Error).message}`, param);
  }
}

function isObject(value: unknown): value is Record<string, any> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}
