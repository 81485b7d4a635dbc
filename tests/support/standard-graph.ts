/** A whole sequence through a model's standard ONNX graph (onnxruntime-node): the yardstick for engine results. */
import * as fs from "node:fs";
import * as path from "node:path";
import * as ort from "onnxruntime-node";

const sessions = new Map<string, Promise<ort.InferenceSession>>();

/** Every position's logits and each layer's present K/V of `ids`, fed in one teacher-forced pass through `file`. */
export async function standardRun(dir: string, ids: number[], file = "onnx/model.onnx") {
  const config = JSON.parse(fs.readFileSync(path.join(dir, "config.json"), "utf8"));
  const headDim = config.head_dim ?? config.hidden_size / config.num_attention_heads;
  const vocab: number = config.vocab_size;
  const graph = path.join(dir, file);
  let session = sessions.get(graph);
  if (!session) sessions.set(graph, session = ort.InferenceSession.create(graph));
  const i64 = (values: number[]) => new ort.Tensor("int64", BigInt64Array.from(values, BigInt), [1, values.length]);
  const feeds: Record<string, ort.Tensor> = {
    input_ids: i64(ids),
    attention_mask: i64(ids.map(() => 1)),
    position_ids: i64(ids.map((_, i) => i)),
  };
  const empty = new ort.Tensor("float32", new Float32Array(0), [1, config.num_key_value_heads, 0, headDim]);
  for (let l = 0; l < config.num_hidden_layers; l++) {
    feeds[`past_key_values.${l}.key`] = empty;
    feeds[`past_key_values.${l}.value`] = empty;
  }
  const out = await (await session).run(feeds);
  const logits = out.logits.data as Float32Array;
  return {
    at: (position: number) => logits.subarray(position * vocab, (position + 1) * vocab),
    present: (layer: number, kind: "key" | "value") => out[`present.${layer}.${kind}`].data as Float32Array,
  };
}

/** Releases the sessions standardRun opened. */
export async function releaseStandardRuns(): Promise<void> {
  for (const session of sessions.values()) await (await session).release();
  sessions.clear();
}
