/**
 * A Hugging Face checkpoint folder made from a builder preset's random weights: config and tokenizer files as the
 * builder writes them, weights in model.safetensors under Hugging Face names and shapes (linear weights [out, in]),
 * the way trainers save them.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { buildModel } from "../../src/model/builder/build.ts";
import { weightSpecs } from "../../src/model/builder/arch.ts";
import { getPreset } from "../../src/model/builder/presets.ts";
import { randomWeights } from "../../src/model/builder/random-weights.ts";
import { type TensorToWrite, writeSafetensors } from "../../src/model/sources/safetensors.ts";

/** Writes the checkpoint of `preset` with `seed` into `dir` (dtype of the stored tensors: F32 or BF16). */
export async function writeCheckpoint(dir: string, preset: string, seed: number, dtype: "F32" | "BF16" = "F32") {
  const { arch } = getPreset(preset);
  // The builder's config and tokenizer files; its ONNX folder is dropped: a checkpoint has none.
  await buildModel({ preset, out: dir, seed });
  fs.rmSync(path.join(dir, "onnx"), { recursive: true, force: true });
  fs.rmSync(path.join(dir, "gym-edge-build.json"), { force: true });
  const weights = randomWeights(arch, seed);
  const tensors: TensorToWrite[] = weightSpecs(arch).map((spec) => {
    const values = weights(spec.name);
    if (spec.kind !== "linear") return { name: spec.name, dtype, shape: spec.dims, data: values };
    const [rows, cols] = spec.dims; // [in, out] in the builder; [out, in] in the checkpoint
    const data = new Float32Array(values.length);
    for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) data[c * rows + r] = values[r * cols + c];
    return { name: spec.name.replace(/\.MatMul\.weight$/, ".weight"), dtype, shape: [cols, rows], data };
  });
  writeSafetensors(path.join(dir, "model.safetensors"), tensors);
}
