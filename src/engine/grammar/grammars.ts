/**
 * Grammars for constrained generation, on XGrammar's WASM build: the model's vocabulary compiled once (lazily, on
 * the first constrained request), each grammar compiled once and kept by a hash of what it was compiled from, and
 * one matcher per sequence, driven synchronously inside an engine step.
 */
import { createHash } from "node:crypto";
import type { TokenConstraint } from "../constraint.ts";
import { loadXGrammar, type XGrammar, type XGrammarBinding } from "./xgrammar-load.ts";

/** What a request constrains its output to. */
export type GrammarSpec =
  /** A JSON Schema (as text). `anyWhitespace` lets whitespace stand between tokens; otherwise JSON on one line. */
  | { kind: "json_schema"; schema: string; anyWhitespace: boolean }
  /** Any JSON object. */
  | { kind: "json_object"; anyWhitespace: boolean }
  | { kind: "regex"; pattern: string }
  /** Exactly one of the strings. */
  | { kind: "choice"; choices: readonly string[] }
  /** An EBNF grammar in XGrammar's (GBNF-like) notation, rule `root` first. */
  | { kind: "grammar"; ebnf: string }
  /** XGrammar's structural tag (as JSON text): tags, triggers, their contents. */
  | { kind: "structural_tag"; tag: string }
  /**
   * Tool calls in a tool parser's format: hermes `<tool_call>\n{call}\n</tool_call>` (one, or several separated by
   * newlines when `parallel`), llama3_json one `{call}`. `call` is the JSON Schema (as text) of one call object.
   */
  | { kind: "tool_calls"; format: "hermes" | "llama3_json"; call: string; parallel: boolean };

/** A grammar that does not compile: what is wrong with it, in XGrammar's words. */
export class GrammarError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "GrammarError";
  }
}

/** The model's vocabulary as the grammar engine needs it. */
export interface GrammarVocabulary {
  /** Each id's vocabulary string (byte-level "Ġto", byte-fallback "<0x0A>", or plain), "" for an unused id. */
  tokens: readonly string[];
  /** The rows of logits the model gives (may exceed tokens.length: padding ids, never allowed). */
  vocabSize: number;
  /** Ids that end a sequence: the only ones allowed once the grammar is complete. */
  stopTokenIds: readonly number[];
}

/** How the vocabulary's strings encode bytes: read from the strings themselves, as tokenizer.json's decoder says. */
export function vocabType(tokens: readonly string[]): { type: "byte_level" | "byte_fallback" | "raw"; prependSpace: boolean } {
  const has = new Set(tokens);
  if (has.has("<0x0A>")) return { type: "byte_fallback", prependSpace: tokens.some((t) => t?.startsWith("\u2581")) };
  if (has.has("\u010a") || has.has("\u0120")) return { type: "byte_level", prependSpace: false };
  return { type: "raw", prependSpace: false };
}

type XgTokenizerInfo = InstanceType<XGrammar["TokenizerInfo"]>;
type XgCompiler = Awaited<ReturnType<XGrammar["GrammarCompiler"]["createGrammarCompiler"]>>;
type XgCompiled = InstanceType<XGrammar["CompiledGrammar"]>;

/** Most compiled grammars kept; the least recently used one goes first. */
const CACHE_SIZE = 64;

/** A compiled grammar: each call of matcher() starts one sequence's matcher at its beginning. */
export interface CompiledConstraint {
  readonly key: string;
  matcher(): TokenConstraint;
}

/** One model's grammars: its vocabulary compiled once, grammars compiled once each. */
export class Grammars {
  readonly #vocabulary: () => GrammarVocabulary;
  #ready: Promise<{
    xg: XGrammar;
    binding: XGrammarBinding;
    info: XgTokenizerInfo;
    compiler: XgCompiler;
    vocabSize: number;
    stopTokenIds: readonly number[];
  }> | null = null;
  readonly #cache = new Map<string, Promise<CompiledConstraint>>();
  /** How long compiling the vocabulary took (ms), once done. */
  vocabularyMs: number | null = null;

  /** `vocabulary` is read once, on the first compile. */
  constructor(vocabulary: () => GrammarVocabulary) {
    this.#vocabulary = vocabulary;
  }

  /** The grammar of `spec`, compiled (or from the cache); a GrammarError when it does not compile. */
  compile(spec: GrammarSpec): Promise<CompiledConstraint> {
    const key = specKey(spec);
    const hit = this.#cache.get(key);
    if (hit) {
      this.#cache.delete(key);
      this.#cache.set(key, hit);
      return hit;
    }
    const compiled = this.#compile(spec, key);
    this.#cache.set(key, compiled);
    // A grammar that failed is not kept: the error is the answer, and a later request asks again.
    compiled.catch(() => this.#cache.get(key) === compiled && this.#cache.delete(key));
    while (this.#cache.size > CACHE_SIZE) {
      const oldest = this.#cache.keys().next().value!;
      const evicted = this.#cache.get(oldest)!;
      this.#cache.delete(oldest);
      // Matchers made from it hold their own reference to the compiled grammar (a shared pointer in the WASM).
      evicted.then((c) => (c as Compiled).dispose(), () => {});
    }
    return compiled;
  }

  /** Compiles the vocabulary now (the first constrained request would otherwise pay for it). */
  async warm(): Promise<void> {
    await this.#engine();
  }

  #engine() {
    this.#ready ??= (async () => {
      const xg = loadXGrammar();
      const binding = await xg.binding();
      const t0 = performance.now();
      const { tokens, vocabSize, stopTokenIds } = this.#vocabulary();
      const { type, prependSpace } = vocabType(tokens);
      const encoded = Array.from({ length: tokens.length }, (_, i) => tokens[i] ?? "");
      const info = await xg.TokenizerInfo.createTokenizerInfo(encoded, type, prependSpace, vocabSize, [...stopTokenIds]);
      const compiler = await xg.GrammarCompiler.createGrammarCompiler(info, false);
      this.vocabularyMs = performance.now() - t0;
      return { xg, binding, info, compiler, vocabSize, stopTokenIds };
    })();
    return this.#ready;
  }

  async #compile(spec: GrammarSpec, key: string): Promise<CompiledConstraint> {
    const { xg, binding, compiler, vocabSize, stopTokenIds } = await this.#engine();
    checkSpec(spec);
    let compiled: XgCompiled;
    const printed: string[] = [];
    const printErr = xg.printErr;
    xg.printErr = (line) => printed.push(line);
    try {
      compiled = await compileSpec(xg, compiler, spec);
    } catch (err) {
      throw new GrammarError(grammarMessage(printed, err));
    } finally {
      xg.printErr = printErr;
    }
    return new Compiled(key, compiled, binding, vocabSize, stopTokenIds);
  }
}

async function compileSpec(xg: XGrammar, compiler: XgCompiler, spec: GrammarSpec): Promise<XgCompiled> {
  switch (spec.kind) {
    case "json_schema":
      // One line (no indent) with ", " and ": " between items (as json.dumps) unless whitespace is free; strict:
      // no properties or items beyond the schema's.
      return await compiler.compileJSONSchema(spec.schema, spec.anyWhitespace, -1, undefined, true, undefined);
    case "json_object":
      return await compiler.compileJSONSchema(
        JSON.stringify({ type: "object" }),
        spec.anyWhitespace,
        -1,
        undefined,
        false,
        undefined,
      );
    case "regex":
      return await compiler.compileStructuralTag({ type: "structural_tag", format: { type: "regex", pattern: spec.pattern } });
    case "choice":
      return await compiler.compileGrammar(`root ::= ${spec.choices.map(ebnfString).join(" | ")}`);
    case "grammar":
      return await compiler.compileGrammar(spec.ebnf);
    case "structural_tag":
      return await compiler.compileStructuralTag(spec.tag);
    case "tool_calls": {
      // The call's JSON on one line (a JSON Schema inside a structural tag would let whitespace run free).
      const call = await xg.Testings._jsonSchemaToEBNF(spec.call, false, -1, undefined, true);
      if (spec.format === "llama3_json") return await compiler.compileGrammar(call);
      return await compiler.compileStructuralTag({
        type: "structural_tag",
        format: {
          type: "tags_with_separator",
          tags: [{ type: "tag", begin: "<tool_call>\n", content: { type: "grammar", grammar: call }, end: "\n</tool_call>" }],
          separator: "\n",
          at_least_one: true,
          stop_after_first: !spec.parallel,
        },
      });
    }
  }
}

/** `text` as an EBNF string literal. */
export function ebnfString(text: string): string {
  let out = '"';
  for (const ch of text) {
    const code = ch.codePointAt(0)!;
    if (ch === '"' || ch === "\\") out += "\\" + ch;
    else if (code < 0x20 || code === 0x7f) out += "\\x" + code.toString(16).padStart(2, "0");
    else out += ch;
  }
  return out + '"';
}

/** The cache key of a spec: a hash of its kind and text (and whitespace option). */
export function specKey(spec: GrammarSpec): string {
  return createHash("sha256").update(JSON.stringify(spec)).digest("hex");
}

/**
 * XGrammar's words for a failure: the reason its WASM printed before aborting ("[FATAL] file.cc:75: Regex parsing
 * error at position 6: Unclosed '['"), without the source location; else what was thrown.
 */
function grammarMessage(printed: readonly string[], err: unknown): string {
  const fatal = printed.find((line) => line.includes("[FATAL]"));
  if (fatal) {
    return fatal.replace(/^.*?\[FATAL\]\s*\S+:\d+:\s*/, "").replace(/^Check failed: \(.*?\) is false:\s*/, "").trim();
  }
  const text = err instanceof Error ? err.message : String(err);
  return text.trim() || "the grammar does not compile";
}

/** Refuses, before XGrammar sees them, specs it would abort on in ways its message explains less well. */
function checkSpec(spec: GrammarSpec): void {
  if (spec.kind === "json_schema") {
    let schema: unknown;
    try {
      schema = JSON.parse(spec.schema);
    } catch (err) {
      throw new GrammarError(`the schema is not JSON: ${(err as Error).message}`);
    }
    if (typeof schema !== "boolean" && (typeof schema !== "object" || schema === null || Array.isArray(schema))) {
      throw new GrammarError("the schema must be a JSON object (or a boolean)");
    }
  }
  if (spec.kind === "choice" && spec.choices.length === 0) throw new GrammarError("choice must list at least one string");
}

/** A compiled grammar and what starts matchers on it. */
class Compiled implements CompiledConstraint {
  readonly #compiled: XgCompiled;
  readonly #binding: XGrammarBinding & Record<string, any>;
  readonly #vocabSize: number;
  readonly #stopTokenIds: readonly number[];

  constructor(
    readonly key: string,
    compiled: XgCompiled,
    binding: XGrammarBinding,
    vocabSize: number,
    stopTokenIds: readonly number[],
  ) {
    this.#compiled = compiled;
    this.#binding = binding as XGrammarBinding & Record<string, any>;
    this.#vocabSize = vocabSize;
    this.#stopTokenIds = stopTokenIds;
  }

  matcher(): TokenConstraint {
    const handle = new this.#binding.GrammarMatcher(this.#compiled.handle, undefined, false, -1);
    return new Matcher(handle, this.#binding, this.#vocabSize, this.#stopTokenIds);
  }

  dispose(): void {
    this.#compiled.dispose();
  }
}

/** The WASM matcher's methods called here. */
interface MatcherHandle {
  AcceptToken(id: number, verbose: boolean): boolean;
  GetNextTokenBitmask(vocabSize: number): { delete(): void };
  IsTerminated(): boolean;
  delete(): void;
}

/** One sequence's matcher. */
class Matcher implements TokenConstraint {
  #handle: MatcherHandle | null;
  readonly #binding: XGrammarBinding;
  readonly #vocabSize: number;
  readonly #stopTokenIds: readonly number[];
  /** Whether the latest mask allowed a stop token (the output so far is complete). */
  #canStop = false;
  /** Whether the last accepted token was refused (the matcher is then left where it was). */
  rejected = false;

  constructor(handle: MatcherHandle, binding: XGrammarBinding, vocabSize: number, stopTokenIds: readonly number[]) {
    this.#handle = handle;
    this.#binding = binding;
    this.#vocabSize = vocabSize;
    this.#stopTokenIds = stopTokenIds;
  }

  fillNextMask(mask: Uint32Array): boolean {
    const handle = this.#handle;
    if (handle === null || handle.IsTerminated()) return false;
    const vector = handle.GetNextTokenBitmask(this.#vocabSize);
    try {
      const view = this.#binding.vecIntToView(vector);
      mask.set(new Uint32Array(view.buffer, view.byteOffset, Math.min(view.length, mask.length)));
    } finally {
      vector.delete();
    }
    this.#canStop = this.#stopTokenIds.some((t) => ((mask[t >>> 5] >>> (t & 31)) & 1) === 1);
    return true;
  }

  accept(tokenId: number): void {
    if (this.#handle === null || this.#handle.IsTerminated()) return;
    if (!this.#handle.AcceptToken(tokenId, false)) this.rejected = true;
    this.#canStop = false;
  }

  /** Complete: the stop token was accepted, or the latest mask allows it. */
  get done(): boolean {
    return this.#handle === null || this.#handle.IsTerminated() || this.#canStop;
  }

  dispose(): void {
    this.#handle?.delete();
    this.#handle = null;
  }
}
