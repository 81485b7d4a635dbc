/**
 * SHA-256 digests of the served weights, one per tensor, so that a trainer can prove a refit landed (vLLM's
 * /weight_checker). A served model is an ONNX Runtime session, whose memory cannot be read back; what is hashed is
 * the tensors of the files the served weights were loaded from, by the names they have there:
 *   - a model directory with the ONNX graph of the served dtype (onnx/model.onnx for fp32, as refits pick it): the
 *     graph's initializers, less the graph's own constants (the builder's `const_*`) and rotary tables (`inv_freq`,
 *     cos/sin caches), which are not weights, as vLLM leaves out non-persistent buffers;
 *   - a Hugging Face checkpoint directory (safetensors, no ONNX graph of the served dtype): every tensor it holds,
 *     under its checkpoint name ("model.layers.0.self_attn.q_proj.weight");
 *   - an .onnx file: its initializers, as for a directory.
 * A digest is over the tensor's bytes as stored (little-endian, in the stored element type), as vLLM hashes a
 * parameter's bytes: a trainer that hashes the bytes of each tensor it saved gets the same digests. Keys carry vLLM's
 * rank prefix, that of a single-rank engine (RANK_PREFIX).
 *
 * Digests are computed from the files when first asked for, once per load. The files' sizes and modification times
 * are recorded when the weights are loaded: files changed since (a trainer saving its next step over the same
 * directory) no longer describe the served weights, and digests() refuses them (DigestsUnavailableError).
 */
import { createHash } from "node:crypto";
import * as fs from "node:fs";
import * as path from "node:path";
import { ONNX_FILES } from "./builder/build.ts";
import { decodeModel } from "./builder/onnx-read.ts";
import { BYTES_PER_ELEMENT } from "./builder/onnx-proto.ts";
import { Checkpoint, checkpointFiles } from "./sources/safetensors.ts";

/** The rank prefix of every key: vLLM's `dp{dp}:pp{pp}:pcp{pcp}:tp{tp}:ep{ep}:` for the one rank served here. */
export const RANK_PREFIX = "dp0:pp0:pcp0:tp0:ep0:";

/** vLLM's rank prefix, with or without its ep part (older vLLM keys have none). */
const RANK_PREFIX_PATTERN = /^dp(\d+):pp(\d+):pcp(\d+):tp(\d+):(?:ep(\d+):)?/;

/** Initializers that are not weights: the builder's graph constants and rotary tables. */
const NOT_WEIGHTS = [/^const_/, /inv_freq/, /cos_cached|sin_cached|cos_sin_cache|freqs_cis/];

/** Bytes hashed between yields to the event loop. */
const CHUNK_BYTES = 8 * 1024 * 1024;

/**
 * The digests cannot describe the served weights: their files changed since they were loaded, or they cannot be
 * read as weights (a model folder without the ONNX file of the served dtype and without a checkpoint).
 */
export class DigestsUnavailableError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "DigestsUnavailableError";
  }
}

/** One tensor's bytes: inline (a view) or a byte range of a file. */
type TensorBytes = { name: string; bytes: Uint8Array } | { name: string; file: string; begin: number; end: number };

interface Plan {
  /** The files the weights are read from, and their `size:mtime` when loaded. */
  stamps: Map<string, string>;
  /** Lists the tensors (reading the graph or checkpoint headers). */
  tensors: () => TensorBytes[];
}

function stampOf(file: string): string {
  const stat = fs.statSync(file);
  return `${stat.size}:${stat.mtimeMs}`;
}

function stampsOf(files: string[]): Map<string, string> {
  return new Map(files.map((f) => [f, stampOf(f)]));
}

/** The graph's initializers that are weights: inline ones as views, external ones as file ranges. */
function onnxTensors(graphPath: string): TensorBytes[] {
  const file = fs.readFileSync(graphPath);
  const model = decodeModel(new Uint8Array(file.buffer, file.byteOffset, file.byteLength));
  const dir = path.dirname(graphPath);
  const out: TensorBytes[] = [];
  for (const t of model.graph.initializers) {
    if (NOT_WEIGHTS.some((pattern) => pattern.test(t.name))) continue;
    if (!t.external) {
      out.push({ name: t.name, bytes: t.data ?? new Uint8Array(0) });
      continue;
    }
    const length = t.external.length >= 0
      ? t.external.length
      : t.dims.reduce((a, b) => a * b, 1) * (BYTES_PER_ELEMENT[t.dataType] ?? 0);
    const located = path.resolve(dir, t.external.location);
    out.push({ name: t.name, file: located, begin: t.external.offset, end: t.external.offset + length });
  }
  return out;
}

/** The files to hash for weights loaded from `source` (a directory or an .onnx file) in `dtype`, as refits choose. */
function planOf(source: string, dtype: keyof typeof ONNX_FILES): Plan {
  const stat = fs.statSync(source);
  const graph = stat.isDirectory() ? path.join(source, ONNX_FILES[dtype]) : source;
  if (!stat.isDirectory() || fs.existsSync(graph)) {
    if (!graph.endsWith(".onnx")) throw new Error(`${source} is neither a model directory nor an .onnx file`);
    // The graph and whatever lies beside it: its external data files are among them.
    const folder = path.dirname(graph);
    const files = fs.readdirSync(folder).map((f) => path.join(folder, f)).filter((f) => fs.statSync(f).isFile());
    return { stamps: stampsOf(files), tensors: () => onnxTensors(graph) };
  }
  const shards = checkpointFiles(source);
  if (shards.length === 0) throw new Error(`${source} holds neither ${ONNX_FILES[dtype]} nor a safetensors checkpoint`);
  const tensors = () => {
    const checkpoint = new Checkpoint(source);
    return checkpoint.names().map((name) => ({ name, ...checkpoint.location(name) }));
  };
  return { stamps: stampsOf(shards), tensors };
}

/** Yields to the event loop, so that hashing a large model never holds the server. */
function yieldTurn(): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, 0));
}

async function digestOf(tensor: TensorBytes, handles: Map<string, fs.promises.FileHandle>): Promise<string> {
  const hash = createHash("sha256");
  if ("bytes" in tensor) {
    for (let at = 0; at < tensor.bytes.length; at += CHUNK_BYTES) {
      hash.update(tensor.bytes.subarray(at, at + CHUNK_BYTES));
      if (at + CHUNK_BYTES < tensor.bytes.length) await yieldTurn();
    }
    return hash.digest("hex");
  }
  let handle = handles.get(tensor.file);
  if (!handle) handles.set(tensor.file, handle = await fs.promises.open(tensor.file, "r"));
  const buffer = new Uint8Array(Math.min(CHUNK_BYTES, Math.max(1, tensor.end - tensor.begin)));
  for (let at = tensor.begin; at < tensor.end;) {
    const { bytesRead } = await handle.read(buffer, 0, Math.min(buffer.length, tensor.end - at), at);
    if (bytesRead === 0) throw new Error(`${tensor.file} ends before the bytes of tensor ${tensor.name}`);
    hash.update(buffer.subarray(0, bytesRead));
    at += bytesRead;
  }
  return hash.digest("hex");
}

/**
 * The digests of the weights loaded from one source. Create it when the weights are loaded (it records the files'
 * state then); digests() computes them on first call and keeps them.
 */
export class WeightDigests {
  readonly #source: string;
  readonly #plan: Plan | Error;
  #digests: Promise<Record<string, string>> | null = null;

  constructor(source: string, dtype: keyof typeof ONNX_FILES) {
    this.#source = source;
    try {
      this.#plan = planOf(source, dtype);
    } catch (err) {
      this.#plan = err instanceof Error ? err : new Error(String(err));
    }
  }

  /** `{RANK_PREFIX + tensor name: SHA-256 hex}` of every weight tensor. */
  digests(): Promise<Record<string, string>> {
    this.#digests ??= this.#compute();
    // A failure (files changed) is not kept: the same answer is computed again, and fails again, on the next call.
    this.#digests.catch(() => (this.#digests = null));
    return this.#digests;
  }

  async #compute(): Promise<Record<string, string>> {
    const plan = this.#plan;
    if (plan instanceof Error) {
      throw new DigestsUnavailableError(`cannot checksum the weights loaded from ${this.#source}: ${plan.message}`);
    }
    this.#checkUnchanged(plan);
    const handles = new Map<string, fs.promises.FileHandle>();
    const out: Record<string, string> = {};
    try {
      for (const tensor of plan.tensors()) out[RANK_PREFIX + tensor.name] = await digestOf(tensor, handles);
    } catch (err) {
      // Changed while read (the check below says so), or not readable as weights.
      this.#checkUnchanged(plan);
      throw new DigestsUnavailableError(
        `cannot checksum the weights loaded from ${this.#source}: ${(err as Error).message}`,
      );
    } finally {
      for (const handle of handles.values()) await handle.close();
    }
    // Changed while they were read: the digests may mix two versions.
    this.#checkUnchanged(plan);
    return out;
  }

  #checkUnchanged(plan: Plan): void {
    for (const [file, stamp] of plan.stamps) {
      let now: string | null;
      try {
        now = stampOf(file);
      } catch {
        now = null;
      }
      if (now !== stamp) {
        throw new DigestsUnavailableError(
          `the weights were loaded from ${this.#source}, whose file ${path.basename(file)} has ` +
            `${now === null ? "been removed" : "changed"} since: its digests would not describe the served weights`,
        );
      }
    }
  }
}

/** A checksum key as compared: with the single-rank prefix when it has none, so a trainer's bare names compare too. */
function qualified(key: string): string {
  return RANK_PREFIX_PATTERN.test(key)
    ? key.replace(RANK_PREFIX_PATTERN, (whole, ...ranks: (string | undefined)[]) => {
      const zero = ranks.slice(0, 5).every((r) => r === undefined || Number(r) === 0);
      return zero ? RANK_PREFIX : whole;
    })
    : RANK_PREFIX + key;
}

/** The rank prefix of a qualified key. */
function prefixOf(key: string): string {
  return RANK_PREFIX_PATTERN.exec(key)?.[0] ?? "";
}

/**
 * Whether every report agrees on every digest (vLLM's compare): a key missing from any report, or with different
 * digests, is a mismatch. Keys without a rank prefix are read as this rank's; hex digests compare in any case.
 */
export function compareDigests(
  reports: Record<string, string>[],
): { match: boolean; mismatches: string[]; ranks: string[] } {
  const seen = new Map<string, Map<number, string>>();
  reports.forEach((report, index) => {
    for (const [key, digest] of Object.entries(report)) {
      const name = qualified(key);
      if (!seen.has(name)) seen.set(name, new Map());
      seen.get(name)!.set(index, String(digest).toLowerCase());
    }
  });
  const mismatches = [...seen].filter(([, digests]) =>
    digests.size !== reports.length || new Set(digests.values()).size > 1
  )
    .map(([key]) => key).sort();
  const ranks = [...new Set([...seen.keys()].map(prefixOf))].sort();
  return { match: mismatches.length === 0, mismatches, ranks };
}
