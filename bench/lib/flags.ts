/**
 * A bench script's flags: declared as a zod object, parsed by the CLI's own parser (src/cli/flags.ts), with --help
 * rendered from the same schema. A bad flag prints one line and exits 2, as the CLI does.
 */
import * as path from "node:path";
import process from "node:process";
import { z } from "zod";
import { parseFlags, renderFlagHelp, UsageError } from "../../src/cli/flags.ts";
import { exitProcess, programArgs } from "../../src/runtime/process.ts";

/** A whole-number flag. */
export const intFlag = (fallback: number) => z.coerce.number().int().default(fallback);

/** A number flag. */
export const numberFlag = (fallback: number) => z.coerce.number().default(fallback);

/** Comma-separated numbers ("64,256,1024"). */
export const numberListFlag = (fallback: string) =>
  z.string().default(fallback).transform((text) => text.split(",").map(Number))
    .pipe(z.array(z.number()));

/** What benchFlags takes besides the schema. */
export interface BenchFlagOptions {
  /** Flags also given by position, in this order, before any --flag (for scripts that took positional arguments). */
  positional?: readonly string[];
  /** The command line after the script (default: this process's). */
  argv?: readonly string[];
}

/**
 * Parses the command line against `schema`; `--help` (or `-h`) prints `about` and the flags, and exits 0.
 * `about` says what the script measures and how it is run.
 */
export function benchFlags<S extends z.ZodObject>(
  schema: S,
  about: string,
  options: BenchFlagOptions = {},
): z.infer<S> {
  const argv = [...(options.argv ?? programArgs())];
  const positional = options.positional ?? [];
  if (argv.includes("--help") || argv.includes("-h")) {
    const byPosition = positional.length
      ? `\n\nAlso by position, before any flag: ${positional.map((name) => `[${name}]`).join(" ")}.`
      : "";
    console.log(`${about}${byPosition}\n\nFlags:\n${renderFlagHelp(schema)}`);
    exitProcess(0);
  }
  let given = 0;
  while (given < Math.min(positional.length, argv.length) && !argv[given].startsWith("--")) given++;
  const named = [...positional.slice(0, given).flatMap((name, i) => [`--${name}`, argv[i]]), ...argv.slice(given)];
  try {
    return parseFlags(schema, named);
  } catch (err) {
    if (!(err instanceof UsageError)) throw err;
    console.error(`${scriptName()}: ${err.message}`);
    exitProcess(2);
  }
}

/** The script's file name, for error lines. */
function scriptName(): string {
  return path.basename(process.argv[1] ?? "bench");
}
