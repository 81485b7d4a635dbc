/** Process-level facts and hooks: arguments, environment, exit, signals, "am I the main module?". */
import process from "node:process";
import { fileURLToPath } from "node:url";
import { realpathSync } from "node:fs";
import { runtimeName } from "./detect.ts";

/** Command-line arguments after the program (and script) name. */
export function programArgs(): string[] {
  return process.argv.slice(2);
}

/** An environment variable, or undefined when unset or empty. */
export function envVar(name: string): string | undefined {
  const v = process.env[name];
  return v === undefined || v === "" ? undefined : v;
}

/** The whole environment as a plain record (for defaults that read several variables). */
export function envRecord(): Record<string, string | undefined> {
  return { ...process.env };
}

/** Ends the process with a code. */
export function exitProcess(code: number): never {
  process.exit(code);
}

/** Runs `fn` once on SIGINT or SIGTERM; returns a function that removes the hook. */
export function onShutdownSignal(fn: (signal: "SIGINT" | "SIGTERM") => void): () => void {
  const handlers = (["SIGINT", "SIGTERM"] as const).map((sig) => {
    const h = () => fn(sig);
    process.on(sig, h);
    return [sig, h] as const;
  });
  return () => handlers.forEach(([sig, h]) => process.off(sig, h));
}

/** True when the module whose `import.meta` is given is the program's entry point. */
export function isMainModule(meta: ImportMeta): boolean {
  // Deno and Bun say so themselves; Node 20 has no import.meta.main.
  const main = (meta as ImportMeta & { main?: boolean }).main;
  if (runtimeName() !== "node") return main === true;
  const entry = process.argv[1];
  if (!entry) return false;
  try {
    return realpathSync(fileURLToPath(meta.url)) === realpathSync(entry);
  } catch {
    return false;
  }
}
