/**
 * Writes an F32 GGUF holding exactly the weights of a model folder built by `gym-edge build-model`, for llama.cpp,
 * then reads it back and compares every weight bit for bit with the ONNX file gym-edge runs (onnx/engine.onnx,
 * whose initializers point into onnx/model.onnx_data). Prints one JSON line; exits 1 unless they are identical.
 * The weights come from gym-edge's own files, not from a second generator, so both servers hold the same numbers.
 * Run from the project root: node --import tsx bench/vs-llama-server/gguf-from-gym-edge.ts MODEL_DIR OUT.gguf
 */
import * as fs from "node:fs";
import * as path from "node:path";
import process from "node:process";
import { readInitializers } from "../../src/model/builder/onnx-read.ts";
import {
  addHyperparameters,
  addTokenizer,
  type DecoderShape,
  type F32Tensor,
  ggufName,
  GgufWriter,
  permuteRopeRows,
  readGgufTensors,
} from "./gguf.ts";

const FLOAT = 1; // ONNX TensorProto.FLOAT

/** The model's dimensions from its config.json. */
function decoderShape(
  dir: string,
  name: string,
): DecoderShape & { tied: boolean; bos: number; eos: number; pad: number } {
  const c = JSON.parse(fs.readFileSync(path.join(dir, "config.json"), "utf8"));
  if (c.model_type !== "llama" && c.model_type !== "qwen3") {
    throw new Error(`model_type ${c.model_type} is not llama or qwen3`);
  }
  const eos = Array.isArray(c.eos_token_id) ? c.eos_token_id[0] : c.eos_token_id;
  return {
    arch: c.model_type,
    name,
    hidden: c.hidden_size,
    intermediate: c.intermediate_size,
    layers: c.num_hidden_layers,
    heads: c.num_attention_heads,
    kvHeads: c.num_key_value_heads,
    headDim: c.head_dim ?? c.hidden_size / c.num_attention_heads,
    vocab: c.vocab_size,
    contextLength: c.max_position_embeddings,
    rmsEps: c.rms_norm_eps,
    ropeTheta: c.rope_theta,
    tied: c.tie_word_embeddings ?? true,
    bos: c.bos_token_id,
    eos,
    pad: c.pad_token_id ?? c.bos_token_id,
  };
}

/** The float weights of gym-edge's graph in Hugging Face names and [out, in] layout. */
function onnxWeights(onnxFile: string): F32Tensor[] {
  const weights: F32Tensor[] = [];
  for (const [name, t] of readInitializers(onnxFile)) {
    if (!name.endsWith(".weight") || t.dataType !== FLOAT) continue;
    const data = new Float32Array(t.data.slice().buffer);
    if (name.endsWith(".MatMul.weight")) {
      // stored [in, out] as MatMul's right operand
      const [din, dout] = t.dims;
      const hf = new Float32Array(data.length);
      for (let i = 0; i < din; i++) for (let o = 0; o < dout; o++) hf[o * din + i] = data[i * dout + o];
      weights.push({ name: name.replace(".MatMul.weight", ".weight"), shape: [dout, din], data: hf });
    } else weights.push({ name, shape: t.dims.map(Number), data });
  }
  return weights;
}

const ropeHeads = (s: DecoderShape, hfName: string) =>
  s.arch !== "llama"
    ? 0
    : hfName.endsWith("q_proj.weight")
    ? s.heads
    : hfName.endsWith("k_proj.weight")
    ? s.kvHeads
    : 0;

function main() {
  const [dir, out] = process.argv.slice(2);
  if (!dir || !out) throw new Error("usage: gguf-from-gym-edge.ts MODEL_DIR OUT.gguf");
  const started = performance.now();
  const record = JSON.parse(fs.readFileSync(path.join(dir, "gym-edge-build.json"), "utf8"));
  const shape = decoderShape(dir, `${record.preset ?? path.basename(dir)} (random weights, seed ${record.seed ?? 0})`);
  const engine = path.join(dir, "onnx/engine.onnx");
  const onnxFile = fs.existsSync(engine) ? engine : path.join(dir, "onnx/model.onnx");
  const weights = onnxWeights(onnxFile);

  const w = new GgufWriter(shape.arch);
  addHyperparameters(w, shape);
  addTokenizer(w, dir, shape.vocab, shape);
  for (const t of weights) {
    const heads = ropeHeads(shape, t.name);
    const data = heads ? permuteRopeRows(t.data, heads, t.shape[0], t.shape[1]) : t.data;
    w.tensor({ name: ggufName(t.name), shape: t.shape, data });
  }
  // tied embeddings: llama.cpp takes token_embd as the output matrix when output.weight is absent
  const bytes = w.write(out);

  const back = readGgufTensors(out);
  const unmatched = new Set(back.keys());
  let differing = 0;
  let params = 0;
  for (const t of weights) {
    const name = ggufName(t.name);
    unmatched.delete(name);
    const g = back.get(name);
    if (!g || JSON.stringify(g.shape) !== JSON.stringify(t.shape)) {
      differing++;
      continue;
    }
    const heads = ropeHeads(shape, t.name);
    const data = heads ? permuteRopeRows(g.data, heads, t.shape[0], t.shape[1], true) : g.data;
    const a = new Uint32Array(data.buffer, data.byteOffset, data.length);
    const b = new Uint32Array(t.data.buffer, t.data.byteOffset, t.data.length);
    if (a.some((v, i) => v !== b[i])) differing++;
    params += t.data.length;
  }
  const identical = differing === 0 && unmatched.size === 0 && weights.length > 0;
  console.log(JSON.stringify({
    gguf: out,
    from: onnxFile,
    preset: record.preset,
    seed: record.seed,
    tied_embeddings: shape.tied,
    bytes,
    tensors: w.tensorCount,
    compared_tensors: weights.length,
    compared_params: params,
    differing_tensors: differing,
    gguf_tensors_unmatched: [...unmatched],
    weights: identical ? "IDENTICAL (bitwise)" : "DIFFER",
    ms: Math.round(performance.now() - started),
  }));
  process.exit(identical ? 0 : 1);
}

main();
