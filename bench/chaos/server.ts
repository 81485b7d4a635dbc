/**
 * The server under test as a child process on a chosen runtime: started with `--port 0`, its address read from its
 * first log line, ready once /health answers; its resident memory read from /proc; its log kept where it speaks of
 * errors (5xx request lines, ERROR and WARN lines, stack traces) so that a report can quote them.
 */
import { type ChildProcess, spawn } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import process from "node:process";
import { type RuntimeName, runtimeName } from "../../src/runtime/detect.ts";

const ROOT = path.resolve(import.meta.dirname ?? path.dirname(new URL(import.meta.url).pathname), "../..");

/** The command that runs mod.ts on `runtime`: this process's own binary when it is the same runtime. */
export function serverCommand(runtime: RuntimeName): { command: string; args: string[] } {
  const own = runtime === runtimeName() ? process.execPath : null;
  const local = (name: string) => {
    const bin = path.join(ROOT, "node_modules", ".bin", name);
    return fs.existsSync(bin) ? bin : name;
  };
  const mod = path.join(ROOT, "mod.ts");
  switch (runtime) {
    case "deno":
      return { command: own ?? local("deno"), args: ["run", "-A", mod] };
    case "bun":
      return { command: own ?? local("bun"), args: [mod] };
    default:
      return { command: own ?? "node", args: ["--import", "tsx", mod] };
  }
}

const MAX_KEPT = 400;

/** A running server child. */
export class ServerProcess {
  readonly errorLines: string[] = [];
  /** Request lines with a 5xx other than 503, whether or not a client was there to see it. */
  logged5xx = 0;
  exitCode: number | null = null;
  /** The signal that ended the process, when one did. */
  exitSignal: string | null = null;
  readonly exited: Promise<number | null>;
  #partial = "";

  private constructor(readonly child: ChildProcess, readonly url: string, readonly logFile: fs.WriteStream | null) {
    this.exited = new Promise((resolve) =>
      child.once("exit", (code, signal) => {
        this.exitSignal = signal;
        resolve(this.exitCode = code);
      })
    );
  }

  /** Starts `mod.ts` with `flags` on `runtime` and resolves once /health is ok (or throws with its last log lines). */
  static async start(
    runtime: RuntimeName,
    flags: string[],
    options: { env?: Record<string, string>; logPath?: string; readyTimeoutMs?: number } = {},
  ): Promise<ServerProcess> {
    const { command, args } = serverCommand(runtime);
    const child = spawn(command, [...args, ...flags], {
      cwd: ROOT,
      env: { ...process.env, ...options.env },
      stdio: ["ignore", "pipe", "pipe"],
    });
    const logFile = options.logPath ? fs.createWriteStream(options.logPath, { flags: "a" }) : null;
    const tail: string[] = [];
    const url = await new Promise<string>((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new Error(`no "listening on" line within 60 s:\n${tail.join("\n")}`)),
        60_000,
      );
      child.once(
        "exit",
        (code) => reject(new Error(`the server exited (${code}) before listening:\n${tail.join("\n")}`)),
      );
      child.once("error", reject);
      const onData = (data: Buffer) => {
        for (const line of data.toString().split("\n")) {
          tail.push(line);
          if (tail.length > 40) tail.shift();
          const match = /listening on (http:\/\/[^\s"]+)/.exec(line);
          if (match) {
            clearTimeout(timer);
            resolve(match[1].replace("0.0.0.0", "127.0.0.1"));
          }
        }
      };
      child.stderr!.on("data", onData);
      child.stdout!.on("data", onData);
    });
    const server = new ServerProcess(child, url, logFile);
    child.stderr!.removeAllListeners("data");
    child.stdout!.removeAllListeners("data");
    child.stderr!.on("data", (data: Buffer) => server.#take(data));
    child.stdout!.on("data", (data: Buffer) => server.#take(data));
    await server.#healthy(options.readyTimeoutMs ?? 180_000).catch(async (err) => {
      await server.stop(5_000);
      throw new Error(`${err.message}\n${server.errorLines.slice(-20).join("\n")}`);
    });
    return server;
  }

  /** Whether the process is still alive. */
  get running(): boolean {
    return this.exitCode === null && this.exitSignal === null;
  }

  get pid(): number {
    return this.child.pid ?? -1;
  }

  async #healthy(timeoutMs: number): Promise<void> {
    const deadline = performance.now() + timeoutMs;
    while (performance.now() < deadline) {
      if (!this.running) throw new Error(`the server exited (${this.exitCode ?? this.exitSignal}) while loading`);
      const ok = await fetch(`${this.url}/health`, { signal: AbortSignal.timeout(5_000) }).then(async (r) => {
        await r.body?.cancel();
        return r.status === 200;
      }, () => false);
      if (ok) return;
      await new Promise((r) => setTimeout(r, 200));
    }
    throw new Error(`/health not ok within ${timeoutMs / 1000} s`);
  }

  /** Keeps the log lines that speak of trouble: 5xx request lines, errors, warnings and stack traces. */
  #take(data: Buffer): void {
    this.logFile?.write(data);
    const lines = (this.#partial + data.toString()).split("\n");
    this.#partial = lines.pop() ?? "";
    for (const line of lines) {
      // A 503 is an answer the server means to give (queue full, draining); any other 5xx is not.
      const failed = / request \S+ \S+ \S+ 5(0[0-24-9]|[1-9]\d) |"status":5(0[0-24-9]|[1-9]\d)\b/.test(line);
      if (failed) this.logged5xx++;
      const trouble = failed || /\b(ERROR|WARN)\b|"level":"(error|warn)"|unexpected error|^\s+at |Error:/.test(line);
      if (trouble && this.errorLines.length < MAX_KEPT) this.errorLines.push(line.slice(0, 600));
    }
  }

  /** CPU seconds the server has used so far (Linux /proc), or null. */
  cpuSeconds(): number | null {
    try {
      const fields = fs.readFileSync(`/proc/${this.pid}/stat`, "utf8").split(") ")[1].split(" ");
      // utime and stime: fields 14 and 15 of the line, in clock ticks (100 per second on Linux).
      return (Number(fields[11]) + Number(fields[12])) / 100;
    } catch {
      return null;
    }
  }

  /** The server's resident memory in MB (Linux /proc), or null. */
  rssMb(): number | null {
    try {
      const status = fs.readFileSync(`/proc/${this.pid}/status`, "utf8");
      const kb = /VmRSS:\s+(\d+)\s+kB/.exec(status);
      return kb ? Number(kb[1]) / 1024 : null;
    } catch {
      return null;
    }
  }

  /** Sends `signal` (graceful: SIGTERM) and waits up to `timeoutMs` for the exit, then kills it. */
  async stop(
    timeoutMs: number,
    signal: NodeJS.Signals = "SIGTERM",
  ): Promise<{ code: number | null; signal: string | null; graceful: boolean }> {
    if (this.running) this.child.kill(signal);
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<"timeout">((r) => timer = setTimeout(() => r("timeout"), timeoutMs));
    const result = await Promise.race([this.exited, timeout]);
    clearTimeout(timer);
    if (result === "timeout") {
      this.child.kill("SIGKILL");
      await this.exited;
    }
    this.logFile?.end();
    return { code: this.exitCode, signal: this.exitSignal, graceful: result !== "timeout" };
  }
}
