/**
 * One copy of a tied weight in onnxruntime-node's memory. On the CPU, ONNX Runtime repacks the B weight of every
 * float MatMul and Gemm into a layout of its own when the session opens (prepacking), and frees the weight as the
 * file had it once no other node reads it. A table that a Gather reads as well (tied embeddings: the lm_head Gemm
 * and the embedding lookup share it) is kept whole beside its packed copy: 350 MB twice for a 150k vocabulary.
 * Here the graph gives each such weight a second name over the same external bytes, read by the MatMul or Gemm
 * alone: that name is packed and freed, and the Gather's own, memory-mapped, touches only the rows it looks up.
 * Nothing of the computation changes: the same bytes feed the same nodes.
 */
import { decodeTensor } from "../builder/onnx-read.ts";
import { DataType } from "../builder/onnx-proto.ts";
import { decodeString, type ProtoField, ProtoWriter, readFields } from "../builder/protobuf.ts";

/** ModelProto.graph, and the GraphProto / NodeProto / TensorProto fields read here. */
const MODEL_GRAPH = 7;
const GRAPH_NODE = 1;
const GRAPH_INITIALIZER = 5;
const GRAPH_INPUT = 11;
const NODE_INPUT = 1;
const NODE_OP_TYPE = 4;
const NODE_DOMAIN = 7;
const TENSOR_NAME = 8;
const VALUE_INFO_NAME = 1;

/** The operators whose input 1, a constant float weight, ONNX Runtime's CPU kernels prepack. */
const PACKING_OPS = new Set(["MatMul", "Gemm"]);

/** The suffix of a weight's second name. */
export const PACKED_SUFFIX = "/packed";

/**
 * The model `bytes` with every float weight in external data that a MatMul or Gemm packs and another node reads too
 * given a second name for the packing nodes (see above); null when the graph has none. Every other field of the
 * file is kept as it was.
 */
export function splitPackedWeights(bytes: Uint8Array): Uint8Array | null {
  const model = [...readFields(bytes)];
  const graphField = model.find((f) => f.field === MODEL_GRAPH && f.bytes);
  if (!graphField) return null;
  const graph = [...readFields(graphField.bytes!)];
  const shared = sharedPackedWeights(graph);
  if (shared.size === 0) return null;

  const out = new ProtoWriter();
  for (const f of graph) {
    if (f.field === GRAPH_NODE && f.bytes) out.bytes(GRAPH_NODE, renamePackedInput(f.bytes, shared));
    else copyField(out, f);
    if (f.field === GRAPH_INITIALIZER && f.bytes) {
      const name = initializerName(f.bytes);
      if (shared.has(name)) out.bytes(GRAPH_INITIALIZER, renamedTensor(f.bytes, name + PACKED_SUFFIX));
    }
  }
  const file = new ProtoWriter();
  for (const f of model) {
    if (f === graphField) file.message(MODEL_GRAPH, out);
    else copyField(file, f);
  }
  return file.toBytes();
}

/** The float initializers in external data that are input 1 of a packing node and read by another node as well. */
function sharedPackedWeights(graph: ProtoField[]): Set<string> {
  const candidates = new Set<string>();
  for (const f of graph) {
    if (f.field !== GRAPH_INITIALIZER || !f.bytes) continue;
    const t = decodeTensor(f.bytes);
    if (t.external && t.dataType === DataType.FLOAT && t.dims.length === 2) candidates.add(t.name);
  }
  // A weight that is also a graph input can be fed at run time: ONNX Runtime does not pack it.
  for (const f of graph) {
    if (f.field === GRAPH_INPUT && f.bytes) candidates.delete(valueInfoName(f.bytes));
  }
  const packed = new Set<string>();
  const otherwise = new Set<string>();
  for (const f of graph) {
    if (f.field !== GRAPH_NODE || !f.bytes) continue;
    const node = readNode(f.bytes);
    node.inputs.forEach((input, i) => {
      if (!candidates.has(input)) return;
      if (i === 1 && node.packs) packed.add(input);
      else otherwise.add(input);
    });
  }
  return new Set([...packed].filter((name) => otherwise.has(name)));
}

/** A node's inputs, and whether ONNX Runtime packs its input 1 (a MatMul or Gemm of the default domain). */
function readNode(bytes: Uint8Array): { inputs: string[]; packs: boolean } {
  const inputs: string[] = [];
  let opType = "";
  let domain = "";
  for (const f of readFields(bytes)) {
    if (f.field === NODE_INPUT && f.bytes) inputs.push(decodeString(f.bytes));
    else if (f.field === NODE_OP_TYPE && f.bytes) opType = decodeString(f.bytes);
    else if (f.field === NODE_DOMAIN && f.bytes) domain = decodeString(f.bytes);
  }
  return { inputs, packs: PACKING_OPS.has(opType) && (domain === "" || domain === "ai.onnx") };
}

/** The node as it was, or with its input 1 renamed when that is a shared weight it packs. */
function renamePackedInput(bytes: Uint8Array, shared: Set<string>): Uint8Array {
  const node = readNode(bytes);
  if (!node.packs || !shared.has(node.inputs[1])) return bytes;
  const out = new ProtoWriter();
  let input = 0;
  for (const f of readFields(bytes)) {
    if (f.field === NODE_INPUT && f.bytes && input++ === 1) out.string(NODE_INPUT, decodeString(f.bytes) + PACKED_SUFFIX);
    else copyField(out, f);
  }
  return out.toBytes();
}

function initializerName(bytes: Uint8Array): string {
  for (const f of readFields(bytes)) if (f.field === TENSOR_NAME && f.bytes) return decodeString(f.bytes);
  return "";
}

function valueInfoName(bytes: Uint8Array): string {
  for (const f of readFields(bytes)) if (f.field === VALUE_INFO_NAME && f.bytes) return decodeString(f.bytes);
  return "";
}

/** The tensor with its name replaced: the same type, shape and external data location. */
function renamedTensor(bytes: Uint8Array, name: string): Uint8Array {
  const out = new ProtoWriter();
  for (const f of readFields(bytes)) {
    if (f.field === TENSOR_NAME) out.string(TENSOR_NAME, name);
    else copyField(out, f);
  }
  return out.toBytes();
}

/** Writes a field read by readFields back as it was (the ONNX messages edited here hold no fixed-width fields). */
function copyField(out: ProtoWriter, f: ProtoField): void {
  if (f.bytes) out.bytes(f.field, f.bytes);
  else if (f.wire === 0) out.int(f.field, f.value!);
  else throw new Error(`cannot copy protobuf field ${f.field} of wire type ${f.wire}`);
}
