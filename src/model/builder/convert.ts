/**
 * Hugging Face checkpoints (config.json + safetensors) into the builder's model folder: the standard graph and the
 * engine graph over the checkpoint's own weights, beside copies of its config and tokenizer files. This is how a
 * model published without ONNX files, or a trainer's saved checkpoint, gets the engine layout: the builder owns
 * the model code (as vLLM does), the checkpoint brings the numbers.
 */
import { createHash } from "node:crypto";
import * as fs from "node:fs";
import * as path from "node:path";
import { Checkpoint, checkpointFiles } from "../sources/safetensors.ts";
import { writeFileAtomic } from "./atomic-file.ts";
import { archFromConfig, type DecoderArch, weightSpecs } from "./arch.ts";
import { unsupportedFeatures } from "./architectures/registry.ts";
import { BUILD_RECORD, type BuiltModel, ENGINE_FILES, isBuiltModel, ONNX_FILES, readBuildRecord } from "./build.ts";
import { emitStandardDecoder } from "./decoder.ts";
import { writeEngineGraph } from "./engine-decoder.ts";
import type { WeightDtype } from "./layers.ts";
import { writeOnnx } from "./onnx-write.ts";
import type { WeightSource } from "./random-weights.ts";

/** The checkpoint's files that travel with the converted folder, when present. */
const COPIED = [
  "config.json",
  "generation_config.json",
  "tokenizer.json",
  "tokenizer_config.json",
  "special_tokens_map.json",
  "chat_template.jinja",
];

/** The builder's weights, read from the checkpoint: linear weights transposed to MatMul's [in, out]. */
export function checkpointWeights(checkpoint: Checkpoint, arch: DecoderArch): WeightSource {
  const expected = new Map(weightSpecs(arch).map((s) => [s.name, s.dims]));
  return (name) => {
    const dims = expected.get(name);
    if (!dims) throw new Error(`no weight named ${name}`);
    const linear = name.endsWith(".MatMul.weight");
    const source = linear ? name.replace(/\.MatMul\.weight$/, ".weight") : name;
    const shape = checkpoint.shape(source);
    const want = linear ? [dims[1], dims[0]] : dims;
    if (shape.join() !== want.join()) throw new Error(`checkpoint tensor ${source} is [${shape}], expected [${want}]`);
    const values = checkpoint.read(source);
    return linear ? transpose(values, shape[0], shape[1]) : values;
  };
}

function transpose(values: Float32Array, rows: number, cols: number): Float32Array {
  const out = new Float32Array(values.length);
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) out[c * rows + r] = values[r * cols + c];
  }
  return out;
}

/** What identifies a checkpoint's content cheaply: its files' names, sizes and modification times. */
function fingerprint(src: string): string {
  const files = [path.join(src, "config.json"), ...checkpointFiles(src)];
  const hash = createHash("sha256");
  for (const file of files) {
    const stat = fs.statSync(file);
    hash.update(`${path.basename(file)}:${stat.size}:${stat.mtimeMs}\n`);
  }
  return hash.digest("hex");
}

/** Options of convertCheckpoint. */
export interface ConvertOptions {
  /** A folder with config.json, safetensors and tokenizer files. */
  src: string;
  /** The model folder to write. */
  out: string;
  dtype?: WeightDtype;
}

/** Writes the builder's model folder for a checkpoint; refuses architectures the builder cannot reproduce. */
export async function convertCheckpoint(options: ConvertOptions): Promise<BuiltModel> {
  const src = path.resolve(options.src);
  const out = path.resolve(options.out);
  const dtype = options.dtype ?? "fp32";
  const config = JSON.parse(fs.readFileSync(path.join(src, "config.json"), "utf8")) as Record<string, unknown>;
  const unsupported = unsupportedFeatures(config);
  if (unsupported.length > 0) throw new Error(`${src} cannot be converted: unsupported ${unsupported.join(", ")}`);
  const arch = archFromConfig(config);
  const checkpoint = new Checkpoint(src);
  const biases = checkpoint.names().filter((n) => n.endsWith(".bias"));
  if (biases.length > 0) throw new Error(`${src} cannot be converted: it has biases (${biases[0]}, ...)`);

  fs.rmSync(path.join(out, BUILD_RECORD), { force: true });
  fs.mkdirSync(path.join(out, "onnx"), { recursive: true });
  const files: Record<string, number> = {};
  for (const name of COPIED) {
    const from = path.join(src, name);
    if (!fs.existsSync(from)) continue;
    const bytes = fs.readFileSync(from);
    writeFileAtomic(path.join(out, name), bytes);
    files[name] = bytes.byteLength;
  }
  const onnxPath = path.join(out, ONNX_FILES[dtype]);
  const model = emitStandardDecoder(arch, { dtype, weights: checkpointWeights(checkpoint, arch) });
  const written = await writeOnnx(onnxPath, model, { externalData: true });
  for (const [name, size] of Object.entries(written)) files[`onnx/${name}`] = size;
  files[ENGINE_FILES[dtype]] = writeEngineGraph(onnxPath, path.join(out, ENGINE_FILES[dtype]), arch, dtype);

  const record = { preset: "checkpoint", seed: 0, source: src, fingerprint: fingerprint(src), dtypes: [dtype], files };
  writeFileAtomic(path.join(out, BUILD_RECORD), JSON.stringify(record, null, 2) + "\n");
  return { ...record, dir: out };
}

/** Where checkpoint `src` converts to under `cacheDir`/converted, and whether a complete conversion of the same files is there. */
export function conversionOf(src: string, cacheDir: string, dtype: WeightDtype = "fp32"): { out: string; current: boolean } {
  const real = fs.realpathSync(src);
  const out = path.join(cacheDir, "converted", createHash("sha256").update(real).digest("hex").slice(0, 16));
  const record = readBuildRecord(out) as (BuiltModel & { fingerprint?: string }) | undefined;
  return { out, current: record?.fingerprint === fingerprint(real) && isBuiltModel(out, { dtype }) };
}

/**
 * The converted folder of checkpoint `src` under `cacheDir`/converted, converting only when no complete
 * conversion of the same files is there.
 */
export async function ensureConverted(src: string, cacheDir: string, dtype: WeightDtype = "fp32"): Promise<string> {
  const { out, current } = conversionOf(src, cacheDir, dtype);
  if (!current) await convertCheckpoint({ src: fs.realpathSync(src), out, dtype });
  return out;
}
