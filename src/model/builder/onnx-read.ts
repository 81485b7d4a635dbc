/**
 * ONNX ModelProto decoding, enough to read a model's structure and its initializers back:
 * our own files in tests, and hub ONNX files whose weights fill our own graph layout.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { BYTES_PER_ELEMENT, DataType, type Dim, type ExternalRef, type ValueInfo } from "./onnx-proto.ts";
import { decodeString, type ProtoField, readFields, readPackedVarints, toNumber } from "./protobuf.ts";

/** A decoded tensor: its bytes as a view into the file (inline) or a pointer to external data. */
export interface DecodedTensor {
  name: string;
  dataType: number;
  dims: number[];
  data?: Uint8Array;
  external?: ExternalRef;
}

/** A decoded attribute value (floats come back as {float}, tensors as DecodedTensor). */
export type DecodedAttr = number | number[] | string | { float: number } | { floats: number[] } | DecodedTensor;

/** A decoded node. */
export interface DecodedNode {
  opType: string;
  domain: string;
  name: string;
  inputs: string[];
  outputs: string[];
  attributes: Record<string, DecodedAttr>;
}

/** A decoded model. */
export interface DecodedModel {
  irVersion: number;
  opsets: Record<string, number>;
  graph: {
    name: string;
    nodes: DecodedNode[];
    initializers: DecodedTensor[];
    inputs: ValueInfo[];
    outputs: ValueInfo[];
  };
}

function varintsOf(f: ProtoField): (number | bigint)[] {
  return f.bytes ? readPackedVarints(f.bytes) : [f.value!];
}

/** Re-encodes the typed repeated fields (float_data, int32_data, int64_data) as raw little-endian bytes. */
function typedToRaw(dataType: number, floats: number[], ints: (number | bigint)[]): Uint8Array {
  const count = floats.length || ints.length;
  const out = new Uint8Array(count * BYTES_PER_ELEMENT[dataType]);
  const view = new DataView(out.buffer);
  for (let i = 0; i < count; i++) {
    if (dataType === DataType.FLOAT) view.setFloat32(i * 4, floats[i], true);
    else if (dataType === DataType.INT64) view.setBigInt64(i * 8, BigInt(ints[i]), true);
    else if (dataType === DataType.INT32) view.setInt32(i * 4, Number(ints[i]), true);
    else if (dataType === DataType.FLOAT16) view.setUint16(i * 2, Number(ints[i]), true);
    else if (dataType === DataType.DOUBLE) view.setFloat64(i * 8, floats[i], true);
    else out[i] = Number(ints[i]); // uint8, int8, bool live one per int32
  }
  return out;
}

/** Decodes one TensorProto. */
export function decodeTensor(buf: Uint8Array): DecodedTensor {
  const t: DecodedTensor = { name: "", dataType: 0, dims: [] };
  const floats: number[] = [];
  const ints: (number | bigint)[] = [];
  const ext: Record<string, string> = {};
  let external = false;
  for (const f of readFields(buf)) {
    if (f.field === 1) t.dims.push(...varintsOf(f).map(toNumber));
    else if (f.field === 2) t.dataType = toNumber(f.value);
    else if (f.field === 8) t.name = decodeString(f.bytes!);
    else if (f.field === 9) t.data = f.bytes;
    else if (f.field === 4 || f.field === 10) {
      if (!f.bytes) floats.push(f.value as number);
      else {
        const step = f.field === 4 ? 4 : 8;
        const v = new DataView(f.bytes.buffer, f.bytes.byteOffset, f.bytes.byteLength);
        for (let i = 0; i < f.bytes.byteLength; i += step) {
          floats.push(step === 4 ? v.getFloat32(i, true) : v.getFloat64(i, true));
        }
      }
    } else if (f.field === 5 || f.field === 7) ints.push(...varintsOf(f));
    else if (f.field === 13) {
      let key = "";
      let value = "";
      for (const e of readFields(f.bytes!)) {
        if (e.field === 1) key = decodeString(e.bytes!);
        else if (e.field === 2) value = decodeString(e.bytes!);
      }
      ext[key] = value;
    } else if (f.field === 14) external = toNumber(f.value) === 1;
  }
  if (external) {
    const length = ext.length !== undefined ? Number(ext.length) : -1;
    t.external = { location: ext.location, offset: Number(ext.offset ?? 0), length };
  } else if (!t.data) {
    t.data = typedToRaw(t.dataType, floats, ints);
  }
  return t;
}

function decodeAttribute(buf: Uint8Array): [string, DecodedAttr] {
  let name = "";
  let type = 0;
  const v: { i?: number; f?: number; s?: string; t?: DecodedTensor; ints: number[]; floats: number[] } = {
    ints: [],
    floats: [],
  };
  for (const f of readFields(buf)) {
    if (f.field === 1) name = decodeString(f.bytes!);
    else if (f.field === 2) v.f = f.value as number;
    else if (f.field === 3) v.i = toNumber(f.value);
    else if (f.field === 4) v.s = decodeString(f.bytes!);
    else if (f.field === 5) v.t = decodeTensor(f.bytes!);
    else if (f.field === 7) {
      if (!f.bytes) v.floats.push(f.value as number);
      else {
        const dv = new DataView(f.bytes.buffer, f.bytes.byteOffset, f.bytes.byteLength);
        for (let i = 0; i < f.bytes.byteLength; i += 4) v.floats.push(dv.getFloat32(i, true));
      }
    } else if (f.field === 8) v.ints.push(...varintsOf(f).map(toNumber));
    else if (f.field === 20) type = toNumber(f.value);
  }
  const byType: Record<number, DecodedAttr | undefined> = {
    1: { float: v.f ?? 0 },
    2: v.i ?? 0,
    3: v.s ?? "",
    4: v.t,
    6: { floats: v.floats },
    7: v.ints,
  };
  const value = byType[type];
  if (value === undefined) throw new Error(`attribute ${name}: unsupported attribute type ${type}`);
  return [name, value];
}

function decodeNode(buf: Uint8Array): DecodedNode {
  const n: DecodedNode = { opType: "", domain: "", name: "", inputs: [], outputs: [], attributes: {} };
  for (const f of readFields(buf)) {
    if (f.field === 1) n.inputs.push(decodeString(f.bytes!));
    else if (f.field === 2) n.outputs.push(decodeString(f.bytes!));
    else if (f.field === 3) n.name = decodeString(f.bytes!);
    else if (f.field === 4) n.opType = decodeString(f.bytes!);
    else if (f.field === 5) {
      const [k, v] = decodeAttribute(f.bytes!);
      n.attributes[k] = v;
    } else if (f.field === 7) n.domain = decodeString(f.bytes!);
  }
  return n;
}

function decodeValueInfo(buf: Uint8Array): ValueInfo {
  const v: ValueInfo = { name: "", elemType: 0, dims: [] };
  for (const f of readFields(buf)) {
    if (f.field === 1) v.name = decodeString(f.bytes!);
    if (f.field !== 2) continue;
    for (const type of readFields(f.bytes!)) {
      if (type.field !== 1) continue; // only tensor types
      for (const tt of readFields(type.bytes!)) {
        if (tt.field === 1) v.elemType = toNumber(tt.value);
        if (tt.field !== 2) continue;
        for (const dim of readFields(tt.bytes!)) {
          let d: Dim = "";
          for (const df of readFields(dim.bytes!)) {
            d = df.field === 1 ? toNumber(df.value) : df.field === 2 ? decodeString(df.bytes!) : d;
          }
          v.dims.push(d);
        }
      }
    }
  }
  return v;
}

/** Decodes a whole ModelProto; tensor bytes are views into `bytes`. */
export function decodeModel(bytes: Uint8Array): DecodedModel {
  const model: DecodedModel = {
    irVersion: 0,
    opsets: {},
    graph: { name: "", nodes: [], initializers: [], inputs: [], outputs: [] },
  };
  for (const f of readFields(bytes)) {
    if (f.field === 1) model.irVersion = toNumber(f.value);
    else if (f.field === 8) {
      let domain = "";
      let version = 0;
      for (const o of readFields(f.bytes!)) {
        if (o.field === 1) domain = decodeString(o.bytes!);
        else if (o.field === 2) version = toNumber(o.value);
      }
      model.opsets[domain] = version;
    } else if (f.field === 7) {
      const g = model.graph;
      for (const gf of readFields(f.bytes!)) {
        if (gf.field === 1) g.nodes.push(decodeNode(gf.bytes!));
        else if (gf.field === 2) g.name = decodeString(gf.bytes!);
        else if (gf.field === 5) g.initializers.push(decodeTensor(gf.bytes!));
        else if (gf.field === 11) g.inputs.push(decodeValueInfo(gf.bytes!));
        else if (gf.field === 12) g.outputs.push(decodeValueInfo(gf.bytes!));
      }
    }
  }
  return model;
}

/** Reads the bytes of every initializer of an .onnx file (and Constant node values), resolving external data. */
export function readInitializers(onnxPath: string): Map<string, DecodedTensor & { data: Uint8Array }> {
  const file = fs.readFileSync(onnxPath);
  // A plain view: Buffer's own slice() shares memory, which callers copying with slice() would not expect.
  const model = decodeModel(new Uint8Array(file.buffer, file.byteOffset, file.byteLength));
  const tensors = [...model.graph.initializers];
  for (const n of model.graph.nodes) {
    const value = n.attributes.value;
    if (n.opType === "Constant" && value && typeof value === "object" && "dataType" in value) {
      tensors.push({ ...value, name: n.outputs[0] });
    }
  }
  const out = new Map<string, DecodedTensor & { data: Uint8Array }>();
  const files = new Map<string, number>();
  try {
    for (const t of tensors) {
      if (t.external) out.set(t.name, { ...t, data: readExternal(t, path.dirname(onnxPath), files) });
      else out.set(t.name, { ...t, data: t.data! });
    }
  } finally {
    for (const fd of files.values()) fs.closeSync(fd);
  }
  return out;
}

function readExternal(t: DecodedTensor, dir: string, files: Map<string, number>): Uint8Array {
  const ref = t.external!;
  const file = path.join(dir, ref.location);
  let fd = files.get(file);
  if (fd === undefined) files.set(file, fd = fs.openSync(file, "r"));
  const length = ref.length >= 0 ? ref.length : t.dims.reduce((a, b) => a * b, 1) * BYTES_PER_ELEMENT[t.dataType];
  const data = new Uint8Array(length);
  let done = 0;
  while (done < length) {
    const n = fs.readSync(fd, data, done, length - done, ref.offset + done);
    if (n === 0) throw new Error(`${file}: ended before tensor ${t.name}`);
    done += n;
  }
  return data;
}
