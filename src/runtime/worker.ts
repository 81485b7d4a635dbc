/**
 * Starting a worker thread (node:worker_threads) the same way on Node, Deno and Bun: from a module beside the
 * caller's, .js in the package's build and .ts from source. Deno and Bun run .ts as it is; Node runs it through
 * tsx, whose loader the thread registers first (Node 20 threads do not inherit the main thread's --import hooks).
 */
import { Worker } from "node:worker_threads";
import { runtimeName } from "./detect.ts";

/** Starts the worker module `name` (no extension) that lies beside the module at `besideUrl` (its import.meta.url). */
export function startWorker(besideUrl: string, name: string): Worker {
  const fromSource = besideUrl.endsWith(".ts");
  const url = new URL(`./${name}${fromSource ? ".ts" : ".js"}`, besideUrl);
  if (!fromSource || runtimeName() !== "node") return new Worker(url);
  const tsx = import.meta.resolve("tsx/esm/api");
  const boot = `import(${JSON.stringify(tsx)}).then((tsx) => { tsx.register(); return import(${JSON.stringify(url.href)}); });`;
  return new Worker(boot, { eval: true });
}
