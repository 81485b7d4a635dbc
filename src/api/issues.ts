/**
 * A request body's validation issues as sentences about the request: the field by its path, what was wrong with it
 * and what is accepted ("temperature must be at most 2", "stream must be true or false, got a string"). Zod's own
 * wording ("Invalid input", "expected number, received string") names the schema, not the request: it never reaches
 * a client. A schema that needs a better sentence (a union, a refinement) gives its own message, which is kept.
 */
import type { z } from "zod";

type Issue = z.core.$ZodIssue;
type Path = readonly PropertyKey[];

/** A field's path as clients write it: `messages[0].content`; empty for the body itself. */
export function issuePath(path: Path): string {
  return path.map((key, i) => typeof key === "number" ? `[${key}]` : `${i > 0 ? "." : ""}${String(key)}`).join("");
}

/** The messages zod writes itself (its English locale), as opposed to those a schema gives. */
const ZOD_WORDING = /^(Invalid\b|Too (big|small):|Unrecognized key)/;

/** Kinds of value, as zod names them, in words. */
const KINDS: Record<string, string> = {
  string: "a string",
  number: "a number",
  int: "an integer",
  bigint: "an integer",
  boolean: "true or false",
  array: "an array",
  tuple: "an array",
  object: "an object",
  record: "an object",
  map: "an object",
  null: "null",
  nan: "NaN",
};

function kind(name: string): string {
  return KINDS[name] ?? `a ${name}`;
}

/** Kinds of value a client sent, as zod names them, in words. */
const SENT: Record<string, string> = {
  string: "a string",
  number: "a number",
  boolean: "a boolean",
  array: "an array",
  object: "an object",
  null: "null",
  undefined: "absent",
};

/** What the client sent instead, read from zod's message (its issues keep no input); "" when it does not say. */
function received(issue: Issue): string {
  const got = /received (\S+)$/.exec(issue.message)?.[1];
  return got === undefined ? "" : SENT[got] ?? got;
}

function shown(value: unknown): string {
  return typeof value === "string" ? JSON.stringify(value) : String(value);
}

/** "a", "a or b", "a, b or c". */
function either(items: readonly string[]): string {
  return items.length <= 1 ? items.join("") : `${items.slice(0, -1).join(", ")} or ${items.at(-1)}`;
}

function plural(n: number | bigint, unit: string): string {
  return `${n} ${unit}${Number(n) === 1 ? "" : "s"}`;
}

/** How big a value of this origin is measured. */
const SIZES: Record<string, string> = { array: "item", set: "item", string: "character", file: "byte" };

function bound(issue: z.core.$ZodIssueTooBig | z.core.$ZodIssueTooSmall): string {
  const small = issue.code === "too_small";
  const limit = small ? issue.minimum : issue.maximum;
  const unit = SIZES[issue.origin];
  if (unit) {
    if (small && Number(limit) === 1 && !issue.exact) return "must not be empty";
    const how = issue.exact ? "exactly" : small ? "at least" : "at most";
    return issue.origin === "string" ? `must be ${how} ${plural(limit, unit)} long` : `must have ${how} ${plural(limit, unit)}`;
  }
  if (issue.exact) return `must be exactly ${limit}`;
  if (issue.inclusive === false) return `must be ${small ? "greater" : "less"} than ${limit}`;
  return `must be at ${small ? "least" : "most"} ${limit}`;
}

/** The alternatives of a union whose every branch refused the value's kind, in words; null when one came close. */
function alternatives(branches: readonly Issue[][]): string[] | null {
  const kinds: string[] = [];
  for (const branch of branches) {
    const first = branch[0];
    if (!first || first.path.length > 0) return null;
    if (first.code === "invalid_type") kinds.push(kind(first.expected));
    else if (first.code === "invalid_value") kinds.push(...first.values.map(shown));
    else if (first.code === "invalid_union" && !first.message.match(ZOD_WORDING)) return null;
    else if (first.code === "invalid_union") {
      const inner = alternatives(first.errors);
      if (!inner) return null;
      kinds.push(...inner);
    } else return null;
  }
  return [...new Set(kinds)];
}

/** A union none of whose branches took the value: the branch that came closest, else what each would take. */
function unionSentence(issue: z.core.$ZodIssueInvalidUnion, field: string, prefix: Path): string {
  const options = "options" in issue ? issue.options : undefined;
  if (issue.discriminator !== undefined && options?.length) {
    return `${field} must be ${options.length === 1 ? "" : "one of "}${either(options.map(shown))}`;
  }
  if (issue.errors.length === 0) return `${field} matches more than one of the accepted forms`;
  const kinds = alternatives(issue.errors);
  if (kinds) {
    const typeIssue = issue.errors.map((b) => b[0]).find((i) => i?.code === "invalid_type");
    const got = typeIssue ? received(typeIssue) : "";
    if (got === "absent") return `${field} is required and must be ${either(kinds)}`;
    return `${field} must be ${either(kinds)}${got ? `, got ${got}` : ""}`;
  }
  // The branch that got furthest: a deeper issue means the value had the right kind and failed inside.
  const closest = issue.errors.find((b) => b[0] && (b[0].path.length > 0 || !["invalid_type", "invalid_value"].includes(b[0].code)));
  return closest ? describeIssue(closest[0], [...prefix, ...issue.path]) : `${field} is not in an accepted form`;
}

/** Whether a message starts with a field's name ("n must be 1", not "no such thing" for n). */
function namedBy(message: string, name: string): boolean {
  return name !== "" && message.startsWith(name) && !/^\w/.test(message.slice(name.length));
}

function fieldName(path: Path): string {
  return path.length === 0 ? "the request body" : issuePath(path);
}

/**
 * One issue as a sentence naming its field; `prefix` is the path of the value the issue's path is relative to (a
 * union's branch). Messages a schema gave are kept, led by the field unless they name it already.
 */
export function describeIssue(issue: Issue, prefix: Path = []): string {
  const path = [...prefix, ...issue.path];
  const field = fieldName(path);
  const custom = issue.code === "custom" ? issue.message !== "Invalid input" : !ZOD_WORDING.test(issue.message);
  if (custom) {
    const leaf = path.length > 0 ? String(path.at(-1)) : "";
    const named = namedBy(issue.message, field) || namedBy(issue.message, leaf);
    return named || path.length === 0 ? issue.message : `${field}: ${issue.message}`;
  }
  switch (issue.code) {
    case "invalid_type": {
      const got = received(issue);
      if (issue.expected === "object" && path.length === 0) return `the request body must be a JSON object${got ? `, got ${got}` : ""}`;
      if (got === "absent") return `${field} is required and must be ${kind(issue.expected)}`;
      if (issue.expected === "int" && got === "a number") return `${field} must be an integer`;
      if (got === "Infinity" || got === "-Infinity" || got === "NaN") return `${field} must be a finite number`;
      return `${field} must be ${kind(issue.expected)}${got ? `, got ${got}` : ""}`;
    }
    case "too_big":
    case "too_small":
      return `${field} ${bound(issue)}`;
    case "invalid_value":
      if (issue.values.length === 1) return `${field} must be ${shown(issue.values[0])}`;
      return `${field} must be one of ${either(issue.values.map(shown))}`;
    case "invalid_format": {
      const format = issue as z.core.$ZodStringFormatIssues;
      if (format.format === "starts_with") return `${field} must start with ${JSON.stringify(format.prefix)}`;
      if (format.format === "ends_with") return `${field} must end with ${JSON.stringify(format.suffix)}`;
      if (format.format === "includes") return `${field} must contain ${JSON.stringify(format.includes)}`;
      if (format.format === "regex") return `${field} must match the pattern ${format.pattern}`;
      return `${field} must be a valid ${format.format}`;
    }
    case "not_multiple_of":
      return `${field} must be a multiple of ${issue.divisor}`;
    case "unrecognized_keys":
      return `${field} has ${issue.keys.length === 1 ? "an unknown field" : "unknown fields"}: ${issue.keys.join(", ")}`;
    case "invalid_key": {
      const inner = issue.issues[0];
      const key = JSON.stringify(String(path.at(-1)));
      const parent = fieldName(path.slice(0, -1));
      if (inner && !ZOD_WORDING.test(inner.message)) return `${inner.message}, got the key ${key}`;
      const rule = inner ? describeIssue(inner, ["key"]).replace(/^key /, "") : "is not accepted";
      return `${parent} has a key ${key} that is not accepted: a key ${rule}`;
    }
    case "invalid_element":
      return `${field} has an element that is not accepted`;
    case "invalid_union":
      return unionSentence(issue, field, prefix);
    default:
      return `${field} is not accepted`;
  }
}

/** The most sentences one error message carries; the rest are counted. */
const MAX_SENTENCES = 4;

/** Every issue of a failed parse as one message, and the field the first one names (null for the body itself). */
export function describeIssues(issues: readonly Issue[]): { message: string; param: string | null } {
  const sentences = [...new Set(issues.map((issue) => describeIssue(issue)))];
  const shownSentences = sentences.slice(0, MAX_SENTENCES);
  const more = sentences.length - shownSentences.length;
  const message = shownSentences.join("; ") + (more > 0 ? `; and ${plural(more, "more problem")}` : "");
  const first = issues[0] ? issuePath(issues[0].path) : "";
  return { message: message || "the request is not valid", param: first || null };
}
