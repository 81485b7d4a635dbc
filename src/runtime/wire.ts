/**
 * Messages between threads without typed arrays. Deno's worker messages copy a typed array element by element (a
 * 737 KB Float32Array took 30-60 ms, a view into shared memory too, and every message behind it waited), while an
 * ArrayBuffer or a SharedArrayBuffer crosses at once on every runtime. So every message a thread of this project
 * sends goes through toWire, and every one it receives through fromWire: a typed array travels as its buffer and
 * place. A view into shared memory stays a view of the same memory; one whose whole buffer is in the message's
 * transfer list moves with it; any other is copied into a buffer of its own, which moves.
 */

const TYPED = "__wireTyped";

type TypedArray =
  | Int8Array
  | Uint8Array
  | Uint8ClampedArray
  | Int16Array
  | Uint16Array
  | Int32Array
  | Uint32Array
  | Float32Array
  | Float64Array
  | BigInt64Array
  | BigUint64Array;
type TypedCtor = new (buffer: ArrayBufferLike, byteOffset: number, length: number) => TypedArray;

const CONSTRUCTORS: Record<string, TypedCtor> = Object.fromEntries(
  [Int8Array, Uint8Array, Uint8ClampedArray, Int16Array, Uint16Array, Int32Array, Uint32Array, Float32Array, Float64Array,
    BigInt64Array, BigUint64Array].map((c) => [c.name, c as unknown as TypedCtor]),
);

interface WireTyped {
  [TYPED]: string;
  buffer: ArrayBufferLike;
  byteOffset: number;
  length: number;
}

function isPlainObject(value: object): value is Record<string, unknown> {
  const proto = Object.getPrototypeOf(value);
  return proto === Object.prototype || proto === null;
}

/** `value` ready to post, typed arrays replaced; buffers to move are added to `transfer`. */
export function toWire(value: unknown, transfer: ArrayBuffer[] = []): unknown {
  if (typeof value !== "object" || value === null) return value;
  if (ArrayBuffer.isView(value)) {
    if (value instanceof DataView || !(value.constructor.name in CONSTRUCTORS)) return value;
    const typed = value as TypedArray;
    let own = typed;
    if (!(typed.buffer instanceof SharedArrayBuffer)) {
      const moved = typed.byteOffset === 0 && typed.byteLength === typed.buffer.byteLength &&
        transfer.includes(typed.buffer as ArrayBuffer);
      if (!moved) {
        own = typed.slice();
        transfer.push(own.buffer as ArrayBuffer);
      }
    }
    return { [TYPED]: typed.constructor.name, buffer: own.buffer, byteOffset: own.byteOffset, length: own.length } satisfies WireTyped;
  }
  if (Array.isArray(value)) return mapChanged(value, (v) => toWire(v, transfer));
  if (!isPlainObject(value)) return value;
  return mapEntriesChanged(value, (v) => toWire(v, transfer));
}

/** A message as posted by toWire, typed arrays restored. */
export function fromWire(value: unknown): unknown {
  if (typeof value !== "object" || value === null || ArrayBuffer.isView(value)) return value;
  if (Array.isArray(value)) return mapChanged(value, fromWire);
  if (!isPlainObject(value)) return value;
  const name = value[TYPED];
  if (typeof name === "string") {
    const { buffer, byteOffset, length } = value as unknown as WireTyped;
    return new CONSTRUCTORS[name](buffer, byteOffset, length);
  }
  return mapEntriesChanged(value, fromWire);
}

// Copy-on-write: arrays of numbers (token ids) and objects without typed arrays come back as they are.
function mapChanged(values: unknown[], f: (v: unknown) => unknown): unknown[] {
  let out: unknown[] | null = null;
  for (let i = 0; i < values.length; i++) {
    const v = values[i];
    if (typeof v !== "object" || v === null) continue;
    const w = f(v);
    if (w !== v) (out ??= values.slice())[i] = w;
  }
  return out ?? values;
}

function mapEntriesChanged(value: Record<string, unknown>, f: (v: unknown) => unknown): Record<string, unknown> {
  let out: Record<string, unknown> | null = null;
  for (const key of Object.keys(value)) {
    const v = value[key];
    if (typeof v !== "object" || v === null) continue;
    const w = f(v);
    if (w !== v) (out ??= { ...value })[key] = w;
  }
  return out ?? value;
}
