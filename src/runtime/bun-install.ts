/**
 * Bun in a checkout with nothing installed. Where no node_modules directory is found at or above the program, Bun
 * installs packages on the fly, but only for the main thread: the model thread (a worker) resolves packages the
 * Node way and finds none. So before serving, a checkout without node_modules gets them from `bun install`, the way
 * `deno run` fetches what a program needs on its first run. `--no-save` leaves package-lock.json the one lockfile
 * and the checkout clean; `--production` skips the tools only development needs. A process that started without
 * node_modules keeps resolving its worker's packages as if there were none (tokenizer files are not found), so the
 * program then runs again as a child, with the same arguments, and this process only passes signals on to it.
 */
import { spawn, spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import process from "node:process";
import { fileURLToPath } from "node:url";
import { runtimeName } from "./detect.ts";

/** The checkout this module lives in (the directory with gym-edge's package.json), or null in a compiled binary. */
function packageRoot(): string | null {
  if (!import.meta.url.startsWith("file:")) return null;
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 4; i++) {
    if (existsSync(join(dir, "package.json")) && existsSync(join(dir, "mod.ts"))) return dir;
    dir = dirname(dir);
  }
  return null;
}

/** True when Bun would find a node_modules directory from `dir`: in it or in a directory above it. */
function hasNodeModules(dir: string): boolean {
  for (let d = dir;; d = dirname(d)) {
    if (existsSync(join(d, "node_modules"))) return true;
    if (dirname(d) === d) return false;
  }
}

/** Why installing failed, in one line, for a start-up error. */
export class InstallError extends Error {
  override name = "InstallError";
}

/**
 * On Bun, in a checkout where Bun installs on the fly, installs the dependencies into node_modules first; resolves
 * with what it did (null when nothing was needed). Elsewhere (Node, Deno, an installed package, a compiled binary)
 * it does nothing.
 */
export function installForModelThread(info: (msg: string) => void): string | null {
  if (runtimeName() !== "bun") return null;
  const root = packageRoot();
  if (root === null || hasNodeModules(root)) return null;
  info(`no node_modules in ${root}: installing the dependencies (bun install --no-save --production) for the model thread`);
  const started = performance.now();
  const r = spawnSync(process.execPath, ["install", "--no-save", "--production"], {
    cwd: root,
    encoding: "utf8",
    stdio: ["ignore", "pipe", "pipe"],
  });
  if (r.status !== 0) {
    const said = `${r.stderr ?? ""}\n${r.stdout ?? ""}`.split("\n").map((l) => l.trim()).filter((l) => l !== "");
    const why = r.error?.message ?? said.find((l) => /error/i.test(l)) ?? said.at(-1) ?? `exit code ${r.status}`;
    throw new InstallError(`bun install failed in ${root} (${why}); run \`bun install\` there and start again`);
  }
  const count = /(\d+) packages? installed/.exec(r.stdout ?? "")?.[1];
  return `installed ${count ?? "the"} packages in ${Math.round(performance.now() - started)} ms; starting again with them`;
}

/**
 * The environment Bun's allocator needs for serving, when this process lacks it and can run again (on Bun, from
 * files: not a compiled binary); null otherwise. Bun's mimalloc hands freed memory back to the system 10 ms after
 * it is freed, and every step frees and allocates tens of MB (its outputs as new buffers), so every step faulted its
 * memory in anew: on a 2-core virtual machine, a 32-row decode step of bench-135m took ~150 ms instead of ~85 (as on
 * Node), and the GRPO-like load ran at half Node's speed. With MIMALLOC_PURGE_DELAY=60000, memory freed and not
 * reused for a minute goes back: steps reuse theirs (as fast as never handing it back, -1, which held 140 MB more
 * once loaded and ~280 MB more at the load's peak). That alone does not cover a large block freed by another thread
 * (the collector's), which mimalloc hands back at once: the runners free their outputs themselves, on their thread
 * (freeBuffer, runtime/gc.ts); with both, a decode run takes 92-101 ms and ~700 page faults, against 165 ms and ~5,100
 * with the default. mimalloc reads the setting once, as the process starts; one set by the user, to any value, is left
 * alone.
 */
export function bunAllocatorEnv(
  runtime = runtimeName(),
  env: Record<string, string | undefined> = process.env,
  // A compiled binary's modules live under /$bunfs/ (B:/~BUN/ on Windows), and its arguments differ.
  fromFiles = import.meta.url.startsWith("file:") && !/\/(\$bunfs|~BUN)\//.test(import.meta.url),
): Record<string, string> | null {
  if (runtime !== "bun" || !fromFiles || env.MIMALLOC_PURGE_DELAY !== undefined) return null;
  return { MIMALLOC_PURGE_DELAY: "60000" };
}

/** Names, in the environment of a program run again, the process that runs it (see exitWithParent). */
const PARENT_VAR = "GYM_EDGE_PARENT_PID";

/**
 * Runs this program again as a child with the same arguments and stdio, and `env` added to the environment;
 * resolves with its exit code. The child has its own process group, so a signal sent to this one's group (Ctrl-C)
 * reaches it once, passed on from here; it ends itself if this process is killed (exitWithParent).
 */
export function runAgain(env: Record<string, string> = {}): Promise<number> {
  const child = spawn(process.execPath, process.argv.slice(1), {
    stdio: "inherit",
    detached: true,
    env: { ...process.env, ...env, [PARENT_VAR]: String(process.pid) },
  });
  const pass = (signal: NodeJS.Signals) => () => child.kill(signal);
  const handlers = (["SIGINT", "SIGTERM"] as const).map((s) => [s, pass(s)] as const);
  for (const [s, h] of handlers) process.on(s, h);
  return new Promise((resolve) => {
    child.on("error", () => resolve(1));
    child.on("exit", (code, signal) => {
      for (const [s, h] of handlers) process.off(s, h);
      resolve(code ?? (signal === null ? 1 : 128 + (signal === "SIGINT" ? 2 : 15)));
    });
  });
}

/**
 * In a program run again by runAgain: exits once the process that ran it is gone (killed with a signal it cannot
 * pass on, SIGKILL), instead of serving on as an orphan that nobody stops and that holds its parent's stdio open.
 * Checks every second, without keeping the process alive.
 */
export function exitWithParent(): void {
  const parent = Number(process.env[PARENT_VAR]);
  if (!Number.isInteger(parent) || parent <= 0 || process.ppid !== parent) return;
  setInterval(() => {
    if (process.ppid !== parent) process.exit(1);
  }, 1000).unref();
}
