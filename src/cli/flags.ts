/** Parses `--kebab-case value` flags against a zod object schema and renders its --help. */
import { z } from "zod";

/** A bad command line; the CLI prints the message as one line and exits 2. */
export class UsageError extends Error {
  override name = "UsageError";
}

const kebab = (key: string) => key.replace(/[A-Z]/g, (c) => "-" + c.toLowerCase());

type JsonProp = { type?: string; enum?: unknown[]; default?: unknown; description?: string };

function properties(schema: z.ZodObject): Record<string, JsonProp> {
  const json = z.toJSONSchema(schema, { io: "input", unrepresentable: "any" }) as { properties?: Record<string, JsonProp> };
  return json.properties ?? {};
}

/**
 * Parses `argv` into the schema's output. `env` fills keys given no flag (through `envNames`).
 * Accepts `--flag value`, `--flag=value`, and for booleans `--flag` / `--no-flag`.
 */
export function parseFlags<S extends z.ZodObject>(
  schema: S,
  argv: string[],
  env: Record<string, string | undefined> = {},
  envNames: Partial<Record<string, string>> = {},
): z.infer<S> {
  const props = properties(schema);
  const byFlag = new Map(Object.keys(props).map((k) => [kebab(k), k]));
  const raw: Record<string, unknown> = {};
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (!arg.startsWith("--")) throw new UsageError(`unexpected argument '${arg}'`);
    const eq = arg.indexOf("=");
    let name = eq >= 0 ? arg.slice(2, eq) : arg.slice(2);
    let value: string | undefined = eq >= 0 ? arg.slice(eq + 1) : undefined;
    let negated = false;
    if (!byFlag.has(name) && name.startsWith("no-") && byFlag.has(name.slice(3))) {
      name = name.slice(3);
      negated = true;
    }
    const key = byFlag.get(name);
    if (!key) throw new UsageError(`unknown flag --${name} (see --help)`);
    if (props[key].type === "boolean") {
      if (value === undefined) raw[key] = !negated;
      else if (value === "true" || value === "false") raw[key] = (value === "true") !== negated;
      else throw new UsageError(`--${name} takes true or false, not '${value}'`);
      continue;
    }
    if (negated) throw new UsageError(`--no-${name} is not a flag; --${name} takes a value`);
    if (value === undefined) {
      value = argv[++i];
      if (value === undefined) throw new UsageError(`--${name} needs a value`);
    }
    raw[key] = value;
  }
  for (const [key, envName] of Object.entries(envNames)) {
    if (raw[key] === undefined && envName && env[envName]) raw[key] = env[envName];
  }
  const parsed = schema.safeParse(raw);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    const flag = issue.path.length ? `--${kebab(String(issue.path[0]))}` : "flags";
    const given = issue.path.length ? raw[String(issue.path[0])] : undefined;
    throw new UsageError(`${flag}${given === undefined ? "" : ` '${given}'`}: ${issue.message}`);
  }
  return parsed.data as z.infer<S>;
}

/** Help text for the schema's flags, one per line: name, value kind, description, default. */
export function renderFlagHelp(schema: z.ZodObject, envNames: Partial<Record<string, string>> = {}): string {
  const rows = Object.entries(properties(schema)).map(([key, p]) => {
    const kind = p.enum ? p.enum.join("|") : p.type === "boolean" ? "" : p.type === "integer" ? "N" : "VALUE";
    const left = `  --${kebab(key)}${kind ? " " + kind : ""}`;
    const extra = [
      p.default !== undefined && p.type !== "boolean" ? `default ${p.default}` : "",
      p.type === "boolean" && p.default === true ? `on by default; --no-${kebab(key)} turns it off` : "",
      envNames[key] ? `env ${envNames[key]}` : "",
    ].filter(Boolean).join(", ");
    return [left, `${p.description ?? ""}${extra ? ` (${extra})` : ""}`] as const;
  });
  const width = Math.max(...rows.map(([l]) => l.length)) + 2;
  return rows.map(([l, r]) => l.padEnd(width) + r).join("\n");
}
