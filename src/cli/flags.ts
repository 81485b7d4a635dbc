/** Parses `--kebab-case value` flags against a zod object schema and renders its --help. */
import { z } from "zod";

/** A bad command line; the CLI prints the message as one line and exits 2. */
export class UsageError extends Error {
  override name = "UsageError";
}

const kebab = (key: string) => key.replace(/[A-Z]/g, (c) => "-" + c.toLowerCase());

type JsonProp = {
  type?: string | string[];
  enum?: unknown[];
  default?: unknown;
  description?: string;
  minimum?: number;
  maximum?: number;
  exclusiveMinimum?: number;
  exclusiveMaximum?: number;
  anyOf?: JsonProp[];
  format?: string;
};

function properties(schema: z.ZodObject): Record<string, JsonProp> {
  const json = z.toJSONSchema(schema, { io: "input", unrepresentable: "any" }) as { properties?: Record<string, JsonProp> };
  return json.properties ?? {};
}

/** Whether a flag takes several values (`--served-model-name a b`, or the flag repeated). */
const isList = (p: JsonProp) => p.type === "array" || (p.anyOf ?? []).some((s) => s.type === "array");

/**
 * Another spelling of a flag (vLLM's): the same setting under another name (`negate` for a boolean whose sense is
 * the opposite, as --disable-log-requests is --no-log-requests), a flag accepted because it asks for what happens
 * anyway, one accepted but meaningless here (a warning says why), or one refused with a sentence saying why.
 * `value`: whether it takes a value; `unless`: values of a refused flag that ask for nothing (tensor parallel 1).
 */
export type FlagSpelling =
  | { key: string; negate?: boolean }
  | { accepted: string; value?: boolean }
  | { ignored: string; value?: boolean }
  | { refused: string; value?: boolean; unless?: readonly string[] };

/** What parseFlags accepts beyond the schema's own flags. */
export interface FlagOptions {
  /** Other spellings, by flag name without the dashes (single-dash short forms such as `-tp` included). */
  spellings?: Readonly<Record<string, FlagSpelling>>;
  /** Other spellings of values, by schema key: `{ dtype: { float16: "fp16" } }`. */
  values?: Readonly<Record<string, Readonly<Record<string, string>>>>;
  /** The schema key a bare argument fills (`serve MODEL`). */
  positional?: string;
  /** Told once per flag accepted but ignored, with the sentence to warn with. */
  onIgnored?: (message: string) => void;
}

/**
 * Parses `argv` into the schema's output. `env` fills keys given no flag (through `envNames`).
 * Accepts `--flag value`, `--flag=value`, for booleans `--flag` / `--no-flag`, and for list flags several values
 * after one flag or the flag repeated; another value of any other flag replaces the earlier one.
 */
export function parseFlags<S extends z.ZodObject>(
  schema: S,
  argv: string[],
  env: Record<string, string | undefined> = {},
  envNames: Partial<Record<string, string | readonly string[]>> = {},
  options: FlagOptions = {},
): z.infer<S> {
  const props = properties(schema);
  const byFlag = new Map(Object.keys(props).map((k) => [kebab(k), k]));
  const spellings = options.spellings ?? {};
  const known = (name: string) => byFlag.has(name) || Object.hasOwn(spellings, name);
  const raw: Record<string, unknown> = {};
  const given: Record<string, string> = {};
  /** The list flag whose values the bare arguments that follow are. */
  let list: string | null = null;
  const setValue = (key: string, flag: string, value: string) => {
    const mapped = options.values?.[key]?.[value] ?? value;
    if (given[key] === "positional" && raw[key] !== mapped) {
      throw new UsageError(`${flag} ${value} and '${raw[key]}' both name the ${kebab(key)}: give it once`);
    }
    if (isList(props[key])) {
      const values = (raw[key] as string[] | undefined) ?? [];
      raw[key] = [...values, mapped];
      list = key;
    } else {
      raw[key] = mapped;
    }
    given[key] = flag;
  };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (!arg.startsWith("-") || arg === "-" || /^-\d/.test(arg)) {
      if (list !== null) {
        setValue(list, given[list], arg);
        continue;
      }
      if (options.positional !== undefined && given[options.positional] !== "positional") {
        const key = options.positional;
        if (raw[key] !== undefined && raw[key] !== arg) {
          throw new UsageError(`'${arg}' and ${given[key]} ${raw[key]} both name the ${kebab(key)}: give it once`);
        }
        raw[key] = arg;
        given[key] = "positional";
        continue;
      }
      throw new UsageError(`'${arg}' is not a flag: flags start with -- (see --help)`);
    }
    list = null;
    const eq = arg.indexOf("=");
    let name = (eq >= 0 ? arg.slice(0, eq) : arg).replace(/^--?/, "");
    let value: string | undefined = eq >= 0 ? arg.slice(eq + 1) : undefined;
    let negated = false;
    if (!known(name) && name.startsWith("no-") && known(name.slice(3))) {
      name = name.slice(3);
      negated = true;
    }
    const spelled = Object.hasOwn(spellings, name) ? spellings[name] : undefined;
    // The flag as typed (-tp, --no-enable-chunked-prefill), for messages; `flag` is its positive long form.
    const typed = eq >= 0 ? arg.slice(0, eq) : arg;
    const flag = `--${name}`;
    if (spelled && !("key" in spelled)) {
      if (negated && spelled.value) throw new UsageError(`${typed} is not a flag: ${flag} takes a value`);
      if (spelled.value && value === undefined) {
        value = argv[++i];
        if (value === undefined) throw new UsageError(`${typed} needs a value`);
      }
      if ("refused" in spelled) {
        // --no-enable-lora asks for what happens anyway, as does --tensor-parallel-size 1.
        if (negated || (value !== undefined && spelled.unless?.includes(value))) continue;
        throw new UsageError(`${typed}${value === undefined ? "" : ` ${value}`} cannot be honoured here: ${spelled.refused}`);
      }
      if ("accepted" in spelled && !negated) continue;
      const why = "accepted" in spelled ? spelled.accepted : spelled.ignored;
      options.onIgnored?.(`${typed} has no meaning here and is ignored: ${why}`);
      continue;
    }
    const key = spelled ? spelled.key : byFlag.get(name);
    if (key === undefined) throw new UsageError(`unknown flag ${typed} (see --help)`);
    const negate = spelled !== undefined && "negate" in spelled && spelled.negate === true;
    if (props[key].type === "boolean") {
      if (value === undefined) raw[key] = !negated !== negate;
      else if (value === "true" || value === "false") raw[key] = ((value === "true") !== negated) !== negate;
      else throw new UsageError(`${typed} takes true or false, not '${value}'`);
      given[key] = flag;
      continue;
    }
    if (negated) throw new UsageError(`${typed} is not a flag: ${flag} takes a value`);
    if (value === undefined) {
      value = argv[++i];
      if (value === undefined) throw new UsageError(`${typed} needs a value`);
    }
    if (value === "") throw new UsageError(`${typed} needs a value, and was given an empty one`);
    setValue(key, typed, value);
  }
  for (const [key, names] of Object.entries(envNames)) {
    // The first variable set, in the order given, stands in for a flag not on the command line.
    const envName = [names ?? []].flat().find((name) => env[name]);
    if (raw[key] === undefined && envName) {
      raw[key] = env[envName];
      given[key] = envName;
    }
  }
  const parsed = schema.safeParse(raw);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    if (!issue.path.length) throw new UsageError(issue.message);
    const key = String(issue.path[0]);
    const source = given[key] === "positional" ? `the ${kebab(key)}` : given[key] ?? `--${kebab(key)}`;
    throw new UsageError(flagProblem(source, raw[key], issue, props[key] ?? {}));
  }
  return parsed.data as z.infer<S>;
}

const SAFE = Number.MAX_SAFE_INTEGER;

/** "a whole number from 0 to 65535", "a number of 0 or more": what a numeric flag takes, from its bounds. */
function numberExpectation(p: JsonProp): string {
  const whole = p.type === "integer";
  const noun = whole ? "a whole number" : "a number";
  let low = p.minimum !== undefined && p.minimum > -SAFE ? p.minimum : undefined;
  let high = p.maximum !== undefined && p.maximum < SAFE ? p.maximum : undefined;
  let above: number | undefined;
  if (p.exclusiveMinimum !== undefined) {
    if (whole) low = Math.floor(p.exclusiveMinimum) + 1;
    else above = p.exclusiveMinimum;
  }
  if (p.exclusiveMaximum !== undefined && whole) high = Math.ceil(p.exclusiveMaximum) - 1;
  if (above !== undefined) return high !== undefined ? `${noun} above ${above} and at most ${high}` : `${noun} above ${above}`;
  if (low !== undefined && high !== undefined) return `${noun} from ${low} to ${high}`;
  if (low !== undefined) return `${noun} of ${low} or more`;
  if (high !== undefined) return `${noun} of at most ${high}`;
  return noun;
}

/** "a, b or c". */
const oneOf = (values: readonly unknown[]) =>
  values.length <= 1 ? String(values[0]) : `${values.slice(0, -1).join(", ")} or ${values[values.length - 1]}`;

/** What a flag takes, in words, from its JSON schema (or the schema's own words, for custom checks). */
function expectation(issue: z.core.$ZodIssue, p: JsonProp): string {
  if (issue.code === "custom") return issue.message;
  const types = [p.type, ...(p.anyOf ?? []).map((s) => s.type)].flat();
  if (p.enum) return `one of ${oneOf(p.enum)}`;
  if (p.type === "integer" || p.type === "number") return numberExpectation(p);
  if (isList(p)) return "one or more non-empty values";
  if (p.format === "uri") return "an http:// or https:// address";
  if (types.includes("string")) return "a non-empty value";
  return issue.message;
}

/** The sentence a bad flag value gets: "--port must be a whole number from 0 to 65535, not 'abc'". */
function flagProblem(flag: string, value: unknown, issue: z.core.$ZodIssue, p: JsonProp): string {
  if (value === undefined) return `${flag} is required: it takes ${expectation(issue, p)}`;
  const shown = Array.isArray(value) ? value.join(" ") : String(value);
  return `${flag} must be ${expectation(issue, p)}, not '${shown}'`;
}

/** Help text for the schema's flags, one per line: name, value kind, description, default. */
export function renderFlagHelp(
  schema: z.ZodObject,
  envNames: Partial<Record<string, string | readonly string[]>> = {},
): string {
  const rows = Object.entries(properties(schema)).map(([key, p]) => {
    const kind = p.enum
      ? p.enum.join("|")
      : p.type === "boolean"
      ? ""
      : p.type === "integer"
      ? "N"
      : p.format === "uri"
      ? "URL"
      : isList(p)
      ? "NAME [NAME...]"
      : "VALUE";
    const left = `  --${kebab(key)}${kind ? " " + kind : ""}`;
    const extra = [
      p.default !== undefined && p.type !== "boolean" ? `default ${p.default}` : "",
      p.type === "boolean" && p.default === true ? `on by default; --no-${kebab(key)} turns it off` : "",
      envNames[key] ? `env ${[envNames[key]].flat().join(" or ")}` : "",
    ].filter(Boolean).join(", ");
    return [left, `${p.description ?? ""}${extra ? ` (${extra})` : ""}`] as const;
  });
  const width = Math.max(...rows.map(([l]) => l.length)) + 2;
  return rows.map(([l, r]) => l.padEnd(width) + r).join("\n");
}

/** The other spellings, for --help: which name the same setting, and which are accepted, ignored or refused. */
export function renderSpellingHelp(spellings: Readonly<Record<string, FlagSpelling>>): string {
  const groups: Record<"same" | "accepted" | "ignored" | "refused", string[]> = { same: [], accepted: [], ignored: [], refused: [] };
  for (const [name, s] of Object.entries(spellings)) {
    const flag = name.length <= 2 ? `-${name}` : `--${name}`;
    if ("key" in s) groups.same.push(`${flag} (--${s.negate ? "no-" : ""}${kebab(s.key)})`);
    else if ("accepted" in s) groups.accepted.push(flag);
    else if ("ignored" in s) groups.ignored.push(flag);
    else groups.refused.push(flag);
  }
  return [
    `  the same setting: ${groups.same.join(", ")}`,
    `  accepted, as it is what happens anyway: ${groups.accepted.join(", ")}`,
    `  accepted and ignored with a warning: ${groups.ignored.join(", ")}`,
    `  refused with the reason: ${groups.refused.join(", ")}`,
  ].join("\n");
}
