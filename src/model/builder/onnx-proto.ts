/**
 * ONNX ModelProto encoding: the plain-object model the builder produces, and its wire form
 * (field numbers as in onnx.proto).
 */
import { ProtoWriter } from "./protobuf.ts";

/** ONNX TensorProto.DataType values used here. */
export const DataType = {
  FLOAT: 1,
  UINT8: 2,
  INT8: 3,
  INT32: 6,
  INT64: 7,
  BOOL: 9,
  FLOAT16: 10,
  DOUBLE: 11,
} as const;

/** Bytes per element of each supported data type. */
export const BYTES_PER_ELEMENT: Record<number, number> = { 1: 4, 2: 1, 3: 1, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8 };

/** A dimension: a fixed size or a symbolic name such as "batch_size". */
export type Dim = number | string;

/** A graph input or output. */
export interface ValueInfo {
  name: string;
  elemType: number;
  dims: Dim[];
}

/** Where an initializer's bytes live when they are outside the .onnx file. */
export interface ExternalRef {
  location: string;
  offset: number;
  length: number;
}

/** A tensor with its raw little-endian bytes, produced eagerly (`data`) or on demand (`produce`). */
export interface Tensor {
  name: string;
  dataType: number;
  dims: number[];
  data?: Uint8Array;
  produce?: () => Uint8Array;
}

/** A float-valued attribute (plain numbers are written as ints). */
export interface FloatAttr {
  float: number;
}

/** Attribute values: integer(s), string, tensor, or float. */
export type AttrValue = number | number[] | string | FloatAttr | Tensor;

/** One operator node. */
export interface NodeDef {
  opType: string;
  inputs: string[];
  outputs: string[];
  name?: string;
  domain?: string;
  attributes?: Record<string, AttrValue>;
}

/** A whole model: one graph plus its opset imports. */
export interface ModelDef {
  irVersion: number;
  opsets: Record<string, number>;
  producer: string;
  graph: {
    name: string;
    nodes: NodeDef[];
    initializers: Tensor[];
    inputs: ValueInfo[];
    outputs: ValueInfo[];
  };
  metadata?: Record<string, string>;
}

/** Number of bytes a tensor's data takes. */
export function tensorByteLength(t: Pick<Tensor, "dataType" | "dims">): number {
  const size = BYTES_PER_ELEMENT[t.dataType];
  if (size === undefined) throw new Error(`unsupported tensor data type ${t.dataType}`);
  return t.dims.reduce((a, b) => a * b, 1) * size;
}

/** The bytes of a tensor, producing them if needed. */
export function tensorBytes(t: Tensor): Uint8Array {
  const data = t.data ?? t.produce?.();
  if (!data) throw new Error(`tensor ${t.name} has no data`);
  if (data.byteLength !== tensorByteLength(t)) {
    throw new Error(`tensor ${t.name}: ${data.byteLength} bytes for dims [${t.dims}]`);
  }
  return data;
}

/** Encodes a TensorProto, inline or pointing at external data. */
export function encodeTensor(t: Tensor, external?: ExternalRef): ProtoWriter {
  const w = new ProtoWriter();
  for (const d of t.dims) w.int(1, d);
  w.int(2, t.dataType);
  w.string(8, t.name);
  if (external) {
    const entry = (key: string, value: string) => new ProtoWriter().string(1, key).string(2, value);
    w.message(13, entry("location", external.location));
    w.message(13, entry("offset", String(external.offset)));
    w.message(13, entry("length", String(external.length)));
    w.int(14, 1); // data_location = EXTERNAL
  } else {
    w.bytes(9, tensorBytes(t));
  }
  return w;
}

function encodeAttribute(name: string, value: AttrValue): ProtoWriter {
  const w = new ProtoWriter().string(1, name);
  if (typeof value === "number") {
    if (!Number.isInteger(value)) throw new Error(`attribute ${name}: use {float} for non-integers`);
    w.int(3, value).int(20, 2);
  } else if (typeof value === "string") {
    w.string(4, value).int(20, 3);
  } else if (Array.isArray(value)) {
    for (const v of value) w.int(8, v);
    w.int(20, 7);
  } else if ("float" in value) {
    w.float(2, value.float).int(20, 1);
  } else {
    w.message(5, encodeTensor(value)).int(20, 4);
  }
  return w;
}

function encodeNode(n: NodeDef): ProtoWriter {
  const w = new ProtoWriter();
  for (const i of n.inputs) w.string(1, i);
  for (const o of n.outputs) w.string(2, o);
  if (n.name) w.string(3, n.name);
  w.string(4, n.opType);
  for (const [k, v] of Object.entries(n.attributes ?? {})) w.message(5, encodeAttribute(k, v));
  if (n.domain) w.string(7, n.domain);
  return w;
}

function encodeValueInfo(v: ValueInfo): ProtoWriter {
  const shape = new ProtoWriter();
  for (const d of v.dims) {
    const dim = new ProtoWriter();
    if (typeof d === "number") dim.int(1, d);
    else dim.string(2, d);
    shape.message(1, dim);
  }
  const tensorType = new ProtoWriter().int(1, v.elemType).message(2, shape);
  const type = new ProtoWriter().message(1, tensorType);
  return new ProtoWriter().string(1, v.name).message(2, type);
}

/** Encodes a ModelProto; `externals` maps initializer names to their external location. */
export function encodeModel(model: ModelDef, externals: Map<string, ExternalRef> = new Map()): ProtoWriter {
  const g = new ProtoWriter();
  for (const n of model.graph.nodes) g.message(1, encodeNode(n));
  g.string(2, model.graph.name);
  for (const t of model.graph.initializers) g.message(5, encodeTensor(t, externals.get(t.name)));
  for (const v of model.graph.inputs) g.message(11, encodeValueInfo(v));
  for (const v of model.graph.outputs) g.message(12, encodeValueInfo(v));

  const w = new ProtoWriter().int(1, model.irVersion);
  for (const [domain, version] of Object.entries(model.opsets)) {
    const op = new ProtoWriter();
    if (domain) op.string(1, domain);
    w.message(8, op.int(2, version));
  }
  w.string(2, model.producer);
  w.message(7, g);
  for (const [key, value] of Object.entries(model.metadata ?? {})) {
    w.message(14, new ProtoWriter().string(1, key).string(2, value));
  }
  return w;
}
