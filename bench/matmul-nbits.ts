/**
 * Which weight format multiplies fastest on this CPU: the matmuls of bench-135m's decoder (q, k, v, o, gate, up,
 * down per layer, then lm_head against the [vocab, hidden] table) as fp32 MatMul/Gemm against com.microsoft
 * MatMulNBits with 8 or 4 bits, block 32 or 64 (128 does not divide hidden 576) and accuracy_level 0 (float compute) or 4 (activations quantized
 * to int8 per block). Weights are random bytes (speed does not depend on them). Every config runs once per round,
 * the rounds interleaved; each line is the median over rounds of one run, in ms, for `rows` rows (32 is a decode
 * step of 32 sequences, 512 a prefill chunk), with the fastest round beside it; "layers_ms" is scaled from --layers to 30 layers.
 * With --threads 1, the "_cpu_ms" figures (the process's CPU time) rank the kernels even
 * on a busy machine, where wall times mostly measure the neighbours.
 * Run: node --import tsx bench/matmul-nbits.ts [--rows 32,512] [--rounds 7] [--layers 6] [--configs fp32,q8-32-4,...]
 */
import * as ort from "onnxruntime-node";
import { z } from "zod";
import { GraphBuilder } from "../src/model/builder/graph.ts";
import { DataType, encodeModel } from "../src/model/builder/onnx-proto.ts";
import { benchFlags, intFlag, numberListFlag } from "./lib/flags.ts";
import { median, report, round } from "./lib/report.ts";

const HIDDEN = 576, KV = 192, INTER = 1536, VOCAB = 49152, LAYERS = 30;

const MatmulFlags = z.object({
  rows: numberListFlag("32,512").describe("rows of the activation, one line each"),
  rounds: intFlag(7).describe("interleaved rounds (the figure is their median)"),
  layers: intFlag(6).describe("distinct layers in the graph (scaled to 30; more than fit in cache)"),
  threads: intFlag(2).describe("intra-op threads"),
  configs: z.string().default(
    "fp32,q8-32-0,q8-32-4,q8-64-0,q8-64-4,q4-32-0,q4-32-4,q4-64-4",
  ).describe("fp32 or q<bits>-<block>-<accuracy_level>, comma-separated"),
});
const flags = benchFlags(
  MatmulFlags,
  "Speed of MatMul against MatMulNBits.\nRun: node --import tsx bench/matmul-nbits.ts",
);

interface Config {
  name: string;
  bits?: number;
  block?: number;
  accuracy?: number;
}

function parseConfig(name: string): Config {
  if (name === "fp32") return { name };
  const m = /^q(4|8)-(\d+)-(\d)$/.exec(name);
  if (!m) throw new Error(`config ${name}: expected fp32 or q<bits>-<block>-<accuracy_level>`);
  return { name, bits: Number(m[1]), block: Number(m[2]), accuracy: Number(m[3]) };
}

let seed = 1;
function randomBytes(n: number): Uint8Array {
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i++) {
    seed = (seed * 1103515245 + 12345) >>> 0;
    out[i] = seed >>> 24;
  }
  return out;
}
function smallFloats(n: number): Float32Array {
  const bytes = randomBytes(n);
  return Float32Array.from(bytes, (b) => (b - 128) / 4096);
}

/** x [rows, k] times a [k, n] weight (or, for lm_head, a [n, k] table) in the config's format. */
function linear(g: GraphBuilder, c: Config, x: string, k: number, n: number, table: boolean): string {
  if (!c.bits) {
    const data = smallFloats(k * n);
    const w = g.initializer({
      name: g.fresh("w"),
      dataType: DataType.FLOAT,
      dims: table ? [n, k] : [k, n],
      data: new Uint8Array(data.buffer),
    });
    return table ? g.op("Gemm", [x, w], { transB: 1 }) : g.op("MatMul", [x, w]);
  }
  if (k % c.block! !== 0) throw new Error(`block ${c.block} does not divide K=${k}`);
  const blocks = k / c.block!;
  const blob = (c.block! * c.bits) / 8;
  const b = g.initializer({
    name: g.fresh("b"),
    dataType: DataType.UINT8,
    dims: [n, blocks, blob],
    data: randomBytes(n * blocks * blob),
  });
  const scales = g.initializer({
    name: g.fresh("s"),
    dataType: DataType.FLOAT,
    dims: [n * blocks],
    data: new Uint8Array(Float32Array.from({ length: n * blocks }, () => 0.01).buffer),
  });
  const attributes = { K: k, N: n, bits: c.bits, block_size: c.block!, accuracy_level: c.accuracy! };
  return g.op("MatMulNBits", [x, b, scales], attributes, { domain: "com.microsoft" });
}

/** A graph of `layers` decoder layers' matmuls (output "layers") and one of lm_head (output "logits"). */
function graphs(c: Config, layers: number): { layers: Uint8Array; lmHead: Uint8Array } {
  const encode = (g: GraphBuilder) => {
    const chunks = encodeModel(g.toModel(`bench_${c.name}`, "gym-edge")).finish();
    const out = new Uint8Array(chunks.reduce((a, ch) => a + ch.byteLength, 0));
    let at = 0;
    for (const ch of chunks) {
      out.set(ch, at);
      at += ch.byteLength;
    }
    return out;
  };
  const g = new GraphBuilder(17);
  let x = g.input("x", DataType.FLOAT, ["rows", HIDDEN]);
  for (let l = 0; l < layers; l++) {
    const q = linear(g, c, x, HIDDEN, HIDDEN, false);
    const k = linear(g, c, x, HIDDEN, KV, false);
    const v = linear(g, c, x, HIDDEN, KV, false);
    const kv = g.op("Concat", [k, v], { axis: -1 }); // [rows, 384]
    // Stands in for attention: o's input depends on q, k and v, so none is pruned.
    const attn = g.op("Add", [q, g.op("ReduceMean", [kv], { axes: [-1], keepdims: 1 })]);
    const o = linear(g, c, attn, HIDDEN, HIDDEN, false);
    const mid = g.op("Add", [x, o]);
    const gate = linear(g, c, mid, HIDDEN, INTER, false);
    const up = linear(g, c, mid, HIDDEN, INTER, false);
    const down = linear(g, c, g.op("Mul", [g.op("Mul", [gate, g.op("Sigmoid", [gate])]), up]), INTER, HIDDEN, false);
    x = g.op("Add", [mid, down]);
  }
  g.op("Identity", [x], {}, { outputs: ["layers"] });
  g.output("layers", DataType.FLOAT, ["rows", HIDDEN]);
  const h = new GraphBuilder(17);
  const hx = h.input("x", DataType.FLOAT, ["rows", HIDDEN]);
  h.op("Identity", [linear(h, c, hx, HIDDEN, VOCAB, true)], {}, { outputs: ["logits"] });
  h.output("logits", DataType.FLOAT, ["rows", VOCAB]);
  return { layers: encode(g), lmHead: encode(h) };
}

const configs = flags.configs.split(",").map(parseConfig);
const options = { intraOpNumThreads: flags.threads, executionProviders: ["cpu"] };
const sessions = [];
for (const c of configs) {
  const bytes = graphs(c, flags.layers);
  sessions.push({
    c,
    layers: await ort.InferenceSession.create(bytes.layers, options),
    lmHead: await ort.InferenceSession.create(bytes.lmHead, options),
  });
}

for (const rows of flags.rows) {
  const x = new ort.Tensor("float32", smallFloats(rows * HIDDEN), [rows, HIDDEN]);
  const times = new Map(
    configs.map((
      c,
    ) => [c.name, {
      layers: [] as number[],
      lmHead: [] as number[],
      layersCpu: [] as number[],
      lmHeadCpu: [] as number[],
    }]),
  );
  for (let round = -1; round < flags.rounds; round++) {
    for (const s of sessions) {
      const c0 = process.cpuUsage();
      const t0 = performance.now();
      await s.layers.run({ x });
      const t1 = performance.now();
      const c1 = process.cpuUsage();
      await s.lmHead.run({ x });
      const t2 = performance.now();
      const c2 = process.cpuUsage();
      if (round < 0) continue; // warm-up
      const t = times.get(s.c.name)!;
      t.layers.push(((t1 - t0) * LAYERS) / flags.layers);
      t.lmHead.push(t2 - t1);
      const cpu = (a: NodeJS.CpuUsage, b: NodeJS.CpuUsage) => (b.user + b.system - a.user - a.system) / 1000;
      t.layersCpu.push((cpu(c0, c1) * LAYERS) / flags.layers);
      t.lmHeadCpu.push(cpu(c1, c2));
    }
  }
  for (const c of configs) {
    const t = times.get(c.name)!;
    report("matmul_nbits", { device: "cpu", preset: "bench-135m" }, {
      dtype: c.name,
      rows,
      layers_ms: round(median(t.layers), 1),
      lm_head_ms: round(median(t.lmHead), 1),
      total_ms: round(median(t.layers) + median(t.lmHead), 1),
      // The fastest round: on a shared machine the least disturbed, so the steadier figure to compare.
      layers_min_ms: round(Math.min(...t.layers), 1),
      lm_head_min_ms: round(Math.min(...t.lmHead), 1),
      // CPU time (layers scaled to 30): with --threads 1 the work done, whatever else the machine runs.
      layers_cpu_ms: round(median(t.layersCpu), 1),
      lm_head_cpu_ms: round(median(t.lmHeadCpu), 1),
    });
  }
}
