/** gym-edge run as a user runs it: a child process of the runtime running the tests, on loopback. */
import { type ChildProcess, spawn } from "node:child_process";
import { fileURLToPath } from "node:url";
import { runtimeName } from "../../src/runtime/detect.ts";
import { testCacheDir } from "./served.ts";

const ROOT = fileURLToPath(new URL("../..", import.meta.url));

/** The command that runs mod.ts on this runtime. */
export function programCommand(): [string, string[]] {
  switch (runtimeName()) {
    case "deno":
      return [process.execPath, ["run", "-A", "mod.ts"]];
    case "bun":
      return [process.execPath, ["mod.ts"]];
    default:
      return [process.execPath, ["--import", "tsx", "mod.ts"]];
  }
}

/** A running gym-edge child process. */
export interface ChildRun {
  child: ChildProcess;
  /** Everything it has written to stderr so far. */
  stderr(): string;
  /** Resolves with the exit code once it exits. */
  exited: Promise<number | null>;
  /** Sends a signal unless it has exited. */
  signal(sig: NodeJS.Signals): void;
}

/** Starts `gym-edge ARGS` (the test model cache in its environment; `unset` names variables to leave out of it). */
export function runGymEdge(args: string[], unset: readonly string[] = []): ChildRun {
  const [cmd, pre] = programCommand();
  const env: Record<string, string | undefined> = { ...process.env, GYM_EDGE_CACHE: testCacheDir(), NO_COLOR: "1" };
  for (const name of unset) delete env[name];
  const child = spawn(cmd, [...pre, ...args], {
    cwd: ROOT,
    env,
    stdio: ["ignore", "ignore", "pipe"],
  });
  let stderr = "";
  child.stderr!.setEncoding("utf8");
  child.stderr!.on("data", (d: string) => (stderr += d));
  const exited = new Promise<number | null>((resolve) => child.on("close", (code) => resolve(code)));
  // Through process.kill: Deno's child.kill() makes the exit code read null even when the child exits 0 after it.
  const signal = (sig: NodeJS.Signals) => {
    if (child.exitCode === null && child.signalCode === null) process.kill(child.pid!, sig);
  };
  return { child, stderr: () => stderr, exited, signal };
}

/** Runs `gym-edge ARGS` to its end (killed after `timeoutMs`): its exit code and stderr. */
export async function runToExit(args: string[], timeoutMs = 60_000): Promise<{ code: number | null; stderr: string }> {
  const run = runGymEdge(args);
  const timer = setTimeout(() => run.signal("SIGKILL"), timeoutMs);
  const code = await run.exited;
  clearTimeout(timer);
  return { code, stderr: run.stderr() };
}

/** Starts a server on a free loopback port with the test model on the cpu and resolves once it is ready. */
export async function startChildServer(args: string[] = []): Promise<ChildRun & { base: string }> {
  const run = runGymEdge(["--device", "cpu", "--port", "0", ...args]);
  const deadline = performance.now() + 60_000;
  while (!/\bready\b/.test(run.stderr())) {
    if (run.child.exitCode !== null || performance.now() > deadline) {
      run.signal("SIGKILL");
      throw new Error(`the server did not start:\n${run.stderr()}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  const port = /listening on http:\/\/[^\s]+:(\d+)/.exec(run.stderr())![1];
  return { ...run, base: `http://127.0.0.1:${port}` };
}
