/**
 * Cost of constrained generation on XGrammar's WASM build over Qwen3's 151,936-token vocabulary: loading the
 * package, compiling the vocabulary (once per model), compiling each grammar (once per schema), and the per-token
 * mask (fillNextMask) and accept, while a random walk over the allowed tokens writes each grammar's output. Each
 * output is checked (JSON parses and validates, regex and choice match). Prints one JSON line per measurement.
 * Run: node --import tsx bench/grammar.ts [--model DIR] [--walks N]
 */
import { readFileSync } from "node:fs";
import * as path from "node:path";
import { z } from "zod";
import { Ajv } from "ajv";
import addFormats from "ajv-formats";
import { runtimeName, runtimeVersion } from "../src/runtime/detect.ts";
import { Grammars, type GrammarSpec } from "../src/engine/grammar/grammars.ts";
import { loadXGrammar } from "../src/engine/grammar/xgrammar-load.ts";
import { Rng } from "../src/engine/rng.ts";
import { benchFlags, intFlag } from "./lib/flags.ts";
import { modelLikeRow, percentile } from "./logit-rows.ts";
import { rowSampling, Sampler } from "../src/engine/sampler.ts";
import { SamplingParams } from "../src/engine/sampling-params.ts";

const Flags = z.object({
  model: z.string().default(path.join(process.env.GYM_EDGE_CACHE ?? ".cache", "models", "tiny")).describe("model folder"),
  walks: intFlag(5).describe("random walks a grammar"),
  "max-tokens": intFlag(256).describe("tokens a walk at most"),
});
const flags = benchFlags(Flags, "Cost of XGrammar masks over a model's vocabulary.\nRun: node --import tsx bench/grammar.ts [flags]");

const common = { runtime: runtimeName(), version: runtimeVersion() };
const emit = (line: Record<string, unknown>) => console.log(JSON.stringify({ ...line, ...common }));

let t0 = performance.now();
await loadXGrammar().binding();
emit({ what: "load web-xgrammar", ms: round(performance.now() - t0) });

const tokenizer = JSON.parse(readFileSync(path.join(flags.model, "tokenizer.json"), "utf8"));
const config = JSON.parse(readFileSync(path.join(flags.model, "config.json"), "utf8"));
const tokens: string[] = [];
for (const [token, id] of Object.entries(tokenizer.model.vocab as Record<string, number>)) tokens[id] = token;
for (const added of tokenizer.added_tokens as { id: number; content: string }[]) tokens[added.id] = added.content;
const eos = [config.eos_token_id].flat() as number[];
const vocabSize: number = config.vocab_size;
const grammars = new Grammars(() => ({ tokens, vocabSize, stopTokenIds: eos }));
t0 = performance.now();
await grammars.warm();
emit({ what: "compile vocabulary", vocab: vocabSize, ms: round(performance.now() - t0) });

const schema = {
  type: "object",
  properties: {
    id: { type: "string", format: "uuid" },
    name: { type: "string", minLength: 1, maxLength: 12 },
    email: { type: "string", format: "email" },
    born: { type: "string", format: "date" },
    score: { type: "number", minimum: 0, maximum: 1 },
    count: { type: "integer", minimum: 1, maximum: 9 },
    kind: { enum: ["cat", "dog", 3] },
    tags: { type: "array", items: { type: "string", pattern: "^[a-z]{1,4}$" }, minItems: 1, maxItems: 3 },
    owner: {
      type: "object",
      properties: { name: { type: "string", maxLength: 8 }, age: { type: "integer" }, pet: { const: true } },
      required: ["name", "pet"],
      additionalProperties: false,
    },
    extra: { anyOf: [{ type: "null" }, { $ref: "#/$defs/point" }] },
  },
  required: ["id", "name", "kind", "tags", "owner", "score"],
  additionalProperties: false,
  $defs: { point: { type: "object", properties: { x: { type: "number" }, y: { type: "number" } }, required: ["x", "y"] } },
};
const ajv = new Ajv({ strict: false });
addFormats.default(ajv);
const validate = ajv.compile(schema);

type Check = (text: string) => boolean;
const json = (ok: (v: unknown) => boolean): Check => (text) => {
  try {
    return ok(JSON.parse(text));
  } catch {
    return false;
  }
};
const cases: [string, GrammarSpec, Check][] = [
  ["json_schema nested (no free whitespace)", { kind: "json_schema", schema: JSON.stringify(schema), anyWhitespace: false }, json((v) => validate(v))],
  ["json_schema nested (any whitespace)", { kind: "json_schema", schema: JSON.stringify(schema), anyWhitespace: true }, json((v) => validate(v))],
  ["json_object", { kind: "json_object", anyWhitespace: false }, json((v) => typeof v === "object" && v !== null && !Array.isArray(v))],
  ["regex", { kind: "regex", pattern: "[A-Z][a-z]{2,6} \\d{1,3}(\\.\\d+)?" }, (t) => /^[A-Z][a-z]{2,6} \d{1,3}(\.\d+)?$/.test(t)],
  ["choice", { kind: "choice", choices: ["positive", "negative", "neutral \"quoted\""] }, (t) => ["positive", "negative", "neutral \"quoted\""].includes(t)],
  ["ebnf", { kind: "grammar", ebnf: 'root ::= "(" expr ")"\nexpr ::= num | num ("+" | "*") expr\nnum ::= [0-9]+' }, (t) => /^\((\d+[+*])*\d+\)$/.test(t)],
];

const bytes = byteDecoder();
const rng = Rng.fromSeed(1);
const mask = new Uint32Array(Math.ceil(vocabSize / 32));
for (const [what, spec, check] of cases) {
  t0 = performance.now();
  const compiled = await grammars.compile(spec);
  const compileMs = performance.now() - t0;
  t0 = performance.now();
  await grammars.compile(spec);
  const cachedMs = performance.now() - t0;
  const maskTimes: number[] = [];
  const acceptTimes: number[] = [];
  let valid = 0;
  let finished = 0;
  let generated = 0;
  const samples: string[] = [];
  for (let w = 0; w < flags.walks; w++) {
    const matcher = compiled.matcher();
    const out: number[] = [];
    let ended = false;
    for (let i = 0; i < flags["max-tokens"]; i++) {
      let t = performance.now();
      const more = matcher.fillNextMask(mask);
      maskTimes.push(performance.now() - t);
      if (!more) break;
      const id = pick(mask, vocabSize, rng);
      t = performance.now();
      matcher.accept(id);
      acceptTimes.push(performance.now() - t);
      if (eos.includes(id)) {
        ended = true;
        break;
      }
      out.push(id);
    }
    matcher.dispose();
    generated += out.length;
    const text = bytes(out.map((id) => tokens[id]).join(""));
    if (ended) finished++;
    if (ended && check(text)) valid++;
    else if (ended && process.env.SHOW) console.error(what, text, JSON.stringify(validate.errors));
    if (samples.length < 2) samples.push(text.slice(0, 160));
  }
  maskTimes.sort((a, b) => a - b);
  acceptTimes.sort((a, b) => a - b);
  emit({
    what: `grammar ${what}`,
    vocab: vocabSize,
    compile_ms: round(compileMs),
    cached_compile_ms: round(cachedMs),
    walks: flags.walks,
    finished,
    valid,
    tokens: generated,
    mask_median_ms: round(percentile(maskTimes, 0.5)),
    mask_p90_ms: round(percentile(maskTimes, 0.9)),
    accept_median_ms: round(percentile(acceptTimes, 0.5)),
    samples,
  });
}

const bad: [string, GrammarSpec][] = [
  ["schema not JSON", { kind: "json_schema", schema: "{not json", anyWhitespace: false }],
  ["regex that does not compile", { kind: "regex", pattern: "([a-z" }],
  ["ebnf without root", { kind: "grammar", ebnf: 'start ::= "a"' }],
];
for (const [what, spec] of bad) {
  const error = await grammars.compile(spec).then(() => null, (err: Error) => err.message.slice(0, 160));
  emit({ what: `refused: ${what}`, error });
}

// What the mask adds to sampling: the CPU sampler on a model-like row of this vocabulary (temperature 1, one top
// logprob: the RL load), without a mask, with a mask of ten tokens (digits) and with one allowing most tokens.
{
  const rows = [modelLikeRow(1), modelLikeRow(2)];
  const sampler = new Sampler();
  const params = SamplingParams.parse({ temperature: 1, logprobs: 1 });
  const state = { params, outputIds: [] as number[], promptIds: [] as number[], rng: Rng.fromSeed(3) };
  const narrow = new Uint32Array(Math.ceil(vocabSize / 32));
  for (const id of Array.from({ length: 10 }, (_, d) => tokens.indexOf(String(d)))) narrow[id >>> 5] |= 1 << (id & 31);
  const wide = new Uint32Array(Math.ceil(vocabSize / 32)).fill(0xffffffff);
  for (let id = 0; id < vocabSize; id += 7) wide[id >>> 5] &= ~(1 << (id & 31));
  for (const [what, mask] of [["no mask", null], ["10 tokens allowed", narrow], ["6/7 of the vocabulary allowed", wide]] as const) {
    const times: number[] = [];
    for (let j = 0; j < 500; j++) {
      const row = rowSampling(state, vocabSize);
      if (mask) row.allowed = mask;
      const t = performance.now();
      sampler.sampleRow(rows[j % 2], row);
      if (j >= 200) times.push(performance.now() - t);
    }
    times.sort((a, b) => a - b);
    emit({ what: `sampleRow with ${what}`, vocab: vocabSize, median_ms: round(percentile(times, 0.5)), p90_ms: round(percentile(times, 0.9)) });
  }
}

/** A random allowed token, preferring the first thousand ids (short pieces) so that strings and numbers close. */
function pick(mask: Uint32Array, n: number, rng: Rng): number {
  const allowed: number[] = [];
  const short: number[] = [];
  for (let w = 0; w < mask.length; w++) {
    let bits = mask[w];
    while (bits !== 0) {
      const b = 31 - Math.clz32(bits & -bits);
      const id = w * 32 + b;
      if (id < n) (id < 1000 ? short : allowed).push(id);
      bits &= bits - 1;
    }
  }
  const stop = [...short, ...allowed].filter((id) => eos.includes(id));
  if (stop.length && rng.nextUniform() < 0.5) return stop[0];
  const from = short.length && rng.nextUniform() < 0.95 ? short : allowed.length ? allowed : short;
  return from[Math.floor(rng.nextUniform() * from.length)];
}

/** Byte-level vocabulary strings -> text (GPT-2's byte to character table, inverted). */
function byteDecoder(): (s: string) => string {
  const table = new Map<string, number>();
  let extra = 0;
  for (let b = 0; b < 256; b++) {
    const printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
    table.set(String.fromCodePoint(printable ? b : 256 + extra++), b);
  }
  return (s) => new TextDecoder().decode(Uint8Array.from([...s].flatMap((ch) => table.has(ch) ? [table.get(ch)!] : [...new TextEncoder().encode(ch)])));
}

function round(ms: number): number {
  return Number(ms.toFixed(3));
}
