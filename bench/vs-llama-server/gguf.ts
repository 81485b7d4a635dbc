/**
 * A GGUF v3 file of float32 tensors for llama.cpp's "llama" and "qwen3" decoders, and a reader to check one back.
 * Layout: magic "GGUF", version, tensor and key counts, key/value pairs, tensor infos, padding to the alignment,
 * then the tensor data, each tensor at an aligned offset. Dimensions are written in ggml order (fastest first).
 * Quantized files are llama.cpp's business: llama-quantize writes them from this one.
 */
import * as fs from "node:fs";
import * as path from "node:path";

const MAGIC = 0x46554747; // "GGUF", little-endian
const VERSION = 3;
const ALIGNMENT = 32;
const GGML_F32 = 0;

/** GGUF value types. */
const VT = { U32: 4, I32: 5, F32: 6, BOOL: 7, STRING: 8, ARRAY: 9 } as const;

type Scalar = { type: typeof VT.U32 | typeof VT.I32 | typeof VT.F32 | typeof VT.BOOL; value: number | boolean };
type Entry =
  | { key: string; type: typeof VT.STRING; value: string }
  | ({ key: string } & Scalar)
  | { key: string; type: typeof VT.ARRAY; item: typeof VT.STRING | typeof VT.I32; value: ArrayLike<string | number> };

/** A float32 tensor in row-major (numpy) shape, e.g. [out, in] for a linear weight. */
export interface F32Tensor {
  name: string;
  shape: number[];
  data: Float32Array;
}

/** Model dimensions, as config.json gives them. */
export interface DecoderShape {
  arch: "llama" | "qwen3";
  name: string;
  hidden: number;
  intermediate: number;
  layers: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  vocab: number;
  contextLength: number;
  rmsEps: number;
  ropeTheta: number;
}

/** Little-endian bytes of the header part of the file. */
class HeaderBytes {
  private chunks: Uint8Array[] = [];
  length = 0;
  private push(bytes: Uint8Array) {
    this.chunks.push(bytes);
    this.length += bytes.length;
  }
  private fixed(size: number, set: (view: DataView) => void) {
    const bytes = new Uint8Array(size);
    set(new DataView(bytes.buffer));
    this.push(bytes);
  }
  u32(v: number) {
    this.fixed(4, (d) => d.setUint32(0, v, true));
  }
  i32(v: number) {
    this.fixed(4, (d) => d.setInt32(0, v, true));
  }
  f32(v: number) {
    this.fixed(4, (d) => d.setFloat32(0, v, true));
  }
  u64(v: number) {
    this.fixed(8, (d) => d.setBigUint64(0, BigInt(v), true));
  }
  bool(v: boolean) {
    this.push(Uint8Array.of(v ? 1 : 0));
  }
  str(s: string) {
    const bytes = new TextEncoder().encode(s);
    this.u64(bytes.length);
    this.push(bytes);
  }
  pad(align: number) {
    const n = (align - (this.length % align)) % align;
    if (n) this.push(new Uint8Array(n));
  }
  bytes(): Uint8Array {
    const out = new Uint8Array(this.length);
    let at = 0;
    for (const c of this.chunks) {
      out.set(c, at);
      at += c.length;
    }
    return out;
  }
}

/** Collects metadata and tensors, then writes the file. */
export class GgufWriter {
  private entries: Entry[] = [];
  private tensors: F32Tensor[] = [];

  constructor(arch: string) {
    this.str("general.architecture", arch);
  }
  str(key: string, value: string) {
    this.entries.push({ key, type: VT.STRING, value });
  }
  u32(key: string, value: number) {
    this.entries.push({ key, type: VT.U32, value });
  }
  f32(key: string, value: number) {
    this.entries.push({ key, type: VT.F32, value });
  }
  bool(key: string, value: boolean) {
    this.entries.push({ key, type: VT.BOOL, value });
  }
  strings(key: string, value: string[]) {
    this.entries.push({ key, type: VT.ARRAY, item: VT.STRING, value });
  }
  ints(key: string, value: Int32Array) {
    this.entries.push({ key, type: VT.ARRAY, item: VT.I32, value });
  }
  tensor(t: F32Tensor) {
    this.tensors.push(t);
  }
  get tensorCount(): number {
    return this.tensors.length;
  }

  /** Writes the file tensor by tensor; returns its size in bytes. */
  write(file: string): number {
    const h = new HeaderBytes();
    h.u32(MAGIC);
    h.u32(VERSION);
    h.u64(this.tensors.length);
    h.u64(this.entries.length);
    for (const e of this.entries) {
      h.str(e.key);
      h.u32(e.type);
      if (e.type === VT.ARRAY) {
        h.u32(e.item);
        h.u64(e.value.length);
        for (let i = 0; i < e.value.length; i++) {
          const v = e.value[i];
          if (e.item === VT.STRING) h.str(String(v));
          else h.i32(Number(v));
        }
      } else if (e.type === VT.STRING) h.str(e.value);
      else if (e.type === VT.U32) h.u32(Number(e.value));
      else if (e.type === VT.I32) h.i32(Number(e.value));
      else if (e.type === VT.F32) h.f32(Number(e.value));
      else h.bool(Boolean(e.value));
    }
    const offsets: number[] = [];
    let offset = 0;
    for (const t of this.tensors) {
      h.str(t.name);
      h.u32(t.shape.length);
      for (const d of [...t.shape].reverse()) h.u64(d);
      h.u32(GGML_F32);
      offset = Math.ceil(offset / ALIGNMENT) * ALIGNMENT;
      offsets.push(offset);
      h.u64(offset);
      offset += t.data.byteLength;
    }
    h.pad(ALIGNMENT);
    fs.mkdirSync(path.dirname(path.resolve(file)), { recursive: true });
    const fd = fs.openSync(file, "w");
    try {
      fs.writeSync(fd, h.bytes());
      let at = 0;
      this.tensors.forEach((t, i) => {
        if (offsets[i] > at) fs.writeSync(fd, new Uint8Array(offsets[i] - at));
        fs.writeSync(fd, new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength));
        at = offsets[i] + t.data.byteLength;
      });
      const tail = (ALIGNMENT - (at % ALIGNMENT)) % ALIGNMENT;
      if (tail) fs.writeSync(fd, new Uint8Array(tail));
    } finally {
      fs.closeSync(fd);
    }
    return fs.statSync(file).size;
  }
}

/** The hyperparameters llama.cpp reads for a llama / qwen3 decoder. */
export function addHyperparameters(w: GgufWriter, s: DecoderShape) {
  const a = s.arch;
  w.str("general.type", "model");
  w.str("general.name", s.name);
  w.u32("general.file_type", 0); // all F32
  if (a === "llama") w.u32(`${a}.vocab_size`, s.vocab);
  w.u32(`${a}.context_length`, s.contextLength);
  w.u32(`${a}.embedding_length`, s.hidden);
  w.u32(`${a}.block_count`, s.layers);
  w.u32(`${a}.feed_forward_length`, s.intermediate);
  w.u32(`${a}.attention.head_count`, s.heads);
  w.u32(`${a}.attention.head_count_kv`, s.kvHeads);
  w.u32(`${a}.attention.key_length`, s.headDim);
  w.u32(`${a}.attention.value_length`, s.headDim);
  w.u32(`${a}.rope.dimension_count`, s.headDim);
  w.f32(`${a}.rope.freq_base`, s.ropeTheta);
  w.f32(`${a}.attention.layer_norm_rms_epsilon`, s.rmsEps);
}

const isSpecialText = (t: string) => (t.startsWith("<|") && t.endsWith("|>")) || t === "<pad>" || t === "<mask>";

/**
 * tokenizer.* metadata of a byte-level BPE (Qwen2/Qwen3) tokenizer from tokenizer.json and tokenizer_config.json,
 * with the choices llama.cpp's own converter makes: pre-tokenizer "qwen2", eos from tokenizer_config.json.
 */
export function addTokenizer(
  w: GgufWriter,
  dir: string,
  vocab: number,
  fallback: { bos: number; eos: number; pad: number },
) {
  const tj = JSON.parse(fs.readFileSync(path.join(dir, "tokenizer.json"), "utf8"));
  const tc = JSON.parse(fs.readFileSync(path.join(dir, "tokenizer_config.json"), "utf8"));
  if (tj.model?.type !== "BPE") throw new Error(`${dir}/tokenizer.json is not a BPE tokenizer`);
  const added = tj.added_tokens as { id: number; content: string; special: boolean }[];
  const tokens = new Array<string>(vocab);
  const types = new Int32Array(vocab);
  for (const [token, id] of Object.entries(tj.model.vocab as Record<string, number>)) {
    tokens[id] = token;
    types[id] = 1; // normal
  }
  for (const t of added) {
    tokens[t.id] = t.content;
    types[t.id] = t.special || isSpecialText(t.content) ? 3 : 4; // control : user-defined
  }
  for (let i = 0; i < vocab; i++) {
    if (tokens[i] !== undefined) continue;
    tokens[i] = `[PAD${i}]`;
    types[i] = 5; // unused
  }
  const merges = (tj.model.merges as (string | [string, string])[]).map((m) =>
    typeof m === "string" ? m : m.map((part) => part.replace(/ /g, "\u0120")).join(" ")
  );
  const idOf = (content: unknown) =>
    typeof content === "string"
      ? added.find((t) => t.content === content)?.id ?? (tj.model.vocab as Record<string, number>)[content]
      : undefined;
  w.str("tokenizer.ggml.model", "gpt2");
  w.str("tokenizer.ggml.pre", "qwen2");
  w.strings("tokenizer.ggml.tokens", tokens);
  w.ints("tokenizer.ggml.token_type", types);
  w.strings("tokenizer.ggml.merges", merges);
  w.u32("tokenizer.ggml.eos_token_id", idOf(tc.eos_token) ?? fallback.eos);
  w.u32("tokenizer.ggml.padding_token_id", idOf(tc.pad_token) ?? fallback.pad);
  w.u32("tokenizer.ggml.bos_token_id", idOf(tc.bos_token) ?? fallback.bos);
  w.bool("tokenizer.ggml.add_bos_token", Boolean(tc.add_bos_token));
  if (typeof tc.chat_template === "string") w.str("tokenizer.chat_template", tc.chat_template);
}

/** llama.cpp's tensor name for a Hugging Face weight name. */
export function ggufName(hf: string): string {
  const top: Record<string, string> = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
  };
  if (top[hf]) return top[hf];
  const layer: Record<string, string> = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_norm.weight": "attn_q_norm.weight",
    "self_attn.k_norm.weight": "attn_k_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
  };
  const m = /^model\.layers\.(\d+)\.(.+)$/.exec(hf);
  if (!m || !layer[m[2]]) throw new Error(`no GGUF name for the weight ${hf}`);
  return `blk.${m[1]}.${layer[m[2]]}`;
}

/**
 * llama.cpp's "llama" architecture rotates interleaved pairs where Hugging Face rotates halves, so its converter
 * reorders the rows of q_proj and k_proj within each head: HF row (half t, index j) becomes GGUF row 2j + t.
 * `inverse` undoes it.
 */
export function permuteRopeRows(w: Float32Array, heads: number, rows: number, cols: number, inverse = false) {
  const headDim = rows / heads;
  const half = headDim / 2;
  const out = new Float32Array(w.length);
  for (let h = 0; h < heads; h++) {
    for (let t = 0; t < 2; t++) {
      for (let j = 0; j < half; j++) {
        const hfRow = h * headDim + t * half + j;
        const ggufRow = h * headDim + 2 * j + t;
        const [from, to] = inverse ? [ggufRow, hfRow] : [hfRow, ggufRow];
        out.set(w.subarray(from * cols, (from + 1) * cols), to * cols);
      }
    }
  }
  return out;
}

/** The tensors of a GGUF file, read back as float32 (F32 tensors only). */
export function readGgufTensors(file: string): Map<string, F32Tensor> {
  const buf = fs.readFileSync(file);
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  let p = 0;
  const u32 = () => (p += 4, dv.getUint32(p - 4, true));
  const u64 = () => (p += 8, Number(dv.getBigUint64(p - 8, true)));
  const str = () => {
    const n = u64();
    p += n;
    return buf.toString("utf8", p - n, p);
  };
  const sizes: Record<number, number> = { 0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8 };
  const skip = (type: number): void => {
    if (type === VT.STRING) str();
    else if (type === VT.ARRAY) {
      const item = u32();
      const n = u64();
      for (let i = 0; i < n; i++) skip(item);
    } else if (sizes[type]) p += sizes[type];
    else throw new Error(`${file}: unknown GGUF value type ${type}`);
  };
  if (u32() !== MAGIC) throw new Error(`${file} is not a GGUF file`);
  u32(); // version
  const nTensors = u64();
  const nEntries = u64();
  let alignment = ALIGNMENT;
  for (let i = 0; i < nEntries; i++) {
    const key = str();
    const type = u32();
    if (key === "general.alignment" && type === VT.U32) alignment = u32();
    else skip(type);
  }
  const infos: { name: string; shape: number[]; type: number; offset: number }[] = [];
  for (let i = 0; i < nTensors; i++) {
    const name = str();
    const nDims = u32();
    const ne: number[] = [];
    for (let j = 0; j < nDims; j++) ne.push(u64());
    const type = u32();
    infos.push({ name, shape: ne.reverse(), type, offset: u64() });
  }
  const dataStart = Math.ceil(p / alignment) * alignment;
  const out = new Map<string, F32Tensor>();
  for (const t of infos) {
    if (t.type !== GGML_F32) throw new Error(`${file}: tensor ${t.name} is not F32 (type ${t.type})`);
    const n = t.shape.reduce((a, b) => a * b, 1);
    const start = dataStart + t.offset;
    const data = new Float32Array(Uint8Array.from(buf.subarray(start, start + n * 4)).buffer);
    out.set(t.name, { name: t.name, shape: t.shape, data });
  }
  return out;
}
