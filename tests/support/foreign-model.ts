/**
 * A model folder as another exporter might write it: the builder's standard graph and config, but every weight
 * renamed (as exporters name them: onnx::MatMul_12, ...), so the engine graph cannot take its weights by name.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { buildModel, ONNX_FILES } from "../../src/model/builder/build.ts";
import { emitStandardDecoder } from "../../src/model/builder/decoder.ts";
import { writeOnnx } from "../../src/model/builder/onnx-write.ts";
import { getPreset } from "../../src/model/builder/presets.ts";
import { randomWeights } from "../../src/model/builder/random-weights.ts";

/** Writes the foreign-named model of `preset` with `seed` into `dir`. */
export async function writeForeignModel(dir: string, preset: string, seed: number): Promise<void> {
  await buildModel({ preset, out: dir, seed });
  fs.rmSync(path.join(dir, "onnx"), { recursive: true, force: true });
  fs.rmSync(path.join(dir, "gym-edge-build.json"), { force: true });
  const model = emitStandardDecoder(getPreset(preset).arch, { dtype: "fp32", weights: randomWeights(getPreset(preset).arch, seed) });
  const renamed = new Map<string, string>();
  model.graph.initializers.forEach((t, i) => {
    if (!t.produce) return; // the graph's own constants keep their names
    renamed.set(t.name, `onnx::W_${i}`);
    t.name = `onnx::W_${i}`;
  });
  for (const node of model.graph.nodes) node.inputs = node.inputs.map((name) => renamed.get(name) ?? name);
  fs.mkdirSync(path.join(dir, "onnx"), { recursive: true });
  await writeOnnx(path.join(dir, ONNX_FILES.fp32), model);
}
