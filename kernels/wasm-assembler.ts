/**
 * A small assembler for WebAssembly text in flat form (one instruction after another, no folded expressions), so
 * that the CPU kernels can be written as WAT in the source and need no toolchain: a module is a few functions over
 * one imported memory ("env" "memory"). Supports the instructions those kernels use; an unknown one throws.
 */

/** Value types of parameters, locals and results. */
export type ValType = "i32" | "i64" | "f32" | "f64" | "v128";

/** One function: its signature, named locals and body (flat WAT; `;;` comments; `$name` for locals and labels). */
export interface WasmFunction {
  name: string;
  params: [string, ValType][];
  result?: ValType;
  locals?: [string, ValType][];
  body: string;
}

const TYPE_CODE: Record<ValType, number> = { i32: 0x7f, i64: 0x7e, f32: 0x7d, f64: 0x7c, v128: 0x7b };

// Instructions without immediates.
const PLAIN: Record<string, number[]> = {
  "return": [0x0f], "drop": [0x1a], "select": [0x1b], "else": [0x05], "end": [0x0b],
  "i32.eqz": [0x45], "i32.eq": [0x46], "i32.ne": [0x47], "i32.lt_s": [0x48], "i32.lt_u": [0x49], "i32.gt_s": [0x4a],
  "i32.gt_u": [0x4b], "i32.le_s": [0x4c], "i32.le_u": [0x4d], "i32.ge_s": [0x4e], "i32.ge_u": [0x4f],
  "f32.eq": [0x5b], "f32.ne": [0x5c], "f32.lt": [0x5d], "f32.gt": [0x5e], "f32.le": [0x5f], "f32.ge": [0x60],
  "f64.eq": [0x61], "f64.ne": [0x62], "f64.lt": [0x63], "f64.gt": [0x64], "f64.le": [0x65], "f64.ge": [0x66],
  "i32.add": [0x6a], "i32.sub": [0x6b], "i32.mul": [0x6c], "i32.and": [0x71], "i32.or": [0x72], "i32.shl": [0x74],
  "i32.shr_s": [0x75], "i32.shr_u": [0x76],
  "f32.max": [0x97], "f64.add": [0xa0], "f64.sub": [0xa1], "f64.mul": [0xa2], "f64.div": [0xa3], "f64.max": [0xa5],
  "f64.convert_i32_s": [0xb7], "f64.promote_f32": [0xbb],
  ...simd({
    "i32x4.splat": 0x11, "f32x4.splat": 0x13, "f64x2.splat": 0x14,
    "f32x4.eq": 0x41, "f32x4.ne": 0x42, "f64x2.eq": 0x47, "f64x2.ne": 0x48, "f64x2.lt": 0x49, "f64x2.gt": 0x4a,
    "v128.not": 0x4d, "v128.and": 0x4e, "v128.andnot": 0x4f, "v128.or": 0x50, "v128.any_true": 0x53,
    "f64x2.promote_low_f32x4": 0x5f, "i32x4.shl": 0xab, "f32x4.pmax": 0xeb,
    "f64x2.floor": 0x75, "f64x2.pmin": 0xf6, "f64x2.add": 0xf0, "f64x2.sub": 0xf1, "f64x2.mul": 0xf2, "f64x2.div": 0xf3,
  }),
};

// Loads and stores: opcode and natural alignment (log2 of bytes).
const MEMORY: Record<string, [number[], number]> = {
  "i32.load": [[0x28], 2], "f32.load": [[0x2a], 2], "f64.load": [[0x2b], 3],
  "i32.store": [[0x36], 2], "f32.store": [[0x38], 2], "f64.store": [[0x39], 3],
  "v128.load": [simdOp(0x00), 4], "v128.store": [simdOp(0x0b), 4], "v128.load64_zero": [simdOp(0x5d), 3],
};

// Lane accessors take a lane index.
const LANE: Record<string, number[]> = {
  "i32x4.extract_lane": simdOp(0x1b), "f32x4.extract_lane": simdOp(0x1f),
  "f64x2.extract_lane": simdOp(0x21), "f64x2.replace_lane": simdOp(0x22),
};

const BLOCKS: Record<string, number> = { block: 0x02, loop: 0x03, if: 0x04 };
const LOCALS: Record<string, number> = { "local.get": 0x20, "local.set": 0x21, "local.tee": 0x22 };

function simdOp(code: number): number[] {
  return [0xfd, ...uleb(code)];
}

function simd(ops: Record<string, number>): Record<string, number[]> {
  return Object.fromEntries(Object.entries(ops).map(([name, code]) => [name, simdOp(code)]));
}

function uleb(value: number): number[] {
  const out: number[] = [];
  do {
    let byte = value & 0x7f;
    value >>>= 7;
    if (value !== 0) byte |= 0x80;
    out.push(byte);
  } while (value !== 0);
  return out;
}

function sleb(value: number): number[] {
  const out: number[] = [];
  for (;;) {
    const byte = value & 0x7f;
    value >>= 7;
    const done = (value === 0 && (byte & 0x40) === 0) || (value === -1 && (byte & 0x40) !== 0);
    out.push(done ? byte : byte | 0x80);
    if (done) return out;
  }
}

function name(text: string): number[] {
  const bytes = [...new TextEncoder().encode(text)];
  return [...uleb(bytes.length), ...bytes];
}

function section(id: number, entries: number[][]): number[] {
  const body = [...uleb(entries.length), ...entries.flat()];
  return [id, ...uleb(body.length), ...body];
}

function floatBytes(value: number, bytes: 4 | 8): number[] {
  const view = new DataView(new ArrayBuffer(bytes));
  if (bytes === 4) view.setFloat32(0, value, true);
  else view.setFloat64(0, value, true);
  return [...new Uint8Array(view.buffer)];
}

function numberOf(token: string): number {
  const value = token === "inf" ? Infinity : token === "-inf" ? -Infinity : Number(token);
  if (Number.isNaN(value)) throw new SyntaxError(`${token} is not a number`);
  return value;
}

/** The code of one function body: its locals' declarations and its instructions. */
function assembleBody(fn: WasmFunction): number[] {
  const indices = new Map<string, number>();
  [...fn.params, ...(fn.locals ?? [])].forEach(([local], i) => indices.set(local, i));
  const labels: (string | null)[] = [];
  const tokens = fn.body.replace(/;;[^\n]*/g, "").split(/\s+/).filter((t) => t !== "");
  const code: number[] = [];
  const next = (what: string): string => {
    const token = tokens.shift();
    if (token === undefined) throw new SyntaxError(`${fn.name}: ${what} expected at the end`);
    return token;
  };
  const localIndex = (token: string): number => {
    const index = token.startsWith("$") ? indices.get(token.slice(1)) : Number(token);
    if (index === undefined || !Number.isInteger(index)) throw new SyntaxError(`${fn.name}: no local ${token}`);
    return index;
  };
  const depth = (token: string): number => {
    if (!token.startsWith("$")) return Number(token);
    const at = labels.lastIndexOf(token.slice(1));
    if (at < 0) throw new SyntaxError(`${fn.name}: no label ${token}`);
    return labels.length - 1 - at;
  };
  while (tokens.length > 0) {
    const op = tokens.shift()!;
    if (op in BLOCKS) {
      const label = tokens[0]?.startsWith("$") ? tokens.shift()!.slice(1) : null;
      labels.push(label);
      code.push(BLOCKS[op], 0x40);
    } else if (op === "end") {
      labels.pop();
      code.push(0x0b);
    } else if (op === "br" || op === "br_if") {
      code.push(op === "br" ? 0x0c : 0x0d, ...uleb(depth(next("label"))));
    } else if (op in LOCALS) {
      code.push(LOCALS[op], ...uleb(localIndex(next("local"))));
    } else if (op === "i32.const") {
      code.push(0x41, ...sleb(numberOf(next("value"))));
    } else if (op === "f32.const" || op === "f64.const") {
      code.push(op === "f32.const" ? 0x43 : 0x44, ...floatBytes(numberOf(next("value")), op === "f32.const" ? 4 : 8));
    } else if (op in MEMORY) {
      const [opcode, align] = MEMORY[op];
      const offset = tokens[0]?.startsWith("offset=") ? Number(tokens.shift()!.slice(7)) : 0;
      code.push(...opcode, ...uleb(align), ...uleb(offset));
    } else if (op in LANE) {
      code.push(...LANE[op], Number(next("lane")));
    } else if (op in PLAIN) {
      code.push(...PLAIN[op]);
    } else {
      throw new SyntaxError(`${fn.name}: unknown instruction ${op}`);
    }
  }
  if (labels.length > 0) throw new SyntaxError(`${fn.name}: ${labels.length} block(s) not ended`);
  const locals = (fn.locals ?? []).map(([, type]) => [1, TYPE_CODE[type]]);
  const body = [...uleb(locals.length), ...locals.flat(), ...code, 0x0b];
  return [...uleb(body.length), ...body];
}

/** The binary of a module exporting `functions`, over a memory imported as env.memory. */
export function assembleModule(functions: readonly WasmFunction[]): Uint8Array<ArrayBuffer> {
  const types = functions.map((fn) => [
    0x60,
    ...uleb(fn.params.length),
    ...fn.params.map(([, type]) => TYPE_CODE[type]),
    ...(fn.result ? [1, TYPE_CODE[fn.result]] : [0]),
  ]);
  const bytes = [
    0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00,
    ...section(1, types),
    ...section(2, [[...name("env"), ...name("memory"), 0x02, 0x00, 0x01]]),
    ...section(3, functions.map((_, i) => uleb(i))),
    ...section(7, functions.map((fn, i) => [...name(fn.name), 0x00, ...uleb(i)])),
    ...section(10, functions.map(assembleBody)),
  ];
  return new Uint8Array(bytes);
}
