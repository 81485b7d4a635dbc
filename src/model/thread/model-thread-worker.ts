/**
 * The model thread's side (see model-thread.ts): it opens onnxruntime-node runners here and runs the calls the
 * calling thread's ThreadedRunner sends, one runner per handle; it also parses tokenizer.json and builds or
 * converts models, the load's other long stretches of work.
 */
import { parentPort } from "node:worker_threads";
import { collectGarbage } from "../../runtime/gc.ts";
import { fromWire, toWire } from "../../runtime/wire.ts";
import type { ModelRunner, RowInput } from "../../engine/model-runner.ts";
import { localNativeBackend, setCpuThreads } from "../ort/backends.ts";
import { ensureBuiltinModel } from "../builtin.ts";
import type { WeightDtype } from "../builder/layers.ts";
import { ensureConverted } from "../builder/convert.ts";
import type { OpenEngineRunnerOptions } from "../runners/engine-runner.ts";
import { serializeError, type ThreadReply, type ThreadRequest } from "./model-thread.ts";
import { openModelRunner } from "../runners/open-runner.ts";
import type { StepReply, ThreadedRunnerInfo } from "./threaded-runner.ts";
import { tokenizerParts } from "../tokenizer/tokenizer-parts.ts";
import { openWeights, type ServedWeights } from "../weights.ts";

/** Where a runner opens: the device of the calling thread's backend, with its thread count. */
interface OnDevice {
  device: "cpu" | "webgpu";
  threads: number;
}

/** What a call returns, and the buffers its answer moves. */
type Answer = { value: unknown; transfer?: ArrayBuffer[] };

const runners = new Map<number, ModelRunner>();
/** The failure of a call nobody waits on (reserve, releaseRow, copyRow, writeKv), until a step or readKv reports it. */
const failures = new Map<number, unknown>();
let nextHandle = 1;

function runner(handle: number): ModelRunner {
  const found = runners.get(handle);
  if (!found) throw new Error(`no runner ${handle} on the model thread (disposed?)`);
  return found;
}

/** The runner of a step or readKv: one whose rows a failed call left as they should not be fails this call, once. */
function runnerToRead(handle: number): ModelRunner {
  const found = runner(handle);
  if (failures.has(handle)) {
    const failure = failures.get(handle);
    failures.delete(handle);
    throw failure;
  }
  return found;
}

/** Runs a call nobody waits on, keeping its failure for the runner's next step or readKv. */
function unanswered(handle: number, call: (r: ModelRunner) => void): Answer {
  const r = runner(handle);
  try {
    call(r);
  } catch (err) {
    failures.set(handle, err);
    throw err;
  }
  return { value: r.workingBytes() };
}

function opened(r: ModelRunner): ThreadedRunnerInfo {
  const handle = nextHandle++;
  runners.set(handle, r);
  const { vocabSize, floatsPerToken, maxRows } = r;
  return {
    handle,
    vocabSize,
    floatsPerToken,
    maxRows,
    maxLength: (r as { maxLength?: number }).maxLength ?? Infinity,
    bytes: r.workingBytes(),
  };
}

async function backendOn(at: OnDevice) {
  setCpuThreads(at.threads);
  return await localNativeBackend(at.device);
}

/** Writes a step's logits one row after another into the calling thread's buffer, which it reads them from. */
function stepReply(logits: Float32Array[], into: SharedArrayBuffer, bytes: number): Answer {
  let offset = 0;
  for (const row of logits) {
    new Float32Array(into, offset * 4, row.length).set(row);
    offset += row.length;
  }
  return { value: { bytes } satisfies StepReply };
}

type Handler = (args: any) => Promise<Answer> | Answer;

const handlers: Record<string, Handler> = {
  async "open.model"(args: OnDevice & { options: Omit<OpenEngineRunnerOptions, "backend"> }) {
    const { runner: r, layout, reason } = await openModelRunner({ ...args.options, backend: await backendOn(args) });
    return { value: { ...opened(r), layout, reason } };
  },
  async "open.weights"(args: OnDevice & { real: string; served: Omit<ServedWeights, "backend"> }) {
    const r = await openWeights(args.real, { ...args.served, backend: await backendOn(args) });
    return { value: opened(r) };
  },
  async "runner.step"({ handle, inputs, logits }: { handle: number; inputs: RowInput[]; logits: SharedArrayBuffer }) {
    const r = runnerToRead(handle);
    const reply = stepReply(await r.step(inputs), logits, r.workingBytes());
    r.releaseLogits?.();
    return reply;
  },
  "runner.reserve"({ handle, length, rows }: { handle: number; length: number; rows?: number }) {
    return unanswered(handle, (r) => r.reserve(length, rows));
  },
  "runner.releaseRow"({ handle, row }: { handle: number; row: number }) {
    return unanswered(handle, (r) => r.releaseRow(row));
  },
  "runner.copyRow"({ handle, from, to, length }: { handle: number; from: number; to: number; length: number }) {
    return unanswered(handle, (r) => r.copyRow(from, to, length));
  },
  async "runner.readKv"(
    args: { handle: number; row: number; start: number; length: number; out?: Float32Array },
  ) {
    const r = runnerToRead(args.handle);
    // Shared memory of the calling thread is written in place; otherwise the KV goes back in a moved buffer.
    const out = args.out ?? new Float32Array(args.length * r.floatsPerToken);
    r.readKv(args.row, args.start, args.length, out);
    await r.flush?.();
    return args.out ? { value: null } : { value: out, transfer: [out.buffer as ArrayBuffer] };
  },
  "runner.writeKv"(args: { handle: number; row: number; start: number; length: number; data: Float32Array }) {
    return unanswered(args.handle, (r) => r.writeKv(args.row, args.start, args.length, args.data));
  },
  async "runner.dispose"({ handle }: { handle: number }) {
    const r = runners.get(handle);
    runners.delete(handle);
    failures.delete(handle);
    await r?.dispose();
    return { value: null };
  },
  "tokenizer.parts"({ file }: { file: string }) {
    const parts = tokenizerParts(file);
    const transfer = parts ? [parts.vocab.ends.buffer, parts.vocab.ids.buffer, parts.merges.ends.buffer] : [];
    return { value: parts, transfer: transfer as ArrayBuffer[] };
  },
  gc() {
    return { value: collectGarbage() };
  },
  async "builtin.ensure"({ cacheDir }: { cacheDir: string }) {
    return { value: await ensureBuiltinModel(cacheDir) };
  },
  async "checkpoint.convert"({ src, cacheDir, dtype }: { src: string; cacheDir: string; dtype: WeightDtype }) {
    return { value: await ensureConverted(src, cacheDir, dtype) };
  },
};

function reply(message: ThreadReply, transfer: ArrayBuffer[] = []): void {
  try {
    parentPort!.postMessage(message, transfer);
  } catch (err) {
    parentPort!.postMessage({ id: message.id, error: serializeError(err) } satisfies ThreadReply);
  }
}

parentPort!.on("message", async ({ id, op, args }: ThreadRequest) => {
  try {
    const handler = handlers[op];
    if (!handler) throw new Error(`the model thread has no operation ${op}`);
    const { value, transfer = [] } = await handler(fromWire(args));
    const moved = [...transfer];
    reply({ id, value: toWire(value, moved) }, moved);
  } catch (err) {
    reply({ id, error: serializeError(err) });
  }
});
