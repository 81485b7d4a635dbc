/**
 * Hugging Face checkpoints in the safetensors format: an 8-byte little-endian header length, a JSON header
 * ({name: {dtype, shape, data_offsets}}), then the raw tensors. A checkpoint is one model.safetensors or shards
 * listed by model.safetensors.index.json. Tensors are read one at a time, as float32, so a model never sits in
 * memory twice.
 */
import * as fs from "node:fs";
import * as path from "node:path";

/** Element types read here (and their bytes); others are refused by name. */
const ELEMENT_BYTES = { F32: 4, F16: 2, BF16: 2 } as const;
export type SafetensorsDtype = keyof typeof ELEMENT_BYTES;

interface Entry {
  file: string;
  dtype: string;
  shape: number[];
  /** Absolute byte range in the file. */
  begin: number;
  end: number;
}

/** True when `dir` holds a safetensors checkpoint. */
export function hasCheckpoint(dir: string): boolean {
  return checkpointFiles(dir).length > 0;
}

/** The checkpoint's files: the shards the index lists, or the single file. */
export function checkpointFiles(dir: string): string[] {
  const index = path.join(dir, "model.safetensors.index.json");
  if (fs.existsSync(index)) {
    const map = JSON.parse(fs.readFileSync(index, "utf8")).weight_map as Record<string, string> | undefined;
    if (!map || typeof map !== "object") throw new Error(`${index} has no weight_map`);
    return [...new Set(Object.values(map))].sort().map((f) => checkedShard(dir, f));
  }
  const single = path.join(dir, "model.safetensors");
  return fs.existsSync(single) ? [single] : [];
}

function checkedShard(dir: string, name: string): string {
  const file = path.resolve(dir, name);
  if (path.dirname(file) !== path.resolve(dir)) throw new Error(`checkpoint shard ${name} is outside ${dir}`);
  return file;
}

/** A checkpoint's tensors by name. */
export class Checkpoint {
  readonly #entries = new Map<string, Entry>();

  constructor(readonly dir: string) {
    const files = checkpointFiles(dir);
    if (files.length === 0) throw new Error(`${dir} has no model.safetensors or model.safetensors.index.json`);
    for (const file of files) this.#readHeader(file);
  }

  names(): string[] {
    return [...this.#entries.keys()];
  }

  has(name: string): boolean {
    return this.#entries.has(name);
  }

  shape(name: string): number[] {
    return [...this.#entry(name).shape];
  }

  /** Where the tensor's bytes lie: the file, the byte range [begin, end) and the stored element type. */
  location(name: string): { file: string; begin: number; end: number; dtype: string } {
    const { file, begin, end, dtype } = this.#entry(name);
    return { file, begin, end, dtype };
  }

  /** The tensor's values as float32, converted from F16 or BF16 when stored so. */
  read(name: string): Float32Array {
    const entry = this.#entry(name);
    const count = entry.shape.reduce((a, b) => a * b, 1);
    const width = ELEMENT_BYTES[entry.dtype as SafetensorsDtype];
    if (!width) throw new Error(`tensor ${name} is ${entry.dtype}; only F32, F16 and BF16 are read`);
    if (entry.end - entry.begin !== count * width) throw new Error(`tensor ${name}: its byte range does not fit its shape`);
    const bytes = new Uint8Array(entry.end - entry.begin);
    const fd = fs.openSync(entry.file, "r");
    try {
      for (let at = 0; at < bytes.length;) {
        const read = fs.readSync(fd, bytes, at, bytes.length - at, entry.begin + at);
        if (read === 0) throw new Error(`tensor ${name}: ${entry.file} ends early`);
        at += read;
      }
    } finally {
      fs.closeSync(fd);
    }
    return toFloat32(bytes, entry.dtype as SafetensorsDtype);
  }

  #entry(name: string): Entry {
    const entry = this.#entries.get(name);
    if (!entry) throw new Error(`the checkpoint in ${this.dir} has no tensor ${name}`);
    return entry;
  }

  #readHeader(file: string): void {
    const fd = fs.openSync(file, "r");
    try {
      const size = fs.fstatSync(fd).size;
      const prefix = new Uint8Array(8);
      if (fs.readSync(fd, prefix, 0, 8, 0) !== 8) throw new Error(`${file} is too short for safetensors`);
      const length = Number(new DataView(prefix.buffer).getBigUint64(0, true));
      if (length <= 0 || 8 + length > size) throw new Error(`${file} is not a safetensors file (header length ${length})`);
      const header = new Uint8Array(length);
      fs.readSync(fd, header, 0, length, 8);
      const parsed = JSON.parse(new TextDecoder().decode(header)) as Record<string, unknown>;
      for (const [name, value] of Object.entries(parsed)) {
        if (name === "__metadata__") continue;
        const { dtype, shape, data_offsets: offsets } = value as { dtype: string; shape: number[]; data_offsets: number[] };
        const [begin, end] = [8 + length + offsets[0], 8 + length + offsets[1]];
        if (!(begin <= end && end <= size)) throw new Error(`${file}: tensor ${name} lies outside the file`);
        this.#entries.set(name, { file, dtype, shape, begin, end });
      }
    } finally {
      fs.closeSync(fd);
    }
  }
}

function toFloat32(bytes: Uint8Array, dtype: SafetensorsDtype): Float32Array {
  // Copied to an aligned buffer first: the bytes are little-endian, like every platform this runs on.
  if (dtype === "F32") return new Float32Array(bytes.slice().buffer);
  const halves = new Uint16Array(bytes.slice().buffer);
  const out = new Float32Array(halves.length);
  if (dtype === "BF16") {
    const bits = new Uint32Array(out.buffer);
    for (let i = 0; i < halves.length; i++) bits[i] = halves[i] << 16;
    return out;
  }
  for (let i = 0; i < halves.length; i++) out[i] = halfToFloat(halves[i]);
  return out;
}

function halfToFloat(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exponent = (h >> 10) & 0x1f;
  const fraction = h & 0x3ff;
  if (exponent === 0) return sign * fraction * 2 ** -24;
  if (exponent === 31) return fraction ? NaN : sign * Infinity;
  return sign * (1 + fraction / 1024) * 2 ** (exponent - 15);
}

/** A tensor to write. */
export interface TensorToWrite {
  name: string;
  dtype: "F32" | "BF16";
  shape: number[];
  data: Float32Array;
}

/** Writes tensors as one safetensors file (BF16 rounded to nearest even). */
export function writeSafetensors(file: string, tensors: TensorToWrite[]): void {
  const header: Record<string, unknown> = { __metadata__: { format: "pt" } };
  const bodies: Uint8Array[] = [];
  let offset = 0;
  for (const t of tensors) {
    const body = t.dtype === "F32" ? new Uint8Array(t.data.slice().buffer) : toBf16(t.data);
    header[t.name] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + body.byteLength] };
    bodies.push(body);
    offset += body.byteLength;
  }
  let json = JSON.stringify(header);
  json += " ".repeat((8 - (json.length % 8)) % 8); // the data starts 8-byte aligned
  const prefix = new Uint8Array(8);
  new DataView(prefix.buffer).setBigUint64(0, BigInt(json.length), true);
  const fd = fs.openSync(file, "w");
  try {
    for (const part of [prefix, new TextEncoder().encode(json), ...bodies]) fs.writeSync(fd, part);
  } finally {
    fs.closeSync(fd);
  }
}

function toBf16(values: Float32Array): Uint8Array {
  const bits = new Uint32Array(values.slice().buffer);
  const out = new Uint16Array(bits.length);
  for (let i = 0; i < bits.length; i++) {
    const b = bits[i];
    out[i] = ((b + 0x7fff + ((b >> 16) & 1)) >>> 16) & 0xffff;
  }
  return new Uint8Array(out.buffer);
}
