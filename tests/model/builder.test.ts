import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import * as ort from "onnxruntime-node";
import { AutoModelForCausalLM, AutoTokenizer, env } from "@huggingface/transformers";
import {
  BUILD_RECORD,
  type BuildDtype,
  buildModel,
  ensureModel,
  isBuiltModel,
  ONNX_FILES,
} from "../../src/model/builder/build.ts";
import { randomWeights } from "../../src/model/builder/random-weights.ts";
import { decodeModel } from "../../src/model/builder/onnx-read.ts";
import { ProtoWriter, readFields, readPackedVarints } from "../../src/model/builder/protobuf.ts";
import { PRESETS } from "../../src/model/builder/presets.ts";
import { float16ToFloat32, fromFloat16Bits, toFloat16Bits } from "../../src/model/builder/quantize.ts";
import { type ForwardInput, type LayerKv, leftPad, loadReference, referenceForward } from "./reference.ts";

env.allowRemoteModels = false;
const root = fs.mkdtempSync(path.join(os.tmpdir(), "gym-edge-builder-"));
const tiny = path.join(root, "tiny");
const sha256 = (file: string) => createHash("sha256").update(fs.readFileSync(file)).digest("hex");
const arch = PRESETS.tiny.arch; // tiny-llama3 shares every dimension but the vocabulary

type Feeds = Record<string, ort.Tensor>;

const references = new Map<string, ReturnType<typeof loadReference>>();
/** The reference model of a build's `dtype` file, loaded once. */
function reference(dtype: BuildDtype = "fp32", dir = tiny) {
  const key = `${dir}:${dtype}`;
  if (!references.has(key)) references.set(key, loadReference(dir, dtype));
  return references.get(key)!;
}

/** ONNX feeds for a batch, with an empty or given past. */
function feeds(input: ForwardInput, dtype: BuildDtype = "fp32"): Feeds {
  const rows = input.inputIds.length;
  const i64 = (m: number[][]) => new ort.Tensor("int64", BigInt64Array.from(m.flat(), BigInt), [rows, m[0].length]);
  const out: Feeds = {
    input_ids: i64(input.inputIds),
    attention_mask: i64(input.attentionMask),
    position_ids: i64(input.positionIds),
  };
  const pastLen = input.attentionMask[0].length - input.inputIds[0].length;
  const dims = [rows, arch.numKvHeads, pastLen, arch.headDim];
  for (let i = 0; i < arch.numLayers; i++) {
    for (const kind of ["key", "value"] as const) {
      const data = input.past?.[i][kind] ?? new Float32Array(rows * arch.numKvHeads * pastLen * arch.headDim);
      out[`past_key_values.${i}.${kind}`] = dtype === "fp16"
        ? new ort.Tensor("float16", Uint16Array.from(data, toFloat16Bits), dims)
        : new ort.Tensor("float32", data, dims);
    }
  }
  return out;
}

async function runOnnx(dtype: BuildDtype, input: ForwardInput, dir = tiny) {
  const session = await ort.InferenceSession.create(path.join(dir, ONNX_FILES[dtype]));
  try {
    const out = await session.run(feeds(input, dtype));
    const f32 = (t: ort.Tensor) =>
      t.type === "float16" ? float16ToFloat32(t.data as Uint16Array) : (t.data as Float32Array);
    const present: LayerKv[] = Array.from({ length: arch.numLayers }, (_, i) => ({
      key: f32(out[`present.${i}.key`]),
      value: f32(out[`present.${i}.value`]),
    }));
    return { logits: f32(out.logits), dims: out.logits.dims, present };
  } finally {
    await session.release();
  }
}

function maxDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  assert.equal(a.length, b.length);
  let max = 0;
  for (let i = 0; i < a.length; i++) max = Math.max(max, Math.abs(a[i] - b[i]));
  return max;
}

describe("model builder", () => {
  before(async () => {
    await buildModel({ preset: "tiny", out: tiny, seed: 0, dtype: ["fp32", "fp16", "q4"] });
  });
  after(() => fs.rmSync(root, { recursive: true, force: true }));

  test("protobuf writer and reader round-trip ints, negatives, floats and strings", () => {
    const bytes = new ProtoWriter().int(1, 300).int(2, -1).float(3, 1.5).string(4, "héllo").int(5, 2 ** 40).toBytes();
    const fields = [...readFields(bytes)];
    assert.deepEqual(fields.map((f) => f.value ?? new TextDecoder().decode(f.bytes)), [300, -1, 1.5, "héllo", 2 ** 40]);
    assert.deepEqual(readPackedVarints(Uint8Array.from([0x96, 0x01, 0x05])), [150, 5]);
  });

  test("float16 conversion rounds to nearest even and round-trips", () => {
    for (const x of [0, 1, -2.5, 65504, 1e-7, 0.1, 3.14159]) {
      assert.ok(Math.abs(fromFloat16Bits(toFloat16Bits(x)) - x) <= Math.abs(x) * 1e-3 + 6e-8, `${x}`);
    }
    assert.equal(toFloat16Bits(1 + 2 ** -11), 0x3c00); // tie goes to even
    assert.equal(toFloat16Bits(70000), 0x7c00); // overflow is inf
  });

  test("the same seed gives byte-identical files and another seed different weights", async () => {
    const again = path.join(root, "tiny-again");
    const other = path.join(root, "tiny-seed1");
    await buildModel({ preset: "tiny", out: again, seed: 0 });
    await buildModel({ preset: "tiny", out: other, seed: 1 });
    for (const file of ["onnx/model.onnx", "config.json", "tokenizer.json", "tokenizer_config.json"]) {
      assert.equal(sha256(path.join(again, file)), sha256(path.join(tiny, file)), file);
    }
    assert.notEqual(sha256(path.join(other, "onnx/model.onnx")), sha256(path.join(tiny, "onnx/model.onnx")));
  });

  test("random weights are the same bits on every runtime", () => {
    const q = randomWeights(arch, 0)("model.layers.0.self_attn.q_proj.MatMul.weight");
    const digest = createHash("sha256").update(new Uint8Array(q.buffer)).digest("hex");
    assert.equal(digest, "08e2da3a06087dd023f0baa98356e4d227728e9e5cb24afd545b6cfec8c4512d");
    const std = Math.sqrt(q.reduce((sum, x) => sum + x * x, 0) / q.length);
    assert.ok(Math.abs(std - 0.02) < 0.001, `std ${std}`);
  });

  test("config.json and generation_config.json describe the tiny Qwen3 preset", () => {
    const config = JSON.parse(fs.readFileSync(path.join(tiny, "config.json"), "utf8"));
    const fields = "model_type hidden_size num_hidden_layers num_attention_heads num_key_value_heads head_dim " +
      "intermediate_size vocab_size rope_theta max_position_embeddings tie_word_embeddings eos_token_id pad_token_id";
    const expected = ["qwen3", 64, 2, 4, 2, 16, 128, 151936, 1e6, 4096, true, 151645, 151643];
    assert.deepEqual(fields.split(" ").map((k) => config[k]), expected);
    assert.deepEqual(config.architectures, ["Qwen3ForCausalLM"]);
    const generation = JSON.parse(fs.readFileSync(path.join(tiny, "generation_config.json"), "utf8"));
    assert.deepEqual(generation.eos_token_id, [151645, 151643]);
    const tokenizerConfig = JSON.parse(fs.readFileSync(path.join(tiny, "tokenizer_config.json"), "utf8"));
    assert.equal(tokenizerConfig.eos_token, "<|im_end|>");
    assert.match(tokenizerConfig.chat_template, /<\|im_start\|>/);
  });

  test("the graph has the inputs and outputs transformers.js expects", () => {
    const model = decodeModel(fs.readFileSync(path.join(tiny, "onnx/model.onnx")));
    assert.equal(model.opsets[""], 17);
    const io = (list: typeof model.graph.inputs) => list.map((v) => `${v.name}:${v.elemType}:[${v.dims}]`);
    assert.deepEqual(io(model.graph.inputs), [
      "input_ids:7:[batch_size,sequence_length]",
      "attention_mask:7:[batch_size,total_sequence_length]",
      "position_ids:7:[batch_size,sequence_length]",
      "past_key_values.0.key:1:[batch_size,2,past_sequence_length,16]",
      "past_key_values.0.value:1:[batch_size,2,past_sequence_length,16]",
      "past_key_values.1.key:1:[batch_size,2,past_sequence_length,16]",
      "past_key_values.1.value:1:[batch_size,2,past_sequence_length,16]",
    ]);
    assert.deepEqual(io(model.graph.outputs), [
      "logits:1:[batch_size,sequence_length,151936]",
      "present.0.key:1:[batch_size,2,total_sequence_length,16]",
      "present.0.value:1:[batch_size,2,total_sequence_length,16]",
      "present.1.key:1:[batch_size,2,total_sequence_length,16]",
      "present.1.value:1:[batch_size,2,total_sequence_length,16]",
    ]);
  });

  test("a folder is complete only with its build record and every file it lists", async () => {
    assert.ok(isBuiltModel(tiny, { preset: "tiny", seed: 0, dtype: ["fp32", "q4"] }));
    assert.ok(!isBuiltModel(tiny, { seed: 1 }));
    const copy = path.join(root, "tiny-copy");
    fs.cpSync(tiny, copy, { recursive: true });
    fs.truncateSync(path.join(copy, "onnx/model.onnx"), 1000);
    assert.ok(!isBuiltModel(copy));
    fs.rmSync(path.join(copy, BUILD_RECORD));
    assert.ok(!isBuiltModel(copy));
    assert.ok(!isBuiltModel(path.join(root, "missing")));
    const before = fs.statSync(path.join(tiny, "onnx/model.onnx")).mtimeMs;
    const record = await ensureModel({ preset: "tiny", out: tiny, dtype: "q4" });
    assert.deepEqual(record.dtypes, ["fp32", "fp16", "q4"]);
    assert.equal(fs.statSync(path.join(tiny, "onnx/model.onnx")).mtimeMs, before, "a complete model is not rebuilt");
  });

  test("onnxruntime matches the reference on a single row", async () => {
    const input = leftPad([[9707, 11, 1879, 0, 42, 151644]], 151643);
    const onnx = await runOnnx("fp32", input);
    const ref = referenceForward(reference(), input);
    assert.deepEqual(onnx.dims, [1, 6, 151936]);
    assert.ok(maxDiff(onnx.logits, ref.logits) < 1e-4, `logits differ by ${maxDiff(onnx.logits, ref.logits)}`);
    assert.ok(maxDiff(onnx.present[1].value, ref.present[1].value) < 1e-4);
  });

  test("onnxruntime matches the reference on a left-padded batch, row by row as alone", async () => {
    const rows = [[100, 200, 300, 400, 500, 600, 700], [151644, 872, 198]];
    const batch = leftPad(rows, 151643);
    const onnx = await runOnnx("fp32", batch);
    const ref = referenceForward(reference(), batch);
    assert.ok(maxDiff(onnx.logits, ref.logits) < 1e-4, `logits differ by ${maxDiff(onnx.logits, ref.logits)}`);
    // The short row's real positions give the same logits as the row run alone.
    const alone = await runOnnx("fp32", leftPad([rows[1]], 151643));
    const vocab = 151936;
    const padded = onnx.logits.subarray((7 + 4) * vocab, 14 * vocab);
    assert.ok(maxDiff(padded, alone.logits) < 1e-4, `padding changes logits by ${maxDiff(padded, alone.logits)}`);
  });

  test("a decode step with past_key_values matches the reference", async () => {
    const prompt = leftPad([[1, 2, 3, 4, 5], [6, 7]], 151643);
    const model = reference();
    const prefillOnnx = await runOnnx("fp32", prompt);
    const prefillRef = referenceForward(model, prompt);
    const step = (past: LayerKv[]): ForwardInput => ({
      inputIds: [[8], [9]],
      attentionMask: prompt.attentionMask.map((m) => [...m, 1]),
      positionIds: [[5], [2]],
      past,
    });
    const onnx = await runOnnx("fp32", step(prefillOnnx.present));
    const ref = referenceForward(model, step(prefillRef.present));
    assert.deepEqual(onnx.dims, [2, 1, 151936]);
    assert.ok(maxDiff(onnx.logits, ref.logits) < 1e-4, `logits differ by ${maxDiff(onnx.logits, ref.logits)}`);
    assert.ok(maxDiff(onnx.present[0].key, ref.present[0].key) < 1e-4);
    // The same as prefilling the whole row at once.
    const whole = referenceForward(model, leftPad([[1, 2, 3, 4, 5, 8]], 151643));
    assert.ok(maxDiff(whole.logits.subarray(5 * 151936), ref.logits.subarray(0, 151936)) < 1e-4);
  });

  test("fp16 and q4 files run and stay close to the reference of their own weights", async () => {
    const input = leftPad([[10, 20, 30, 40], [50, 60]], 151643);
    // q4 multiplies in int8 (MatMulNBits accuracy_level 4): its activations are rounded per block, 8e-3 here, where
    // its weights alone are 0.13 from fp32's logits.
    for (const [dtype, tolerance] of [["fp16", 5e-3], ["q4", 2e-2]] as const) {
      const onnx = await runOnnx(dtype, input);
      const ref = referenceForward(reference(dtype), input);
      const diff = maxDiff(onnx.logits, ref.logits);
      assert.ok(diff < tolerance, `${dtype}: logits differ by ${diff}`);
    }
  });

  test("tiny-llama3 (no q/k norm) matches the reference; its chat turns end with the tokenizer's EOS", async () => {
    const dir = path.join(root, "tiny-llama3");
    await buildModel({ preset: "tiny-llama3", out: dir });
    const config = JSON.parse(fs.readFileSync(path.join(dir, "config.json"), "utf8"));
    assert.deepEqual([config.model_type, config.vocab_size, config.eos_token_id], ["llama", 128256, 128009]);
    const input = leftPad([[128000, 9906, 1917], [128000, 40]], 128001);
    const onnx = await runOnnx("fp32", input, dir);
    const diff = maxDiff(onnx.logits, referenceForward(reference("fp32", dir), input).logits);
    assert.ok(diff < 1e-4, `logits differ by ${diff}`);
    const tokenizer = await AutoTokenizer.from_pretrained(dir, { local_files_only: true });
    const text = tokenizer.apply_chat_template([{ role: "user", content: "Hi" }], { tokenize: false }) as string;
    assert.equal(tokenizer.eos_token_id, 128009);
    // This template always appends the assistant header; the user turn before it ends with the EOS.
    assert.ok(tokenizer.encode(text, { add_special_tokens: false }).includes(128009));
  });

  test("weights in external data load and compute the same logits", async () => {
    const dir = path.join(root, "tiny-external");
    await buildModel({ preset: { ...PRESETS.tiny, name: "tiny-external", externalData: true }, out: dir });
    assert.ok(fs.statSync(path.join(dir, "onnx/model.onnx")).size < 1e6);
    assert.ok(fs.statSync(path.join(dir, "onnx/model.onnx_data")).size > 38e6);
    const config = JSON.parse(fs.readFileSync(path.join(dir, "config.json"), "utf8"));
    assert.equal(config["transformers.js_config"].use_external_data_format, true);
    const input = leftPad([[5, 6, 7]], 151643);
    const onnx = await runOnnx("fp32", input, dir);
    assert.ok(maxDiff(onnx.logits, (await runOnnx("fp32", input)).logits) === 0);
    assert.ok(maxDiff(onnx.logits, referenceForward(reference("fp32", dir), input).logits) < 1e-4);
  });

  test("transformers.js loads the folder and generates", async () => {
    const tokenizer = await AutoTokenizer.from_pretrained(tiny, { local_files_only: true });
    const options = { local_files_only: true, dtype: "fp32", device: "cpu" } as const;
    const model = await AutoModelForCausalLM.from_pretrained(tiny, options);
    try {
      const text = tokenizer.apply_chat_template([{ role: "user", content: "Hello" }], {
        tokenize: false,
        add_generation_prompt: true,
      }) as string;
      const inputs = tokenizer(text);
      const output = (await model.generate({ ...inputs, max_new_tokens: 4 })) as { dims: number[] };
      assert.equal(output.dims[1], inputs.input_ids.dims[1] + 4);
    } finally {
      await model.dispose();
    }
  });
});
