/**
 * Minimal protocol-buffers wire format: just what ONNX files need.
 * The writer keeps large byte fields as separate chunks so that a tensor's data is never copied
 * while messages nest around it.
 */

const WIRE_VARINT = 0;
const WIRE_FIXED64 = 1;
const WIRE_LEN = 2;
const WIRE_FIXED32 = 5;

const textEncoder = new TextEncoder();
const textDecoder = new TextDecoder();

/** Builds one message; nested messages are written by passing another ProtoWriter. */
export class ProtoWriter {
  private chunks: Uint8Array[] = [];
  private pending: number[] = [];
  private flushed = 0;

  /** Total encoded length in bytes. */
  get byteLength(): number {
    return this.flushed + this.pending.length;
  }

  private flush(): void {
    if (this.pending.length === 0) return;
    this.chunks.push(Uint8Array.from(this.pending));
    this.flushed += this.pending.length;
    this.pending = [];
  }

  private rawVarint(value: number | bigint): void {
    // int64 fields carry negative values as 64-bit two's complement (ten bytes).
    if (typeof value === "number" && value >= 0 && value <= Number.MAX_SAFE_INTEGER) {
      let v = value;
      while (v >= 0x80) {
        this.pending.push((v % 128) | 0x80);
        v = Math.floor(v / 128);
      }
      this.pending.push(v);
      return;
    }
    let v = BigInt.asUintN(64, BigInt(value));
    while (v >= 0x80n) {
      this.pending.push(Number(v & 0x7fn) | 0x80);
      v >>= 7n;
    }
    this.pending.push(Number(v));
  }

  private tag(field: number, wire: number): void {
    this.rawVarint(field * 8 + wire);
  }

  /** Writes an integer field (int32, int64, enum, bool). */
  int(field: number, value: number | bigint): this {
    this.tag(field, WIRE_VARINT);
    this.rawVarint(value);
    return this;
  }

  /** Writes a 32-bit float field. */
  float(field: number, value: number): this {
    this.tag(field, WIRE_FIXED32);
    const b = new Uint8Array(4);
    new DataView(b.buffer).setFloat32(0, value, true);
    this.pending.push(...b);
    return this;
  }

  /** Writes a UTF-8 string field. */
  string(field: number, value: string): this {
    return this.bytes(field, textEncoder.encode(value));
  }

  /** Writes a bytes field; large payloads are kept by reference, not copied. */
  bytes(field: number, value: Uint8Array): this {
    this.tag(field, WIRE_LEN);
    this.rawVarint(value.byteLength);
    if (value.byteLength < 256) {
      for (const b of value) this.pending.push(b);
    } else {
      this.flush();
      this.chunks.push(value);
      this.flushed += value.byteLength;
    }
    return this;
  }

  /** Writes a nested message field. */
  message(field: number, inner: ProtoWriter): this {
    this.tag(field, WIRE_LEN);
    this.rawVarint(inner.byteLength);
    this.flush();
    for (const c of inner.finish()) this.chunks.push(c);
    this.flushed += inner.byteLength;
    return this;
  }

  /** The encoded message as a list of chunks, in order. */
  finish(): Uint8Array[] {
    this.flush();
    return this.chunks;
  }

  /** The encoded message as one buffer. */
  toBytes(): Uint8Array {
    const out = new Uint8Array(this.byteLength);
    let at = 0;
    for (const c of this.finish()) {
      out.set(c, at);
      at += c.byteLength;
    }
    return out;
  }
}

/** One decoded field: varints as bigint-safe numbers, length-delimited fields as views into the source. */
export interface ProtoField {
  field: number;
  wire: number;
  /** Set for varint and fixed fields. */
  value?: number | bigint;
  /** Set for length-delimited fields (a view, not a copy). */
  bytes?: Uint8Array;
}

/** Reads one varint at `pos`; values beyond 2^53 (and negative int64s) come back as bigint. */
function varintAt(buf: Uint8Array, pos: number): [number | bigint, number] {
  let result = 0;
  let shift = 0;
  // Fast path while the value fits exactly in a double; switch to bigint beyond 49 bits.
  while (shift < 49) {
    const b = buf[pos++];
    result += (b & 0x7f) * 2 ** shift;
    if (b < 0x80) return [result, pos];
    shift += 7;
  }
  let big = BigInt(result);
  for (;;) {
    const b = buf[pos++];
    big |= BigInt(b & 0x7f) << BigInt(shift);
    if (b < 0x80) break;
    shift += 7;
  }
  const signed = BigInt.asIntN(64, big);
  const safe = signed >= BigInt(Number.MIN_SAFE_INTEGER) && signed <= BigInt(Number.MAX_SAFE_INTEGER);
  return [safe ? Number(signed) : signed, pos];
}

/** Reads the fields of one message from `buf`, in order. */
export function* readFields(buf: Uint8Array): Generator<ProtoField> {
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  let pos = 0;
  while (pos < buf.byteLength) {
    const [key, afterKey] = varintAt(buf, pos);
    pos = afterKey;
    const field = Math.floor(Number(key) / 8);
    const wire = Number(key) & 7;
    if (wire === WIRE_VARINT) {
      const [value, next] = varintAt(buf, pos);
      pos = next;
      yield { field, wire, value };
    } else if (wire === WIRE_LEN) {
      const [len, next] = varintAt(buf, pos);
      pos = next + Number(len);
      yield { field, wire, bytes: buf.subarray(next, pos) };
    } else if (wire === WIRE_FIXED32) {
      yield { field, wire, value: view.getFloat32(pos, true) };
      pos += 4;
    } else if (wire === WIRE_FIXED64) {
      yield { field, wire, value: view.getFloat64(pos, true) };
      pos += 8;
    } else {
      throw new Error(`unsupported protobuf wire type ${wire} at byte ${pos}`);
    }
  }
}

/** Decodes a packed run of varints (a repeated integer field written packed). */
export function readPackedVarints(bytes: Uint8Array): (number | bigint)[] {
  const out: (number | bigint)[] = [];
  let pos = 0;
  while (pos < bytes.byteLength) {
    const [value, next] = varintAt(bytes, pos);
    out.push(value);
    pos = next;
  }
  return out;
}

/** Decodes UTF-8 bytes. */
export function decodeString(bytes: Uint8Array): string {
  return textDecoder.decode(bytes);
}

/** Converts a decoded integer to a number, failing loudly when it does not fit. */
export function toNumber(value: number | bigint | undefined): number {
  if (value === undefined) return 0;
  if (typeof value === "number") return value;
  const n = Number(value);
  if (!Number.isSafeInteger(n)) throw new Error(`integer ${value} does not fit in a number`);
  return n;
}
