/**
 * Writes a ModelDef to disk: one .onnx file, plus one `<name>.onnx_data` file when weights go external.
 */
import * as path from "node:path";
import { AtomicFile } from "./atomic-file.ts";
import { encodeModel, type ExternalRef, type ModelDef, tensorByteLength, tensorBytes } from "./onnx-proto.ts";

/** Options for writeOnnx. */
export interface WriteOnnxOptions {
  /** Put tensors of at least `externalThreshold` bytes into `<file>_data`. */
  externalData?: boolean;
  externalThreshold?: number;
  /** Alignment of each external tensor's offset, so runtimes can map it directly. */
  alignment?: number;
  /** Told the external bytes written so far and their total after each tensor (the long part of a big build). */
  onProgress?: (written: number, total: number) => void;
}

/** The files a writeOnnx call produced (relative names) and their sizes. */
export type WrittenFiles = Record<string, number>;

/** Lets timers and I/O run between big tensors, so a server stays responsive while a model builds. */
const breathe = () => new Promise<void>((resolve) => setTimeout(resolve, 0));

/** Writes `model` to `filePath` atomically, tensors produced one at a time so big models stream. */
export async function writeOnnx(
  filePath: string,
  model: ModelDef,
  options: WriteOnnxOptions = {},
): Promise<WrittenFiles> {
  const written: WrittenFiles = {};
  const externals = new Map<string, ExternalRef>();
  const dataFile = options.externalData ? new AtomicFile(`${filePath}_data`) : undefined;
  const modelFile = new AtomicFile(filePath);
  try {
    if (dataFile) {
      const location = path.basename(dataFile.filePath);
      const threshold = options.externalThreshold ?? 1024;
      const alignment = options.alignment ?? 4096;
      const external = model.graph.initializers.filter((t) => tensorByteLength(t) >= threshold);
      const total = external.reduce((sum, t) => sum + tensorByteLength(t), 0);
      let done = 0;
      for (const t of external) {
        const length = tensorByteLength(t);
        const offset = Math.ceil(dataFile.size / alignment) * alignment;
        if (offset > dataFile.size) dataFile.write(new Uint8Array(offset - dataFile.size));
        dataFile.write(tensorBytes(t));
        externals.set(t.name, { location, offset, length });
        options.onProgress?.(done += length, total);
        await breathe();
      }
    }
    for (const chunk of encodeModel(model, externals).finish()) modelFile.write(chunk);
    // The data file lands first: a model file in place always finds its weights.
    if (dataFile) {
      dataFile.commit();
      written[path.basename(dataFile.filePath)] = dataFile.size;
    }
    modelFile.commit();
    written[path.basename(filePath)] = modelFile.size;
    return written;
  } catch (e) {
    dataFile?.abort();
    modelFile.abort();
    throw e;
  }
}
