/**
 * Loads XGrammar's WASM build (@mlc-ai/web-xgrammar) on Node, Deno and Bun alike. The package says "type": "module"
 * but ships a UMD bundle that reads `require` and `__filename` as it starts, so importing it as ES module throws on
 * every runtime. Its text is run here as the CommonJS script it is, with a `require` of our own. One more line
 * exports the bundle's WASM instance: its `getNextTokenBitmask` is async only to await that instance, and the engine
 * asks for masks synchronously inside a step, so the wrapper calls the instance directly once it is up. The instance
 * is started with an error printer of ours: a grammar that does not compile aborts the WASM call after printing
 * why, and that sentence is what the request's 400 quotes (the instance stays usable after such an abort).
 */
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import * as path from "node:path";
import { embeddedFile } from "../../runtime/embedded.ts";

/** The slice of the package's classes the grammar layer uses (their declarations, as the package types them). */
export type XGrammar = typeof import("@mlc-ai/web-xgrammar") & {
  /** The bundle's WASM instance, started on the first call. */
  binding(): Promise<XGrammarBinding>;
  /** Receives each line the WASM prints to stderr (XGrammar's reason for an abort). */
  printErr: (line: string) => void;
};

/** What of the WASM instance is called directly. */
export interface XGrammarBinding {
  /** A view of a std::vector<int32_t> in WASM memory (valid until the vector is deleted or memory grows). */
  vecIntToView(vector: unknown): Int32Array;
}

const PACKAGE = "@mlc-ai/web-xgrammar";
/** The bundle's line that declares its instance; the export of it is added after this line. */
const ANCHOR = "let binding = null;";
/** The bundle's line that starts its instance, given our error printer instead. */
const START = "binding = await Module();";

/** The bundle in the package, which a single-file build carries (runtime/embedded.ts). */
export const XGRAMMAR_BUNDLE = `${PACKAGE}/lib/index.js`;

let loaded: XGrammar | null = null;

/** The package, evaluated once per process. */
export function loadXGrammar(): XGrammar {
  if (loaded) return loaded;
  const require = createRequire(import.meta.url);
  const file = embeddedFile(XGRAMMAR_BUNDLE) ?? require.resolve(PACKAGE);
  const source = readFileSync(file, "utf8");
  if (!source.includes(ANCHOR) || !source.includes(START)) {
    throw new Error(`${PACKAGE} at ${file} is not the build this server was written against (0.1.27)`);
  }
  const patched = source
    .replace(ANCHOR, `${ANCHOR} exports.binding = async () => { await asyncInitBinding(); return binding; };`)
    .replace(START, "binding = await Module({ printErr: (line) => exports.printErr(line) });");
  const module = { exports: {} as Record<string, unknown> };
  new Function("exports", "module", "require", "__filename", "__dirname", patched)(
    module.exports,
    module,
    require,
    file,
    path.dirname(file),
  );
  module.exports.printErr = (line: string) => console.error(line);
  loaded = module.exports as unknown as XGrammar;
  return loaded;
}
