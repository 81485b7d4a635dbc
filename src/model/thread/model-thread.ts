/**
 * The model thread: a worker thread (node:worker_threads, on Node, Deno and Bun alike) where onnxruntime-node
 * sessions are opened and run, and where the heavy parts of a load (parsing tokenizer.json, building or converting
 * a model) happen. onnxruntime-node opens a session and runs it synchronously on the calling thread: a model of a
 * few hundred MB held the thread that answers HTTP for seconds, so /health could not answer while it loaded. Here
 * the calling thread only sends requests and awaits their answers. Sessions cannot move between threads, so a
 * session opened here also runs here (ThreadedRunner), and the KV cache lives here with it.
 */
import { collectGarbage } from "../../runtime/gc.ts";
import { fromWire, toWire } from "../../runtime/wire.ts";
import type { Worker } from "node:worker_threads";
import { startWorker } from "../../runtime/worker.ts";
import { EngineLayoutError } from "../builder/engine-decoder.ts";
import { DeviceUnavailableError, ModelLoadError, WeightsError, type WeightsProblem } from "../errors.ts";

/** A request to the model thread: an operation by name, with its arguments. */
export interface ThreadRequest {
  id: number;
  op: string;
  args: unknown;
}

/** The answer to a request: its value, or the error it threw. */
export type ThreadReply = { id: number; value: unknown } | { id: number; error: SerializedError };

/** An error as it crosses between threads: its class by name, and the fields that class carries. */
export interface SerializedError {
  name: string;
  message: string;
  path?: string;
  device?: string;
  reason?: string;
  available?: string[];
  problem?: string;
}

/** An error as a message can carry it (class instances arrive as plain errors). */
export function serializeError(err: unknown): SerializedError {
  if (!(err instanceof Error)) return { name: "Error", message: String(err) };
  const { path, device, reason, available, problem } = err as unknown as Partial<SerializedError>;
  return { name: err.name, message: err.message, path, device, reason, available, problem };
}

/** The model layer's own error classes again, so callers can tell them apart as they would on one thread. */
export function reviveError(e: SerializedError): Error {
  switch (e.name) {
    case "ModelLoadError":
      return new ModelLoadError(e.path ?? "", e.message);
    case "DeviceUnavailableError":
      return new DeviceUnavailableError(e.device ?? "", e.reason ?? e.message, e.available ?? []);
    case "EngineLayoutError":
      return new EngineLayoutError(e.message);
    case "WeightsError":
      return new WeightsError((e.problem ?? "mismatch") as WeightsProblem, e.message);
    default: {
      const err = new Error(e.message);
      err.name = e.name;
      return err;
    }
  }
}

/** The model thread itself failed: it could not start, or it stopped. */
export class ModelThreadError extends Error {
  override name = "ModelThreadError";
}

/** One worker thread and the requests waiting for its answers. */
export class ModelThread {
  readonly #worker: Worker;
  readonly #pending = new Map<number, { resolve: (value: unknown) => void; reject: (err: Error) => void }>();
  #next = 1;
  #failure: Error | null = null;

  constructor() {
    this.#worker = startWorker(import.meta.url, "model-thread-worker");
    this.#worker.on("message", (reply: ThreadReply) => this.#settle(reply));
    this.#worker.on("error", (err) => this.#fail(err));
    this.#worker.on("exit", (code) => this.#fail(new ModelThreadError(`the model thread exited (${code})`)));
    // Idle, the thread does not keep the process alive; a request waiting for an answer does. After the listeners:
    // on Node, listening for messages refs the worker's port again.
    this.#worker.unref();
  }

  /** Sends `op` with `args` (moving the buffers in `transfer`) and resolves with its answer. */
  call<T>(op: string, args: unknown, transfer: ArrayBuffer[] = []): Promise<T> {
    if (this.#failure) return Promise.reject(this.#failure);
    const id = this.#next++;
    return new Promise<T>((resolve, reject) => {
      this.#pending.set(id, { resolve: resolve as (value: unknown) => void, reject });
      if (this.#pending.size === 1) this.#worker.ref();
      try {
        const moved = [...transfer];
        this.#worker.postMessage({ id, op, args: toWire(args, moved) } satisfies ThreadRequest, moved);
      } catch (err) {
        this.#pending.delete(id);
        if (this.#pending.size === 0) this.#worker.unref();
        reject(err);
      }
    });
  }

  #settle(reply: ThreadReply): void {
    const waiting = this.#pending.get(reply.id);
    if (!waiting) return;
    this.#pending.delete(reply.id);
    if (this.#pending.size === 0) this.#worker.unref();
    if ("error" in reply) waiting.reject(reviveError(reply.error));
    else waiting.resolve(fromWire(reply.value));
  }

  #fail(err: unknown): void {
    const message = err instanceof Error ? err.message : String(err);
    this.#failure ??= err instanceof ModelThreadError
      ? err
      : new ModelThreadError(`the model thread failed: ${message}`, { cause: err });
    if (shared === this) shared = null;
    for (const { reject } of this.#pending.values()) reject(this.#failure);
    this.#pending.clear();
    this.#worker.unref();
  }
}

let shared: ModelThread | null = null;

/** The process's model thread, started on first use (and again after it failed). */
export function modelThread(): ModelThread {
  if (!shared) {
    try {
      shared = new ModelThread();
    } catch (err) {
      throw new ModelThreadError(`the model thread could not start: ${(err as Error).message}`, { cause: err });
    }
  }
  return shared;
}

/**
 * Starts the model thread now, if it is not running. Starting a worker holds the calling thread for a moment (up to
 * ~300 ms on Deno here): a server starts it before it listens, when no request can be waiting. A thread that cannot
 * start is no error here; the work it would do then runs on the calling thread.
 */
export function startModelThread(): void {
  try {
    modelThread();
  } catch {
    // offThread and openOffThread fall back to the calling thread.
  }
}

/**
 * Runs `op` on the model thread. Where no thread can run (one that failed to start, as in a bundle without the
 * worker's file), `here` does the same work on the calling thread: slower to answer meanwhile, but it works.
 */
export async function offThread<T>(op: string, args: unknown, here: () => Promise<T>): Promise<T> {
  try {
    return await modelThread().call<T>(op, args);
  } catch (err) {
    if (err instanceof ModelThreadError) return await here();
    throw err;
  }
}

/**
 * A full garbage collection on the model thread and on the calling thread, for when loading is done (see
 * runtime/gc.ts: what loading leaves would otherwise stay resident).
 */
export async function collectLoadGarbage(): Promise<void> {
  await offThread("gc", null, () => Promise.resolve(false));
  collectGarbage();
}
