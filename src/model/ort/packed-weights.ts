/**
 * One copy of a tied weight in onnxruntime-node's memory. On the CPU, ONNX Runtime repacks the B weight of every
 * float MatMul and Gemm into a layout of its own when the session opens (prepacking), and frees the weight as the
 * file had it once no other node reads it. A table that a Gather reads as well (tied embeddings: the lm_head Gemm
 * and the embedding lookup share it) is kept beside its packed copy: 350 MB twice for a 150k vocabulary. Giving the
 * Gemm a name of its own for the same bytes (packed and freed) leaves the Gather's memory-mapped table, which was
 * meant to bring in only the rows it looks up; but the kernel maps 64 kB around every page a lookup touches, and a
 * few thousand sampled tokens spread over the vocabulary bring in most of it (300 MB of the 350 after one round of
 * the GRPO-like load on the random bench model), so the table ended up twice in memory all the same.
 *
 * Here each such weight is declared a graph input as well (an initializer that a run could override): ONNX Runtime
 * neither packs nor copies those, so the Gather and the Gemm both read the one memory-mapped table, and the Gemm
 * packs the panels it multiplies as it goes (with a few dozen rows of activations, the Gemm's time is reading the
 * table either way: the GRPO-like load ran as fast, within the machine's noise). Nothing is ever fed for that input.
 */
import { decodeTensor } from "../builder/onnx-read.ts";
import { DataType } from "../builder/onnx-proto.ts";
import { decodeString, type ProtoField, ProtoWriter, readFields } from "../builder/protobuf.ts";

/** ModelProto.graph, and the GraphProto / NodeProto / ValueInfoProto fields read and written here. */
const MODEL_GRAPH = 7;
const GRAPH_NODE = 1;
const GRAPH_INITIALIZER = 5;
const GRAPH_INPUT = 11;
const NODE_INPUT = 1;
const NODE_OP_TYPE = 4;
const NODE_DOMAIN = 7;
const VALUE_INFO_NAME = 1;
const VALUE_INFO_TYPE = 2;
/** TypeProto.tensor_type, TypeProto.Tensor's elem_type and shape, TensorShapeProto.dim, Dimension.dim_value. */
const TYPE_TENSOR = 1;
const TENSOR_TYPE_ELEM_TYPE = 1;
const TENSOR_TYPE_SHAPE = 2;
const SHAPE_DIM = 1;
const DIM_VALUE = 1;

/** The operators whose input 1, a constant float weight, ONNX Runtime's CPU kernels prepack. */
const PACKING_OPS = new Set(["MatMul", "Gemm"]);

/**
 * The model `bytes` with every float weight in external data that a MatMul or Gemm would pack and another node reads
 * too also declared a graph input (see above); null when the graph has none. Every other field of the file is kept
 * as it was.
 */
export function shareTiedWeights(bytes: Uint8Array): Uint8Array | null {
  const model = [...readFields(bytes)];
  const graphField = model.find((f) => f.field === MODEL_GRAPH && f.bytes);
  if (!graphField) return null;
  const graph = [...readFields(graphField.bytes!)];
  const shared = sharedPackedWeights(graph);
  if (shared.size === 0) return null;

  const out = new ProtoWriter();
  for (const f of graph) {
    copyField(out, f);
    if (f.field !== GRAPH_INITIALIZER || !f.bytes) continue;
    const tensor = decodeTensor(f.bytes);
    if (shared.has(tensor.name)) out.message(GRAPH_INPUT, floatInput(tensor.name, tensor.dims));
  }
  const file = new ProtoWriter();
  for (const f of model) {
    if (f === graphField) file.message(MODEL_GRAPH, out);
    else copyField(file, f);
  }
  return file.toBytes();
}

/** A ValueInfoProto: a float tensor of fixed shape. */
function floatInput(name: string, dims: number[]): ProtoWriter {
  const shape = new ProtoWriter();
  for (const d of dims) shape.message(SHAPE_DIM, new ProtoWriter().int(DIM_VALUE, d));
  const tensorType = new ProtoWriter().int(TENSOR_TYPE_ELEM_TYPE, DataType.FLOAT).message(TENSOR_TYPE_SHAPE, shape);
  const type = new ProtoWriter().message(TYPE_TENSOR, tensorType);
  return new ProtoWriter().string(VALUE_INFO_NAME, name).message(VALUE_INFO_TYPE, type);
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

function valueInfoName(bytes: Uint8Array): string {
  for (const f of readFields(bytes)) if (f.field === VALUE_INFO_NAME && f.bytes) return decodeString(f.bytes);
  return "";
}

/** Writes a field read by readFields back as it was (the ONNX messages edited here hold no fixed-width fields). */
function copyField(out: ProtoWriter, f: ProtoField): void {
  if (f.bytes) out.bytes(f.field, f.bytes);
  else if (f.wire === 0) out.int(f.field, f.value!);
  else throw new Error(`cannot copy protobuf field ${f.field} of wire type ${f.wire}`);
}
